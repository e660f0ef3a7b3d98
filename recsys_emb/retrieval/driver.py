"""``recsys-emb retrieve --config CFG``: base embeddings -> indexes -> single-vector vs kNN-Embed.

Steps: read a LightGCN-format folder (``train.txt``/``test.txt``, optional ``valid.txt``, plain or
``.gz``); train the base model through the one trainer (``base.type``: ``two_tower`` in-batch
softmax, :mod:`recsys_emb.train.tasks.two_tower`, or the graph-CF ``lightgcn`` / ``mf`` with BPR,
:mod:`recsys_emb.train.tasks.graph`), or load user/item
embeddings produced by any model; build the exact index, the configured FAISS index and the
kNN-Embed retriever; retrieve K = max(eval.ks) candidates for every evaluated user (training items,
and validation items when evaluating test, excluded) and report recall/NDCG/diversity/speed per method.

``eval.split: valid`` evaluates on validation data instead of test (for tuning kNN-Embed's choices):
the folder's ``valid`` file when it has one, else ``data.holdout_fraction`` of every user's training
items held out (seeded by ``data.holdout_seed``); the base model is then trained without them.

Run folder: ``config.yaml`` (resolved), ``embeddings.pt`` (``{"user": (U, D), "item": (N, D)}``),
``metrics.json``; the metrics are also printed as one JSON line.

Embedding files for ``base.source: load``: a ``torch.save`` dict with float tensors ``user`` (U, D)
and ``item`` (N, D) (read with ``weights_only=True``), or an ``.npz`` with arrays ``user``, ``item``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recsys_emb.config.experiment import ShardingConfig
from recsys_emb.config.graph import GraphEvalConfig, GraphTrainConfig
from recsys_emb.config.embedding import EmbeddingSpec
from recsys_emb.config.two_tower import TwoTowerTrainConfig
from recsys_emb.data.availability import require_data
from recsys_emb.models.graph import GraphModelConfig
from recsys_emb.models.two_tower import TwoTowerConfig
from recsys_emb.retrieval.data import InteractionData, Interactions, load_split_data
from recsys_emb.retrieval.evaluate import MethodResult, nan_to_none, summarize, timed
from recsys_emb.retrieval.index import IndexConfig, build_index
from recsys_emb.retrieval.knn_embed import KnnEmbed, KnnEmbedConfig
from recsys_emb.utils import atomic_save_json, atomic_write_bytes, log


@dataclass
class RetrieveDataConfig:
    """Where the interactions are."""

    path: str = ""  # folder with train.txt[.gz] and test.txt[.gz] (`user item item ...` per line)
    train: str = "train"  # split file stem used for training and exclusion
    test: str = "test"  # split file stem used for evaluation
    valid: str = "valid"  # validation file stem, used when present (excluded when scoring test)
    holdout_fraction: float = 0.1  # eval.split=valid without a valid file: share of each user's train items held out
    holdout_seed: int = 0  # seed of that holdout


BASE_TYPES = ("two_tower", "lightgcn", "mf")


@dataclass
class GraphBaseConfig:
    """A graph-CF base model (``base.type: lightgcn | mf``): the ``model:``, ``train:``, ``sharding:`` and
    ``evaluation:`` sections of a ``task: graph`` experiment (configs/gowalla_lightgcn.yaml;
    ``model.name`` is set from ``base.type``). No epoch selection: the weights after the last epoch
    are used (``evaluation.select_metric`` is ignored; the trainer still scores every epoch)."""

    model: GraphModelConfig = field(default_factory=GraphModelConfig)
    embedding: EmbeddingSpec = field(default_factory=EmbeddingSpec)  # user/item table groups (config/embedding.py)
    train: GraphTrainConfig = field(default_factory=GraphTrainConfig)
    sharding: ShardingConfig = field(default_factory=lambda: ShardingConfig(type="data_parallel"))
    evaluation: GraphEvalConfig = field(default_factory=lambda: GraphEvalConfig(select_metric=None))


@dataclass
class TwoTowerBaseConfig:
    """A two-tower base model (``base.type: two_tower``): the ``model:``, ``train:``, ``sharding:`` and
    ``evaluation:`` sections of a ``task: two_tower`` experiment (configs/ml1m_two_tower.yaml). No epoch
    selection, as for :class:`GraphBaseConfig`."""

    model: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    embedding: EmbeddingSpec = field(default_factory=EmbeddingSpec)  # user/item table groups (config/embedding.py)
    train: TwoTowerTrainConfig = field(default_factory=TwoTowerTrainConfig)
    sharding: ShardingConfig = field(default_factory=lambda: ShardingConfig(type="data_parallel"))
    evaluation: GraphEvalConfig = field(default_factory=lambda: GraphEvalConfig(select_metric=None))


@dataclass
class BaseConfig:
    """Where the user/item embeddings come from."""

    source: str = "train"  # train (the base.type model) | load (embeddings file)
    type: str = "two_tower"  # two_tower (base.two_tower) | lightgcn | mf (BPR graph CF, base.graph)
    embeddings: str | None = None  # source=load: .pt dict or .npz with `user` (U, D) and `item` (N, D)
    two_tower: TwoTowerBaseConfig = field(default_factory=TwoTowerBaseConfig)  # type=two_tower
    graph: GraphBaseConfig = field(default_factory=GraphBaseConfig)  # type=lightgcn | mf

    def __post_init__(self) -> None:
        if self.source not in ("train", "load"):
            raise ValueError(f"base.source {self.source!r} is not one of ['train', 'load']")
        if self.type not in BASE_TYPES:
            raise ValueError(f"base.type {self.type!r} is not one of {list(BASE_TYPES)}")
        if self.source == "load" and not self.embeddings:
            raise ValueError("base.source 'load' needs base.embeddings (a .pt or .npz file)")


@dataclass
class RetrieveEvalConfig:
    """What is evaluated."""

    ks: list[int] = field(default_factory=lambda: [20, 50, 100])  # cutoffs; K = max(ks) is retrieved
    max_users: int = 0  # evaluate a seeded random subset of users with test items (0 = all)
    seed: int = 0  # user subset seed
    knn_embed_exact: bool = True  # also run kNN-Embed with exact per-cluster search when index.kind != exact
    split: str = "test"  # test | valid (validation data, for tuning; see the module docstring)

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"eval.ks must be a non-empty list of positive ints, got {self.ks}")
        if self.split not in ("test", "valid"):
            raise ValueError(f"eval.split {self.split!r} is not one of ['test', 'valid']")


@dataclass
class RetrieveConfig:
    """A retrieval experiment (``configs/retrieval_*.yaml``)."""

    name: str = "retrieval"
    data: RetrieveDataConfig = field(default_factory=RetrieveDataConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    index: IndexConfig = field(default_factory=lambda: IndexConfig(kind="hnsw"))
    knn_embed: KnnEmbedConfig = field(default_factory=KnnEmbedConfig)
    eval: RetrieveEvalConfig = field(default_factory=RetrieveEvalConfig)
    threads: int = 1  # torch/FAISS threads (0 = library default; 1 avoids OpenMP oversubscription on shared CPUs)
    show_progress: bool = True  # tqdm bars


def load_embeddings(path: str | Path) -> tuple[Tensor, Tensor]:
    """Read ``(user (U, D), item (N, D))`` from a ``.pt`` dict or an ``.npz`` file."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            missing = {"user", "item"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: missing arrays {sorted(missing)} (has {z.files})")
            user, item = torch.from_numpy(z["user"]), torch.from_numpy(z["item"])
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"user", "item"} <= set(state):
            raise ValueError(f"{path}: expected a dict with tensors 'user' and 'item'")
        user, item = state["user"], state["item"]
    user, item = user.float(), item.float()
    if user.dim() != 2 or item.dim() != 2 or user.shape[1] != item.shape[1]:
        raise ValueError(f"{path}: user {tuple(user.shape)} and item {tuple(item.shape)} must be (U, D) and (N, D)")
    return user, item


def save_embeddings(path: str | Path, user: Tensor, item: Tensor) -> None:
    import io  # noqa: PLC0415

    buf = io.BytesIO()
    torch.save({"user": user.contiguous(), "item": item.contiguous()}, buf)
    atomic_write_bytes(path, buf.getvalue())


def set_base_seed(cfg: RetrieveConfig, seed: int) -> None:
    """Seed the base model's training (parameters, sampling) for ``cfg.base.type``."""
    base_section(cfg).train.seed = seed


def base_section(cfg: RetrieveConfig) -> TwoTowerBaseConfig | GraphBaseConfig:
    """The ``base.two_tower`` or ``base.graph`` section ``base.type`` trains."""
    return cfg.base.two_tower if cfg.base.type == "two_tower" else cfg.base.graph


def load_data(cfg: RetrieveConfig) -> InteractionData:
    """The train/evaluation data of ``cfg`` (``eval.split``; see :func:`~recsys_emb.retrieval.data.load_split_data`)."""
    d = cfg.data
    return load_split_data(d.path, cfg.eval.split, d.train, d.test, d.valid or None, d.holdout_fraction, d.holdout_seed)


def _graph_split(x: Interactions, num_users: int):  # noqa: ANN202
    """Interactions -> a graph-data split (CSR over users, items sorted per user)."""
    from recsys_emb.data.graphs import GraphSplit  # noqa: PLC0415

    users = torch.repeat_interleave(torch.arange(x.num_users), x.counts())
    keys = torch.sort(users * x.num_items + x.items).values.numpy()
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // x.num_items, minlength=num_users), out=indptr[1:])
    return GraphSplit(indptr, (keys % x.num_items).astype(np.int64), "<retrieval data>", int((x.counts() > 0).sum()))


def train_base(cfg: RetrieveConfig, data: InteractionData, run_dir: Path) -> tuple[Tensor, Tensor, dict]:
    """Train the ``base.type`` model on ``data.train`` with the one trainer (``task: two_tower`` or ``graph``).

    The graph is built in memory from ``data`` (same id space; items seen only in test/valid are
    isolated nodes), so a validation holdout trains without its items. Splits given to the task:
    ``train``, ``test`` = the evaluated split and, when ``data.extra_exclude`` is set, ``valid`` (so
    its items are excluded when the trainer scores test). No model selection: the embeddings are
    those after the last epoch (selecting an epoch on the evaluated split would leak it into the base
    model). The trainer's files (``config.yaml``, ``model.pt``, ``embeddings.pt``, ``metrics.json``,
    ...) go to ``run_dir``; an earlier base run there is replaced.
    """
    import shutil  # noqa: PLC0415

    from recsys_emb.config.graph import GraphDataConfig, GraphExperimentConfig  # noqa: PLC0415
    from recsys_emb.config.two_tower import TwoTowerExperimentConfig  # noqa: PLC0415
    from recsys_emb.data.graphs import GraphDataset  # noqa: PLC0415
    from recsys_emb.train.tasks.graph import GraphTask, load_graph_embeddings  # noqa: PLC0415
    from recsys_emb.train.tasks.two_tower import TwoTowerTask  # noqa: PLC0415
    from recsys_emb.train.trainer import fit  # noqa: PLC0415

    splits = {"train": _graph_split(data.train, data.num_users), "test": _graph_split(data.test, data.num_users)}
    if data.extra_exclude is not None:
        splits["valid"] = _graph_split(data.extra_exclude, data.num_users)
    graph = GraphDataset(data.num_users, data.num_items, splits, data.source)
    base = base_section(cfg)
    tc = dataclasses.replace(base.train, early_stopping_patience=0, progress=base.train.progress and cfg.show_progress)
    common = dict(name=f"{cfg.name}_base", data=GraphDataConfig(path=data.source, valid="valid" in splits), train=tc,
                  embedding=base.embedding, sharding=base.sharding,
                  evaluation=dataclasses.replace(base.evaluation, select_metric=None))
    if cfg.base.type == "two_tower":
        ecfg: Any = TwoTowerExperimentConfig(model=base.model, **common)  # type: ignore[arg-type]
        task: Any = TwoTowerTask(ecfg, graph)
        details = {"embedding_dim": base.model.embedding_dim, "tower_layers": list(base.model.tower_layers)}
    else:
        ecfg = GraphExperimentConfig(model=dataclasses.replace(base.model, name=cfg.base.type), **common)  # type: ignore[arg-type]
        task = GraphTask(ecfg, graph)
        details = {"num_layers": ecfg.model.num_layers, "embedding_dim": ecfg.model.embedding_dim}
    if run_dir.exists() and any(run_dir.iterdir()):
        log(f"[retrieve] replacing the earlier base-model run in {run_dir}")
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    metrics = fit(task, ecfg, run_dir)
    seconds = time.perf_counter() - t0
    user, item = load_graph_embeddings(run_dir)
    epochs = metrics["epochs"]
    return user.float(), item.float(), {
        "source": cfg.base.type, "epochs": metrics["epochs_completed"], "seed": tc.seed, "batch_size": tc.batch_size,
        "lr": tc.embedding_optimizer.lr, **details,
        "train_seconds": seconds, "mean_epoch_seconds": sum(e["train_seconds"] for e in epochs) / max(len(epochs), 1),
        "final_loss": epochs[-1]["mean_loss"] if epochs else None, "eval_split_metrics": metrics.get("test")}


def base_embeddings(cfg: RetrieveConfig, data: InteractionData, work_dir: Path | None = None) -> tuple[Tensor, Tensor, dict]:
    """Train the ``base.type`` model or load embeddings; returns ``(user, item, info)``.

    ``work_dir``: where the base model writes its training files (default: a temporary folder).
    """
    if cfg.base.source == "load":
        assert cfg.base.embeddings is not None
        user, item = load_embeddings(cfg.base.embeddings)
        if user.shape[0] < data.num_users or item.shape[0] < data.num_items:
            raise ValueError(f"{cfg.base.embeddings}: {user.shape[0]} users / {item.shape[0]} items, "
                             f"but the data has {data.num_users} / {data.num_items}")
        return user, item, {"source": str(cfg.base.embeddings)}
    if work_dir is not None:
        return train_base(cfg, data, work_dir)
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="retrieve_base_") as tmp:
        return train_base(cfg, data, Path(tmp))


def evaluation_users(data: InteractionData, cfg: RetrieveEvalConfig) -> Tensor:
    """Users with >= 1 test item (a seeded random subset when ``max_users``), sorted."""
    users = torch.nonzero(data.test.counts() > 0).squeeze(1)
    if cfg.max_users and users.numel() > cfg.max_users:
        g = torch.Generator().manual_seed(cfg.seed)
        users = users[torch.randperm(users.numel(), generator=g)[: cfg.max_users]].sort().values
    return users


def evaluate_methods(cfg: RetrieveConfig, data: InteractionData, user_emb: Tensor, item_emb: Tensor,
                     extra_single_kinds: tuple[str, ...] = (),
                     extra_single: dict[str, IndexConfig] | None = None, keep: dict | None = None) -> dict:
    """Build every retriever and evaluate them on the same users; returns the metrics dict.

    Methods: ``single[exact]``, ``single[<index.kind>]`` and ``single[<extra kind>]`` (single-vector
    top-K), ``single[<name>]`` for each ``extra_single`` index config, ``knn_embed[<index.kind>]``
    and, when ``eval.knn_embed_exact``, ``knn_embed[exact]``.

    ``keep`` (a dict, filled in place) receives the evaluated ``users``, the cluster ``assignments``
    and every method's (B, K) ids at the largest cutoff (kNN-Embed: its budget-K run), for per-user
    analyses.
    """
    ks = sorted(cfg.eval.ks)
    k = ks[-1]
    users = evaluation_users(data, cfg.eval)
    exclude = data.exclusions(users)
    test = data.test.select(users)
    q = user_emb[users]
    popularity = torch.bincount(data.train.items, minlength=data.num_items)
    exact_cfg = dataclasses.replace(cfg.index, kind="exact")
    results: list[MethodResult] = []
    build_seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    exact = build_index(item_emb, exact_cfg)
    build_seconds["single[exact]"] = time.perf_counter() - t0
    results.append(timed("single[exact]", lambda: exact.search(q, k, exclude)))
    for kind in dict.fromkeys([cfg.index.kind, *extra_single_kinds]):
        if kind == "exact":
            continue
        t0 = time.perf_counter()
        ann = build_index(item_emb, dataclasses.replace(cfg.index, kind=kind))
        build_seconds[f"single[{kind}]"] = time.perf_counter() - t0
        results.append(timed(f"single[{kind}]", lambda ann=ann: ann.search(q, k, exclude)))
    for label, icfg in (extra_single or {}).items():
        t0 = time.perf_counter()
        ann = build_index(item_emb, icfg)
        build_seconds[f"single[{label}]"] = time.perf_counter() - t0
        results.append(timed(f"single[{label}]", lambda ann=ann: ann.search(q, k, exclude)))

    kinds = [cfg.index.kind] + (["exact"] if cfg.index.kind != "exact" and cfg.eval.knn_embed_exact else [])
    knn_info: dict = {}
    knn_runs: dict[str, dict[int, MethodResult]] = {}
    assignments = None
    for kind in sorted(kinds, key=lambda x: x != "exact"):
        t0 = time.perf_counter()
        icfg = dataclasses.replace(cfg.index, kind=kind)
        if assignments is None:
            knn = KnnEmbed.fit(item_emb, cfg.knn_embed, icfg, popularity)
            assignments = knn.assignments
        else:
            knn = KnnEmbed(item_emb, assignments, cfg.knn_embed.num_clusters, cfg.knn_embed, icfg, popularity)
        knn.fit_users(user_emb, data.train.csr, users=users)
        name = f"knn_embed[{kind}]"
        build_seconds[name] = time.perf_counter() - t0
        # kNN-Embed splits the budget K itself, so each cutoff gets its own run with budget K = cutoff
        knn_runs[name] = {kk: timed(name, lambda kk=kk: knn.retrieve_users(users, q, kk, exclude)) for kk in ks}
        knn_info = {
            "cluster_sizes": {"min": int(knn.cluster_sizes.min()), "max": int(knn.cluster_sizes.max()),
                              "mean": float(knn.cluster_sizes.float().mean())},
            "users_without_history": int((~knn.has_history[users]).sum()) if knn.has_history is not None else 0,
        }
    assert assignments is not None
    reference = results[0].ids
    c = cfg.knn_embed.num_clusters
    methods = {r.name: nan_to_none(summarize(r, test, assignments, c, item_emb, ks, reference)) for r in results}
    for name, runs in knn_runs.items():
        merged: dict[str, float] = {}
        for kk, run in runs.items():
            m = summarize(run, test, assignments, c, item_emb, [kk], reference[:, :kk])
            merged.update({key: v for key, v in m.items() if key.endswith(f"@{kk}")})
        merged.update(runs[k].timing())  # speed at the largest budget
        methods[name] = nan_to_none(merged)
    for name, secs in build_seconds.items():
        methods[name]["build_seconds"] = secs
    if keep is not None:
        keep.update({"users": users, "assignments": assignments,
                     **{r.name: r.ids for r in results}, **{name: runs[k].ids for name, runs in knn_runs.items()}})
    return {"users": int(users.numel()), "k": k, "methods": methods, "knn_embed": knn_info,
            "num_users": data.num_users, "num_items": data.num_items, "split": cfg.eval.split,
            "data": data.source}


def add_retrieve_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``recsys-emb retrieve``."""
    parser.add_argument("--config", type=Path, required=True, help="retrieval YAML (e.g. configs/retrieval_gowalla.yaml)")
    parser.add_argument("--data", help="interaction folder (overrides data.path)")
    parser.add_argument("--embeddings", help="load user/item embeddings from this .pt/.npz (sets base.source=load)")
    parser.add_argument("--run-dir", type=Path, help="output folder (default: runs/<config name>-<time>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value with a dotted key, e.g. --set knn_embed.num_clusters=16")


def run_retrieve(args: argparse.Namespace) -> int:
    """Entry point of ``recsys-emb retrieve``; prints the metrics as one JSON line."""
    from recsys_emb.config.io import load_config, save_config  # noqa: PLC0415

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.embeddings:
        overrides += ["base.source=load", f"base.embeddings={args.embeddings}"]
    cfg = load_config(RetrieveConfig, args.config, overrides)
    if not cfg.data.path:
        raise ValueError(f"{args.config}: data.path is empty (set it or pass --data FOLDER)")
    d = cfg.data  # checked before a run folder is made: a missing folder/file explains where to get it
    require_data(d.path, "gowalla", (f"{d.train}.txt", f"{d.test}.txt"), where="data.path")
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
        if cfg.index.threads == 0:
            cfg.index.threads = cfg.threads
    try:
        run_dir = args.run_dir or Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        log(f"[retrieve] run dir: {run_dir}")
        data = load_data(cfg)
        user_emb, item_emb, info = base_embeddings(cfg, data, run_dir / "base")
        save_embeddings(run_dir / "embeddings.pt", user_emb, item_emb)
        metrics = evaluate_methods(cfg, data, user_emb, item_emb)
        metrics["base"] = info
        atomic_save_json(run_dir / "metrics.json", metrics)
    finally:
        torch.set_num_threads(previous_threads)
    print(json.dumps({"name": cfg.name, "users": metrics["users"], "methods": metrics["methods"]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys-emb retrieve", description=__doc__.splitlines()[0])
    add_retrieve_arguments(parser)
    return run_retrieve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
