"""Graph CF task (``task: graph``): LightGCN / NGCF / BPR-MF trained with BPR, scored by full ranking.

Papers: LightGCN (He et al., SIGIR 2020), NGCF (Wang et al., SIGIR 2019); models in
:mod:`recsys_emb.models.graph`, data and sampling in :mod:`recsys_emb.data.graphs`.

- Data: an NGCF/LightGCN-format folder (``train.txt``, ``test.txt``, optional ``valid.txt``; plain or
  ``.gz``), or a :class:`GraphDataset` built in memory (the retrieval driver).
- Model: ``GraphBPRTrain(GraphCF(...))`` with the tables on ``meta``, wrapped by the trainer in
  ``DistributedModelParallel`` (``model.propagation: neighbor``: hop 1 is a call of the table EBC, so
  the tables may be sharded or data-parallel). The whole graph is propagated at every step on every
  rank (as the papers do); the BPR batch only picks the rows the loss reads.
- Tables: ``embedding:`` (features ``user`` and ``item``; plain = the papers' tables), with the
  training interactions per user / item as the techniques' ``counts`` (:func:`graph_context`).
- Initial weights: the papers' init (normal(0, ``init_std``) for LightGCN/MF, Xavier for NGCF tables
  and layers), drawn from ``torch.manual_seed(train.seed)`` on one unsharded model and copied into
  every rank's shards, so any world size starts from the same weights.
- Batches: :class:`recsys_emb.data.graphs.BPRSampler` (every training interaction once per epoch
  with one uniform negative, order and negatives from ``(seed, epoch)``); each global batch of
  ``train.batch_size`` triples is split into equal contiguous parts, one per rank (at most
  ``world_size - 1`` triples of a batch are left out, none on one process).
- Evaluation (:func:`recsys_emb.train.ranking_metrics.full_ranking_metrics`): recall@K / NDCG@K of
  every user with held-out items (each rank scores its share of the users; the sums are all-reduced) over ALL items, training items excluded (and validation items
  when scoring test). Selection: ``evaluation.select_metric`` on ``valid`` when the graph has one,
  else on ``test`` (Gowalla has no validation split; the papers report test numbers the same way).
  ``evaluation.select_metric: null`` keeps the last epoch's weights (no selection).
- Files (besides the trainer's): ``config.yaml`` and ``embeddings.pt`` =
  ``{"user": (U, D'), "item": (I, D')}`` final embeddings of the restored best model
  (:func:`load_graph_embeddings`), the input of candidate retrieval.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recsys_emb.config.embedding import EmbeddingSpec
from recsys_emb.config.graph import GraphEvalConfig, GraphExperimentConfig
from recsys_emb.config.io import save_config
from recsys_emb.data.availability import require_data
from recsys_emb.data.graphs import (
    BPRBatch, BPRSampler, GraphDataset, NormalizedAdjacency, load_graph_dataset, normalized_adjacency,
)
from recsys_emb.models.graph import GraphBPRTrain, GraphCF, GraphModelConfig
from recsys_emb.models.id_tables import id_counts
from recsys_emb.train.env import DistEnv
from recsys_emb.train.parallel import inner_model
from recsys_emb.train.ranking_metrics import full_ranking_metrics
from recsys_emb.train.trainer import Task, eval_mode, main_first, split_rows
from recsys_emb.utils import atomic_save_json, atomic_write_bytes, log

EMBEDDINGS_FILE = "embeddings.pt"
VOCABULARY_FILE = "vocabulary.json"  # the id maps of a run trained on behaviour sequences (SequenceDataset.vocabulary)


def load_graph(cfg: GraphExperimentConfig) -> GraphDataset:
    """The graph of ``cfg.data`` (``valid.txt`` only when ``data.valid``); a missing test split is an error
    (the graph task scores test at the end): :class:`~recsys_emb.data.availability.MissingDataError`."""
    if cfg.data.sequence is not None:
        from recsys_emb.data.cold_start import make_sequence_dataset

        ds = make_sequence_dataset(cfg.data.sequence)
        graph = ds.to_graph()
        if not cfg.data.valid:
            del graph.splits["valid"]
        graph.vocabulary = ds.vocabulary()
        return graph
    splits = ("train", "valid", "test") if cfg.data.valid else ("train", "test")
    require_data(cfg.data.path, "gowalla", ("train.txt", "test.txt"), where="data.path")
    return load_graph_dataset(cfg.data.path, splits, cfg.data.cache, cfg.data.cache_dir)


def graph_context(graph: GraphDataset) -> dict[str, Any]:
    """Data facts for embedding techniques: ``counts`` = training interactions per user (U,) and item (I,)."""
    return {"counts": id_counts(graph.train.indptr, graph.train.indices, graph.num_items)}


def build_graph_model(cfg: GraphModelConfig, graph: GraphDataset, seed: int, adj: NormalizedAdjacency | None = None,
                      device: torch.device | str | None = None, embedding: EmbeddingSpec | None = None) -> GraphCF:
    """The unsharded model with the papers' init (tables and NGCF layers), drawn from ``torch.manual_seed(seed)``;
    its user/item tables from ``embedding`` (None = the plain tables)."""
    torch.manual_seed(seed)
    return GraphCF(cfg, adj if adj is not None else normalized_adjacency(graph, cfg.adjacency_kind), device,
                   embedding=embedding, context=graph_context(graph))


def split_exclusions(graph: GraphDataset, split: str) -> list[Any]:
    """Splits whose items are excluded when ranking for ``split``: train, and valid when scoring test."""
    exclude = [graph.train]
    if split == "test" and "valid" in graph.splits:
        exclude.append(graph.splits["valid"])
    return exclude


def evaluate_embeddings(users: torch.Tensor, items: torch.Tensor, graph: GraphDataset, split: str,
                        ev: GraphEvalConfig, progress: bool = False, env: DistEnv | None = None) -> dict[str, float]:
    """Full-ranking metrics of final ``(users (U, D'), items (I, D'))`` embeddings on ``split``; with ``env``
    each rank scores its share of the users and the sums are all-reduced (a collective)."""
    rank, world = (env.rank, env.world_size) if env is not None else (0, 1)
    return full_ranking_metrics(users, items, graph.splits[split], split_exclusions(graph, split), ev.ks,
                                ev.user_chunk, ev.max_users, progress, rank=rank, world_size=world)


def final_embeddings(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Final (users (U, D'), items (I, D')) embeddings of a graph training module, in eval mode.

    Collective under DMP with sharded tables: every rank must call it (each gets all rows)."""
    with eval_mode(model):
        graph = inner_model(model)
        users, items = graph.split(graph().final)
    return users.detach(), items.detach()


def write_graph_embeddings(path: str | Path, users: torch.Tensor, items: torch.Tensor) -> None:
    """Write ``{"user": (U, D'), "item": (I, D')}`` atomically (CPU tensors)."""
    buffer = io.BytesIO()
    torch.save({"user": users.detach().cpu().contiguous(), "item": items.detach().cpu().contiguous()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_graph_embeddings(run_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(user (U, D'), item (I, D')) final embeddings of a finished graph run; score(u, i) = user[u] @ item[i]."""
    path = Path(run_dir) / EMBEDDINGS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (is {run_dir} a finished `recsys-emb train` run of a graph config?)")
    data = torch.load(path, map_location="cpu", weights_only=True)
    return data["user"], data["item"]


class GraphTask(Task):
    """The graph CF family on :class:`GraphExperimentConfig` (see the module docstring).

    Args:
        cfg: the experiment.
        graph: the data already in memory (its splits: ``train``, ``test``, optionally ``valid``);
            None = read ``cfg.data.path``.
    """

    name = "graph"
    final_splits: tuple[str, ...] = ("test",)

    def __init__(self, cfg: GraphExperimentConfig, graph: GraphDataset | None = None) -> None:
        if graph is None and cfg.data.sequence is not None:
            from recsys_emb.train.tasks.sequence import absolute_data_paths

            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sequence=absolute_data_paths(cfg.data.sequence)))
        elif graph is None:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(Path(cfg.data.path).resolve())))
        self.cfg = cfg
        self.graph = graph
        self.select_metric = cfg.evaluation.select_metric  # type: ignore[assignment]

    # ---------------------------------------------------------------------------------- data
    def prepare(self, env: DistEnv) -> None:
        if self.graph is None:
            self.graph = main_first(env, lambda: load_graph(self.cfg))  # rank 0 fills the parse cache
        elif "test" not in self.graph.splits:
            raise ValueError("the graph has no 'test' split (the graph task scores test at the end)")
        graph, tc = self.graph, self.cfg.train
        self.select_split = "valid" if "valid" in graph.splits else "test"
        self.env = env
        self.sampler = self.make_sampler()
        full, last = divmod(self.sampler.num_triples, tc.batch_size)
        left_out = full * (tc.batch_size % env.world_size) + (last if last < env.world_size else last % env.world_size)
        if env.is_main and left_out:
            log(f"[{self.name}] {left_out} BPR triple(s) per epoch are left out: each global batch is split into "
                f"{env.world_size} equal parts (set train.batch_size to a multiple of the world size)")

    def make_sampler(self) -> BPRSampler:
        """BPR triples (and the normalised adjacency the model propagates over)."""
        assert self.graph is not None
        self.adj = normalized_adjacency(self.graph, self.cfg.model.adjacency_kind)
        return BPRSampler(self.graph.train, self.graph.num_items, self.cfg.train.batch_size, self.cfg.train.seed)

    def embeddings(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Final ``(users (U, D'), items (I, D'))`` of the training module (collective under DMP)."""
        return final_embeddings(model)

    def write_run_files(self, run_dir: Path) -> None:
        save_config(self.cfg, run_dir / "config.yaml")
        if self.graph is not None and self.graph.vocabulary is not None:
            atomic_save_json(run_dir / VOCABULARY_FILE, self.graph.vocabulary)

    # ---------------------------------------------------------------------------------- model
    def build_model(self) -> nn.Module:
        assert self.graph is not None
        model = GraphCF(self.cfg.model, self.adj, device="meta", embedding=self.cfg.embedding,
                        context=graph_context(self.graph))
        model.propagation.to(self.env.device)  # buffers (the adjacency), never on meta
        return GraphBPRTrain(model, self.cfg.model.l2, self.cfg.model.l2_on)

    def initial_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Tables and NGCF layers of an unsharded model seeded by ``train.seed`` (the papers' init:
        normal / Xavier via ``graph_tables``' ``init_fn``, Xavier layers), keyed like the DMP state dict."""
        reference = build_graph_model(self.cfg.model, self.graph, self.cfg.train.seed, self.adj, device="cpu",  # type: ignore[arg-type]
                                      embedding=self.cfg.embedding)
        return {f"model.{key}": value for key, value in reference.state_dict().items()}

    # ---------------------------------------------------------------------------------- batches
    def num_batches(self, epoch: int, env: DistEnv) -> int:
        n, b = self.sampler.num_triples, self.cfg.train.batch_size
        last = n - (len(self.sampler) - 1) * b
        return len(self.sampler) - (1 if 0 < last < env.world_size else 0)  # a part of 0 triples has no loss

    def batches(self, epoch: int, env: DistEnv, skip: int) -> Iterator[BPRBatch]:
        for batch in self.sampler.epoch(epoch, skip=skip):
            if len(batch) < env.world_size:
                return
            yield batch.part(split_rows(len(batch), env))

    def batch_samples(self, batch: BPRBatch) -> int:
        return len(batch)

    # ---------------------------------------------------------------------------------- evaluation
    def evaluate(self, model: nn.Module, split: str, env: DistEnv) -> dict[str, Any]:
        ev = self.cfg.evaluation
        graph = self.graph
        assert graph is not None
        users, items = self.embeddings(model)  # collective under DMP: every rank calls it
        progress = self.cfg.train.progress and env.is_main
        metrics: dict[str, Any] = evaluate_embeddings(users, items, graph, split, ev, progress, env)
        if ev.track_test and split != "test":
            metrics["test"] = evaluate_embeddings(users, items, graph, "test", ev, progress, env)
        return metrics

    def finish(self, model: nn.Module, run_dir: Path, env: DistEnv) -> dict[str, Any]:
        users, items = self.embeddings(model)
        if env.is_main:
            write_graph_embeddings(run_dir / EMBEDDINGS_FILE, users, items)
        return {"embedding_dim": int(users.shape[1])}

    def summary(self) -> dict[str, Any]:
        return self.graph.summary() if self.graph is not None else {}
