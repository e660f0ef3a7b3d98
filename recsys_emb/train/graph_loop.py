"""Training and full-ranking evaluation of graph CF models (LightGCN, NGCF, BPR-MF).

``train_graph(cfg, run_dir)`` writes into ``run_dir``:

- ``config.yaml``: the resolved config;
- ``checkpoint.pt``: model + optimizer + RNG + history after the last finished epoch (``--resume``);
  sharded runs (``sharding:`` set) write a ``checkpoint/`` folder through
  :mod:`recsys_emb.train.checkpoint` (torch.distributed.checkpoint) instead;
- ``model.pt``: consolidated weights of the best epoch (``torch.load(weights_only=True)``);
- ``embeddings.pt``: ``{"user": (U, D'), "item": (I, D')}`` final embeddings of that model
  (:func:`load_graph_embeddings`), the input of candidate retrieval;
- ``metrics.json``: per-epoch loss, wall and CPU (``time.process_time``) seconds of training and
  evaluation, metrics, the best epoch and its metrics, and ``stopped`` when ``train.max_minutes``
  (a wall-time budget checked after every epoch) ended the run early.

Sampling: every epoch visits each training interaction ``(u, i)`` once in a random order
(``np.random.default_rng([seed, epoch])``) and pairs it with a negative item drawn uniformly from the
items ``u`` never interacted with in training (vectorised rejection sampling). LightGCN's PyTorch
code samples users uniformly instead; the number of BPR triples per epoch is the same.

Evaluation (:func:`full_ranking_metrics`): for every user with at least one held-out item, score
all items, exclude the user's training items (and validation items when scoring test), take the
top K, and average over those users ``recall@K = hits / |test items|`` and
``ndcg@K = DCG / IDCG`` with binary relevance, ``DCG = sum_{r<K} hit_r / log2(r + 2)`` and IDCG the
DCG of ``min(|test items|, K)`` hits. Users without held-out items are skipped and counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch
from tqdm import tqdm

from recsys_emb.config.experiment import ShardingConfig
from recsys_emb.config.io import ConfigError, load_config, run_config_and_dir, save_config
from recsys_emb.data.graphs import GraphDataset, GraphSplit, load_graph_dataset, normalized_adjacency
from recsys_emb.models.graph import GraphBPRTrain, GraphCF, GraphModelConfig
from recsys_emb.train.checkpoint import export_model, load_file_checkpoint, save_file_checkpoint
from recsys_emb.train.ranking_metrics import recall_ndcg
from recsys_emb.utils import atomic_save_json, atomic_write_bytes, log




# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass
class GraphDataConfig:
    """Where the graph is (a folder with train.txt[.gz], test.txt[.gz] and optionally valid.txt[.gz])."""

    path: str = "data/gowalla"  # NGCF/LightGCN-format folder (see datasets/gowalla/README.md)
    valid: bool = True  # use valid.txt when present: model selection on it, test excludes it too


@dataclass
class GraphTrainConfig:
    """BPR training and evaluation settings."""

    epochs: int = 100  # passes over the training interactions
    batch_size: int = 2048  # BPR triples per step
    optimizer: Literal["adam", "adagrad", "rowwise_adagrad", "sgd"] = "adam"  # sharded on CPU: no adam
    lr: float = 1e-3  # learning rate
    l2: float = 1e-4  # weight of the L2 penalty on the batch embeddings (LightGCN: 1e-4, NGCF: 1e-5)
    l2_on: Literal["ego", "final"] = "ego"  # layer-0 embeddings (LightGCN) or final ones (NGCF reference)
    seed: int = 2020  # parameters, sampling and dropout
    eval_every: int = 1  # evaluate every N epochs (and after the last)
    ks: list[int] = field(default_factory=lambda: [10, 20, 50])  # cut-offs of recall/ndcg
    select_metric: str = "recall@20"  # model selection (on valid when present, else test)
    early_stopping_patience: int = 0  # stop after this many evaluations without improvement (0 = never)
    eval_user_chunk: int = 1024  # users scored at once in full ranking (memory: chunk x items floats)
    eval_max_users: int | None = None  # evaluate only the first N eligible users (quick runs; null = all)
    max_steps_per_epoch: int | None = None  # cut epochs short (quick runs / tests; null = full epoch)
    max_minutes: float | None = None  # wall-time budget: no epoch is started that would end past it (null = none)
    num_threads: int | None = None  # torch.set_num_threads (null = torch default)
    device: Literal["auto", "cpu", "cuda"] = "cpu"  # where the model, propagation and scoring run
    progress: bool = True  # tqdm progress bars

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_every", "eval_user_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"train.max_minutes must be > 0 (or null), got {self.max_minutes}")
        if self.lr <= 0 or self.l2 < 0:
            raise ValueError("train.lr must be > 0 and train.l2 >= 0")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"train.ks must be a non-empty list of positive cut-offs, got {self.ks}")
        name, _, k = self.select_metric.partition("@")
        if name not in ("recall", "ndcg") or not k.isdigit() or int(k) not in self.ks:
            raise ValueError(f"train.select_metric '{self.select_metric}' must be recall@K or ndcg@K with K in train.ks")


@dataclass
class GraphExperimentConfig:
    """A graph CF experiment: ``data``, ``model``, ``train`` (configs/gowalla_lightgcn.yaml)."""

    data: GraphDataConfig = field(default_factory=GraphDataConfig)
    model: GraphModelConfig = field(default_factory=GraphModelConfig)
    train: GraphTrainConfig = field(default_factory=GraphTrainConfig)
    # null: one device, plain optimizer. Set: the tables are sharded by DistributedModelParallel
    # (needs model.propagation=neighbor) and trained by FBGEMM's fused optimizer (see docs/techniques/graph_cf.md).
    sharding: ShardingConfig | None = None

    def __post_init__(self) -> None:
        if self.sharding is not None and self.model.propagation != "neighbor":
            raise ValueError("sharding needs model.propagation: neighbor (full-graph mode reads unsharded tables)")


# --------------------------------------------------------------------------------------------
# BPR sampling
# --------------------------------------------------------------------------------------------


class BPRSampler:
    """Vectorised uniform negative sampling; batches of (users, pos, neg) int64 tensors.

    Args:
        train: the training split (CSR over users).
        num_items: the item count of the id space (negatives are drawn from ``[0, num_items)``).
        batch_size: triples per batch.
        seed: with the epoch number, fixes order and negatives exactly.
    """

    def __init__(self, train: GraphSplit, num_items: int, batch_size: int, seed: int) -> None:
        self.users = train.users()  # (nnz,)
        self.items = train.indices  # (nnz,)
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.keys = np.sort(self.users * num_items + self.items)  # (nnz,) sorted (user, item) keys
        full = np.diff(train.indptr) >= num_items
        if full.any():
            raise ValueError(f"user {int(np.argmax(full))} interacted with every item: no negative exists")

    def __len__(self) -> int:
        return math.ceil(len(self.users) / self.batch_size)

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.num_items + items
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[pos] == keys if len(self.keys) else np.zeros(len(keys), dtype=bool)

    def sample_negatives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        neg = rng.integers(0, self.num_items, size=len(users))
        bad = np.flatnonzero(self.is_positive(users, neg))
        while len(bad):  # redraw only the collisions
            neg[bad] = rng.integers(0, self.num_items, size=len(bad))
            bad = bad[self.is_positive(users[bad], neg[bad])]
        return neg

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.users))
        users, pos = self.users[order], self.items[order]
        neg = self.sample_negatives(users, rng)
        for start in range(0, len(order), self.batch_size):
            sl = slice(start, start + self.batch_size)
            yield torch.from_numpy(users[sl]), torch.from_numpy(pos[sl]), torch.from_numpy(neg[sl])


# --------------------------------------------------------------------------------------------
# Full-ranking evaluation
# --------------------------------------------------------------------------------------------


def _rows(split: GraphSplit, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row in ``users``, item) of every interaction of ``users`` in ``split``."""
    starts, lens = split.indptr[users], np.diff(split.indptr)[users]
    total = int(lens.sum())
    row = np.repeat(np.arange(len(users)), lens)
    pos = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
    return row, split.indices[pos]


@torch.no_grad()
def full_ranking_metrics(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    test: GraphSplit,
    exclude: list[GraphSplit],
    ks: list[int] | tuple[int, ...] = (10, 20, 50),
    chunk: int = 1024,
    max_users: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Recall@K / NDCG@K over all items not excluded (see the module docstring).

    Args:
        user_emb: (U, D) user embeddings; score = ``user_emb @ item_emb.T``.
        item_emb: (I, D) item embeddings.
        test: the held-out interactions (CSR over the same U users).
        exclude: splits whose items are removed from each user's ranking (training items, ...).
        ks: cut-offs.
        chunk: users scored at once (memory ~ chunk x I floats).
        max_users: only the first N users with held-out items (quick runs).

    Returns:
        ``recall@K``, ``ndcg@K`` for every K, ``users_evaluated``, ``users_skipped_no_test``.
    """
    num_items = item_emb.shape[0]
    test_len = np.diff(test.indptr)
    eligible = np.flatnonzero(test_len > 0)
    skipped = test.num_users - len(eligible)
    if max_users is not None:
        eligible = eligible[:max_users]
    kmax = min(max(ks), num_items)
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    dev = user_emb.device
    items_t = item_emb.t().contiguous()  # (D, I)
    starts = range(0, len(eligible), chunk)
    for start in tqdm(starts, desc="eval", unit="chunk", disable=not progress, leave=False):
        users = eligible[start : start + chunk]
        scores = user_emb[torch.from_numpy(users).to(dev)] @ items_t  # (C, I)
        for split in exclude:
            r, c = _rows(split, users)
            scores[torch.from_numpy(r).to(dev), torch.from_numpy(c).to(dev)] = -torch.inf
        top_scores, top = torch.topk(scores, kmax, dim=1)  # (C, kmax)
        top_scores, top = top_scores.cpu(), top.cpu()
        r, c = _rows(test, users)
        test_keys = torch.from_numpy(r * num_items + c)  # sorted: rows ascending, items sorted per row
        query = torch.arange(len(users)).unsqueeze(1) * num_items + top  # (C, kmax)
        found = test_keys[torch.searchsorted(test_keys, query).clamp(max=len(test_keys) - 1)] == query
        hits = (found & (top_scores > -torch.inf)).double()  # (C, kmax); excluded items never hit
        for key, per_user in recall_ndcg(hits, torch.from_numpy(test_len[users]), list(ks)).items():
            sums[key] += float(per_user.sum())
    n = max(len(eligible), 1)
    out: dict[str, float] = {key: value / n for key, value in sums.items()}
    out["users_evaluated"] = len(eligible)
    out["users_skipped_no_test"] = int(skipped)
    return out


def evaluate_model(model: GraphCF, graph: GraphDataset, split: str, tc: GraphTrainConfig,
                   embeddings: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """Metrics of ``model`` (or of given ``(users, items)`` embeddings) on ``split``; training items (and
    valid items when ``split='test'``) excluded."""
    users, items = embeddings if embeddings is not None else model.user_item_embeddings()
    exclude = [graph.train]
    if split == "test" and "valid" in graph.splits:
        exclude.append(graph.splits["valid"])
    return full_ranking_metrics(users, items, graph.splits[split], exclude, tc.ks, tc.eval_user_chunk,
                                tc.eval_max_users, tc.progress)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def build_graph_model(cfg: GraphExperimentConfig, graph: GraphDataset) -> GraphCF:
    """The unsharded model for a config and its graph (parameters seeded by ``train.seed``)."""
    torch.manual_seed(cfg.train.seed)
    return GraphCF(cfg.model, normalized_adjacency(graph, cfg.model.adjacency_kind))


def _optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    from torchrec.optim import RowWiseAdagrad

    return {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "rowwise_adagrad": RowWiseAdagrad,
            "sgd": torch.optim.SGD}[name]


class _LocalTrainer:
    """One device, unsharded tables, one torch optimizer; ``checkpoint.pt`` is a single torch.save file."""

    is_main = True
    rank, world_size = 0, 1

    def __init__(self, cfg: GraphExperimentConfig, graph: GraphDataset) -> None:
        from recsys_emb.train.env import resolve_device

        self.device = resolve_device(cfg.train.device)
        self.graph_model = self.model = build_graph_model(cfg, graph).to(self.device)
        self.opt = _optimizer_class(cfg.train.optimizer)(self.model.parameters(), lr=cfg.train.lr)

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def checkpoint_exists(self, run_dir: Path) -> bool:
        return (run_dir / "checkpoint.pt").is_file()

    def save(self, run_dir: Path, state: dict[str, Any]) -> None:
        save_file_checkpoint(run_dir / "checkpoint.pt", self.model, self.opt, state)

    def load(self, run_dir: Path) -> dict[str, Any]:
        return load_file_checkpoint(run_dir / "checkpoint.pt", self.model, self.opt)

    def close(self) -> None:
        pass


class _ShardedTrainer:
    """Tables sharded by ``DistributedModelParallel`` (neighbour-list mode), FBGEMM fused table
    optimizer, the same optimizer type unfused for dense (NGCF) parameters; checkpoints are
    ``torch.distributed.checkpoint`` folders via :mod:`recsys_emb.train.checkpoint`. Every rank
    propagates the whole graph and takes a 1/world_size share of each BPR batch."""

    def __init__(self, cfg: GraphExperimentConfig, graph: GraphDataset) -> None:
        from torchrec import EmbeddingBagCollection
        from torchrec.distributed import DistributedModelParallel
        from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
        from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

        from recsys_emb.distributed.planning import plan_sharding
        from recsys_emb.distributed.sharders import default_sharders
        from recsys_emb.models.graph import graph_tables
        from recsys_emb.train.env import init_distributed

        tc = cfg.train
        self.env = init_distributed(tc.device)
        self.device, self.rank, self.world_size, self.is_main = self.env.device, self.env.rank, self.env.world_size, self.env.is_main
        model = build_graph_model(cfg, graph)  # seeded: every rank starts from the same weights
        start = {f"tables.{k}": v.detach().clone() for k, v in model.tables.state_dict().items()}
        model.tables = EmbeddingBagCollection(tables=graph_tables(graph.num_users, graph.num_items, cfg.model),
                                              is_weighted=True, device=torch.device("meta"))
        model.propagation.to(self.device)
        cls = _optimizer_class(tc.optimizer)
        apply_optimizer_in_backward(cls, list(model.tables.parameters()), {"lr": tc.lr})
        assert cfg.sharding is not None
        plan = plan_sharding(model, cfg.sharding, world_size=self.world_size, device_type=self.device.type,
                             batch_size=tc.batch_size)
        self.model = DistributedModelParallel(model, device=self.device, plan=plan, sharders=default_sharders())
        self.graph_model = model
        state = self.model.state_dict()
        with torch.no_grad():  # the seeded initial weights into this rank's shards
            for key, full in start.items():
                for shard in state[key].local_shards():
                    (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    shard.tensor.copy_(full[r0 : r0 + nr, c0 : c0 + nc])
        dense = {n: p for n, p in self.model.named_parameters() if not getattr(p, "_in_backward_optimizers", None)}
        optimizers: list[Any] = [("fused", self.model.fused_optimizer)]
        if dense:
            optimizers.append(("dense", KeyedOptimizerWrapper(dense, lambda ps: cls(ps, lr=tc.lr))))
        self.opt = CombinedOptimizer(optimizers)

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad()
        loss.backward()  # tables are updated inside backward
        self.opt.step()

    def checkpoint_exists(self, run_dir: Path) -> bool:
        from recsys_emb.train.checkpoint import resolve_checkpoint

        return resolve_checkpoint(run_dir / "checkpoint") is not None

    def save(self, run_dir: Path, state: dict[str, Any]) -> None:
        from recsys_emb.train.checkpoint import save_checkpoint

        save_checkpoint(run_dir / "checkpoint", self.model, self.opt, state)

    def load(self, run_dir: Path) -> dict[str, Any]:
        from recsys_emb.train.checkpoint import load_checkpoint
        from recsys_emb.train.optim import materialize_state

        materialize_state(self.opt)
        return load_checkpoint(run_dir / "checkpoint", self.model, self.opt)

    def close(self) -> None:
        from recsys_emb.train.env import shutdown

        shutdown(self.env)


@torch.no_grad()
def _final_embeddings(trainer: _LocalTrainer | _ShardedTrainer) -> tuple[torch.Tensor, torch.Tensor]:
    """(users (U, D'), items (I, D')) in eval mode; collective when sharded."""
    trainer.graph_model.eval()
    try:
        return trainer.graph_model.split(trainer.model().final.detach())
    finally:
        trainer.graph_model.train()


def _fits_budget(elapsed_s: float, epoch_s: float, max_minutes: float, world_size: int, device: torch.device) -> bool:
    """Whether ``elapsed_s`` plus one more epoch of ``epoch_s`` stays within ``max_minutes``.

    Sharded runs decide on rank 0's clock (broadcast) so that all ranks stop after the same epoch."""
    fits = elapsed_s + epoch_s <= max_minutes * 60
    if world_size > 1 and torch.distributed.is_initialized():
        flag = torch.tensor([int(fits)], device=device)
        torch.distributed.broadcast(flag, src=0)
        fits = bool(flag.item())
    return fits


def _better(new: float, best: float | None) -> bool:
    return best is None or new > best


def train_graph(cfg: GraphExperimentConfig, run_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Train, evaluate every ``eval_every`` epochs, keep the best epoch; returns ``metrics.json``.

    Args:
        cfg: the experiment.
        run_dir: output folder (new or empty unless ``resume``).
        resume: continue from ``run_dir/checkpoint.pt`` (results equal an uninterrupted run's).
    """
    threads = torch.get_num_threads()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    try:
        return _train_graph(cfg, Path(run_dir), resume)
    finally:
        torch.set_num_threads(threads)


def _train_graph(cfg: GraphExperimentConfig, run_dir: Path, resume: bool) -> dict[str, Any]:
    tc = cfg.train
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"run dir {run_dir} is not empty (use --resume to continue it, or a new --run-dir)")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(Path(cfg.data.path).resolve())))
    t0 = time.perf_counter()
    splits = ("train", "valid", "test") if cfg.data.valid else ("train", "test")
    graph = load_graph_dataset(cfg.data.path, splits)
    if "test" not in graph.splits:
        raise FileNotFoundError(f"{cfg.data.path}: no test.txt[.gz]")
    trainer: _LocalTrainer | _ShardedTrainer = _ShardedTrainer(cfg, graph) if cfg.sharding is not None else _LocalTrainer(cfg, graph)
    try:
        if trainer.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if not resume:
                save_config(cfg, run_dir / "config.yaml")
            log(f"[graph] {json.dumps(graph.summary())} (loaded in {time.perf_counter() - t0:.1f}s)")
        return _fit(cfg, graph, trainer, run_dir, resume)
    finally:
        trainer.close()


def _fit(cfg: GraphExperimentConfig, graph: GraphDataset, trainer: _LocalTrainer | _ShardedTrainer,
         run_dir: Path, resume: bool) -> dict[str, Any]:
    tc = cfg.train
    device, rank, world = trainer.device, trainer.rank, trainer.world_size
    train_module = GraphBPRTrain(trainer.model, tc.l2, tc.l2_on, num_users=graph.num_users)
    sampler = BPRSampler(graph.train, graph.num_items, tc.batch_size, tc.seed)
    select_split = "valid" if "valid" in graph.splits else "test"
    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None, "best_epoch": None, "stale": 0}
    if resume:
        if not trainer.checkpoint_exists(run_dir):
            raise FileNotFoundError(f"{run_dir}: no checkpoint to resume from")
        state = trainer.load(run_dir)
        log(f"[graph] resumed after epoch {state['epoch']}")
    steps_per_epoch = len(sampler) if tc.max_steps_per_epoch is None else min(len(sampler), tc.max_steps_per_epoch)
    t_fit, longest_train, longest_eval, stopped = time.perf_counter(), 0.0, 0.0, None
    for epoch in range(state["epoch"], tc.epochs):
        trainer.graph_model.train()
        torch.manual_seed(tc.seed * 1_000_003 + epoch)  # dropout masks depend on (seed, epoch) only
        t_epoch, cpu_epoch = time.perf_counter(), time.process_time()
        loss_sum = bpr_sum = reg_sum = 0.0
        bar = tqdm(sampler.epoch(epoch), total=steps_per_epoch, desc=f"epoch {epoch + 1}/{tc.epochs}",
                   unit="step", disable=not (tc.progress and trainer.is_main), leave=False)
        for step, (u, p, n) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            u, p, n = (x[rank::world].to(device) for x in (u, p, n))  # this rank's share of the batch
            loss, (bpr, reg) = train_module(u, p, n)
            trainer.step(loss)
            loss_sum, bpr_sum, reg_sum = loss_sum + loss.item(), bpr_sum + bpr.item(), reg_sum + reg.item()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / (step + 1):.4f}")
        bar.close()
        train_s, train_cpu_s = time.perf_counter() - t_epoch, time.process_time() - cpu_epoch
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": loss_sum / steps_per_epoch, "bpr": bpr_sum / steps_per_epoch,
                                  "reg": reg_sum / steps_per_epoch, "train_seconds": round(train_s, 2),
                                  # CPU seconds of this process (all its threads): its cost, unlike wall time
                                  # largely independent of other jobs on a shared machine
                                  "train_cpu_seconds": round(train_cpu_s, 2)}
        longest_train = max(longest_train, train_s)
        if tc.max_minutes is not None and epoch + 1 < tc.epochs and not _fits_budget(
                time.perf_counter() - t_fit + longest_eval, longest_train + longest_eval, tc.max_minutes, world, device):
            stopped = f"time budget of {tc.max_minutes} min: no time for another epoch"
            if trainer.is_main:
                log(f"[graph] stopping after epoch {epoch + 1}: {stopped}")
        if (epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs or stopped is not None:
            t_eval, cpu_eval = time.perf_counter(), time.process_time()
            embeddings = _final_embeddings(trainer)  # collective when sharded; every rank scores (same result)
            for split in dict.fromkeys([select_split, "test"]):
                record[split] = evaluate_model(trainer.graph_model, graph, split, tc, embeddings)
            record["eval_seconds"] = round(time.perf_counter() - t_eval, 2)
            record["eval_cpu_seconds"] = round(time.process_time() - cpu_eval, 2)
            longest_eval = max(longest_eval, record["eval_seconds"])
            value = record[select_split][tc.select_metric]
            if _better(value, state["best"]):
                state.update(best=value, best_epoch=epoch + 1, stale=0)
                export_model(run_dir / "model.pt", trainer.model)
                if trainer.is_main:
                    _write_embeddings(run_dir / "embeddings.pt", *embeddings)
            else:
                state["stale"] += 1
            if trainer.is_main:
                log(f"[graph] epoch {epoch + 1}: loss {record['loss']:.4f} ({train_s:.1f}s) "
                    + " ".join(f"{s} {tc.select_metric} {record[s][tc.select_metric]:.4f}" for s in dict.fromkeys([select_split, "test"])))
        elif trainer.is_main:
            log(f"[graph] epoch {epoch + 1}: loss {record['loss']:.4f} ({train_s:.1f}s)")
        state["history"].append(record)
        state["epoch"] = epoch + 1
        trainer.save(run_dir, state)
        if tc.early_stopping_patience and state["stale"] >= tc.early_stopping_patience:
            if trainer.is_main:
                log(f"[graph] early stop: no {select_split} {tc.select_metric} gain in {state['stale']} evaluations")
            break
        if stopped is not None:
            break
    best_record = next(r for r in state["history"] if r["epoch"] == state["best_epoch"])
    metrics = {
        "model": cfg.model.name, "propagation": cfg.model.propagation, "dataset": cfg.data.path,
        "sharded": cfg.sharding is not None, "world_size": world,
        "selected_on": select_split, "select_metric": tc.select_metric, "best_epoch": state["best_epoch"],
        "best": {s: best_record[s] for s in dict.fromkeys([select_split, "test"])},
        "epochs_run": state["epoch"], "stopped": stopped, "history": state["history"],
        "mean_train_seconds_per_epoch": float(np.mean([r["train_seconds"] for r in state["history"]])),
        "mean_train_cpu_seconds_per_epoch": (float(np.mean([r["train_cpu_seconds"] for r in state["history"]]))
                                             if all("train_cpu_seconds" in r for r in state["history"]) else None),
        "torch_threads": torch.get_num_threads(), "graph": graph.summary(),
    }
    if trainer.is_main:
        atomic_save_json(run_dir / "metrics.json", metrics)
    return metrics


def _write_embeddings(path: Path, users: torch.Tensor, items: torch.Tensor) -> None:
    buffer = io.BytesIO()
    torch.save({"user": users.cpu(), "item": items.cpu()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_graph_embeddings(path: str | Path, model: GraphCF) -> None:
    """Write ``{"user": (U, D'), "item": (I, D')}`` final embeddings atomically."""
    _write_embeddings(Path(path), *model.user_item_embeddings())


def load_graph_embeddings(run_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(user (U, D'), item (I, D')) final embeddings of a finished ``train-graph`` run; score = u @ i."""
    path = Path(run_dir) / "embeddings.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (is {run_dir} a finished train-graph run?)")
    data = torch.load(path, map_location="cpu", weights_only=True)
    return data["user"], data["item"]


# --------------------------------------------------------------------------------------------
# CLI: `recsys-emb train-graph`
# --------------------------------------------------------------------------------------------


def add_graph_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``recsys-emb train-graph`` (LightGCN / NGCF / MF on an NGCF-format graph)."""
    parser.add_argument("--config", type=Path, help="graph experiment YAML (e.g. configs/gowalla_lightgcn.yaml); required unless --resume")
    parser.add_argument("--data", help="graph folder with train.txt[.gz]/test.txt[.gz] (overrides data.path)")
    parser.add_argument("--run-dir", type=Path, help="output folder (default: runs/<config name>-<time>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from checkpoint.pt")


def run_graph(args: argparse.Namespace) -> int:
    """Entry point of ``recsys-emb train-graph``; prints the best metrics as JSON."""
    overrides = list(args.overrides)
    if args.data is not None:
        overrides.append(f"data.path={args.data}")
    config_path, run_dir = run_config_and_dir(
        args.config, args.run_dir, args.resume, example="configs/gowalla_lightgcn_tiny.yaml", tag="graph"
    )
    cfg = load_config(GraphExperimentConfig, config_path, overrides)
    log(f"[graph] run dir: {run_dir}")
    metrics = train_graph(cfg, run_dir, resume=args.resume)
    print(json.dumps({"run_dir": str(run_dir), "best_epoch": metrics["best_epoch"], **metrics["best"]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys-emb train-graph", description="Train LightGCN / NGCF / MF with BPR.")
    add_graph_arguments(parser)
    try:
        return run_graph(parser.parse_args(argv))
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"train-graph: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
