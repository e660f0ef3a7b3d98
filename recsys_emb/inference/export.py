"""Export: a finished run -> one self-contained artefact folder a serving stack loads.

``export_run(RUN, DIR)`` (the ``recsys-emb export`` command):

1. **unshard** (:func:`unshard`): the run's ``best/`` (or ``checkpoint/``) DCP folder, written by any
   number of ranks, is consolidated into full tensors with ``torch.distributed.checkpoint``'s
   ``dcp_to_torch_save`` (no process group needed) and loaded into the model built for one device;
2. **quantise** the tables (optional): every stock TorchRec table module becomes TorchRec's
   inference-quantised module on FBGEMM's IntN kernels (:mod:`recsys_emb.inference.quantize`);
3. **wrap** the model in a serving module whose inputs are plain tensors (no KeyedJaggedTensor, so a
   C++ server needs no TorchRec types): CTR ``(dense (B, D), values (N,), lengths (F, B))``, sequence
   ``(values (N,), lengths (F, B))``, graph / two-tower ``(users (B,))`` -> scores over every item.
   The KJT is built inside the graph, and every technique pre-transform (hashing, multi-probe
   multiplexing, semantic-ID pieces) runs inside it through our ops' fake kernels;
4. **export** with ``torch.export`` (non-strict), the batch size and the jagged lengths dynamic; the
   program is run once on a sample batch and must equal the eager model (recorded in the manifest);
   ``aoti=True`` also packages it with AOTInductor where the model allows (the reason is recorded
   when it does not). ``format="torchscript"`` instead traces the serving module with TorchRec's fx
   tracer and scripts it (:func:`script_program`): every model family and technique chain, any dtype.
   What must read a batch's keys or id counts (technique pre-transforms, several groups, the sequence
   lookups' bag sizes) sits in ``torch.fx.wrap``-ed functions with TorchScript bodies, run per batch by
   the scripted program (recsys_emb/modules/tracing.py). A module fx cannot trace is refused with
   :class:`TorchScriptUnsupported` (naming the module and line; use ``pt2``);
5. **write** ``DIR``: ``model.pt2`` (or ``model.torchscript.pt``), ``inputs/`` (what turns a raw row into model input: the Criteo
   vocabulary or a schema run's schema and fitted encodings, the sequence data's item/user id maps and
   item attributes, the graph's user/item ids), and ``manifest.json`` (family, model, techniques per
   group, table dtypes and bytes, source run, library versions, sha256 of every file). Written into a
   temporary folder and renamed at the end, so ``DIR`` is complete or absent.

Graph and two-tower models are exported as their final embeddings (LightGCN/NGCF propagation runs
over the whole training graph, the towers over every id): the artefact scores a user against every
item; technique transforms were applied when those embeddings were computed. Loading: see
:mod:`recsys_emb.inference.predictor` (needs torch, fbgemm and ``recsys_emb.ops`` only).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import linecache
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from recsys_emb.console import known_warnings
from recsys_emb.inference.manifest import FORMAT_VERSION, FORMATS, MANIFEST, library_versions, sha256

CHECKPOINTS = ("best", "checkpoint")
PARITY_TOLERANCE = 1e-4  # fp32 export vs eager on the sample batch (measured: 0 or ~1e-7)
SAMPLE_ROWS = 8


# --------------------------------------------------------------------------------------- unshard
@dataclasses.dataclass
class Unsharded:
    """A run's model on one device, in eval mode, and what built it."""

    cfg: Any  # the experiment dataclass
    task: Any  # its prepared Task (data loaded)
    train_module: nn.Module  # CTRTrain / SequenceTrain / GraphBPRTrain / TwoTowerTrain
    source: str  # the checkpoint folder or file the weights came from

    @property
    def model(self) -> nn.Module:
        return self.train_module.model


def _consolidate(folder: Path) -> dict[str, Tensor]:
    """Full tensors of a DCP model folder (saved by any number of ranks), read in this process only."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory(prefix="unshard_") as tmp:
        path = Path(tmp) / "full.pt"
        dcp_to_torch_save(str(folder), str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    return state["model"]


def build_unsharded(task: Any) -> nn.Module:
    """The training module of a prepared task, built on the CPU for one process (no padding for ranks)."""
    cfg = task.cfg
    if task.name == "ctr":
        from recsys_emb.train.tasks.ctr import build_ctr_model

        return build_ctr_model(cfg, task.train_data, "cpu")
    if task.name == "sequence":
        from recsys_emb.train.tasks.sequence import build_sequence_train

        return build_sequence_train(cfg, task.ds, world_size=1, device="cpu")
    if task.name == "graph":
        from recsys_emb.models.graph import GraphBPRTrain
        from recsys_emb.train.tasks.graph import build_graph_model

        gcf = build_graph_model(cfg.model, task.graph, seed=cfg.train.seed, adj=task.adj, device="cpu", embedding=cfg.embedding)
        return GraphBPRTrain(gcf, cfg.model.l2, cfg.model.l2_on)
    if task.name == "two_tower":
        from recsys_emb.models.two_tower import TwoTowerTrain
        from recsys_emb.train.tasks.two_tower import build_two_tower

        return TwoTowerTrain(build_two_tower(cfg, task.graph, device="cpu"))
    raise ValueError(f"unknown task {task.name!r}")


def unshard(run_dir: str | Path, checkpoint: str = "best", task: Any = None) -> Unsharded:
    """Load a finished run's weights into its model on one CPU process (eval mode).

    Args:
        run_dir: a ``recsys-emb train`` folder (``config.yaml`` + ``best/`` or ``checkpoint/``), written
            by any number of ranks: the DCP shards are consolidated here, no process group needed.
        checkpoint: ``best`` (the selected model; falls back to the last complete version, and for a run
            without a selection metric to its final ``model.pt``) or ``checkpoint`` (the last training state).
        task: an already prepared task for the run's config (tests reuse one); None = prepare it.

    Returns:
        :class:`Unsharded`: the config, the prepared task and the loaded training module.
    """
    from recsys_emb.train.checkpoint import MODEL_MARKER, STATE_FILE, load_model_state, resolve_checkpoint
    from recsys_emb.train.env import DistEnv
    from recsys_emb.train.tasks import load_experiment, make_task

    run_dir = Path(run_dir)
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir / 'config.yaml'} is missing: is {run_dir} a `recsys-emb train` run folder?")
    folder = resolve_checkpoint(run_dir / checkpoint, MODEL_MARKER if checkpoint == "best" else STATE_FILE)
    final = run_dir / "model.pt"  # a run without a selection metric keeps its final weights there only
    if folder is None and not (checkpoint == "best" and final.is_file()):
        raise FileNotFoundError(f"{run_dir / checkpoint} holds no complete checkpoint (did the run finish?)")
    cfg = load_experiment(run_dir / "config.yaml")
    if task is None:
        task = make_task(cfg)
        task.prepare(DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="none", owns_group=False))
    module = build_unsharded(task)
    state = _consolidate(folder) if folder is not None else load_model_state(final)
    source = folder if folder is not None else final
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{source} does not match the model of {run_dir / 'config.yaml'}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    module.load_state_dict(state)
    module.eval()
    return Unsharded(cfg, task, module, str(source))


# ------------------------------------------------------------------------------ serving modules
def _kjt(keys: list[str], values: Tensor, lengths: Tensor) -> Any:
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths.reshape(-1))


class CTRServing(nn.Module):
    """``(dense (B, D) float, values (N,) int64, lengths (F, B) int64) -> logits (B,)`` (keys fixed)."""

    def __init__(self, model: nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.model, self.keys = model, list(keys)

    def forward(self, dense: Tensor, values: Tensor, lengths: Tensor) -> Tensor:
        return self.model(dense, _kjt(self.keys, values, lengths))


class SequenceServing(nn.Module):
    """``(values (N,) int64, lengths (F, B) int64) -> logits (B,)``; F = the batch's feature keys."""

    def __init__(self, model: nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.model, self.keys = model, list(keys)

    def forward(self, values: Tensor, lengths: Tensor) -> Tensor:
        return self.model(_kjt(self.keys, values, lengths))


class RetrievalServing(nn.Module):
    """``users (B,) int64 -> scores (B, I)`` = final user row . every final item row.

    Both embedding matrices live in one-id-per-bag TorchRec tables (``user_emb``, ``item_emb``: a ModuleDict
    cannot hold ``items``) so that table quantisation treats them like every other model's tables."""

    def __init__(self, users: Tensor, items: Tensor) -> None:
        super().__init__()
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

        dim = users.shape[1]
        self.tables = EmbeddingBagCollection([
            EmbeddingBagConfig(name="user_emb", embedding_dim=dim, num_embeddings=users.shape[0], feature_names=["user"]),
            EmbeddingBagConfig(name="item_emb", embedding_dim=dim, num_embeddings=items.shape[0], feature_names=["item"]),
        ], device=torch.device("cpu"))
        with torch.no_grad():
            self.tables.embedding_bags["user_emb"].weight.copy_(users)
            self.tables.embedding_bags["item_emb"].weight.copy_(items)
        self.register_buffer("all_items", torch.arange(items.shape[0], dtype=torch.int64), persistent=False)

    def forward(self, users: Tensor) -> Tensor:
        u = self._lookup("user", users)  # (B, D)
        i = self._lookup("item", self.all_items)  # (I, D)
        return u @ i.T  # (B, I)

    def _lookup(self, key: str, ids: Tensor) -> Tensor:
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        other = "item" if key == "user" else "user"  # an empty bag per id: one stride for both keys
        kjt = KeyedJaggedTensor(keys=[key, other], values=ids, lengths=torch.cat([torch.ones_like(ids), torch.zeros_like(ids)]))
        return self.tables(kjt)[key]


# ------------------------------------------------------------------------------------- samples
def kjt_inputs(kjt: Any) -> tuple[Tensor, Tensor]:
    """A KJT as the serving modules' ``(values (N,) int64, lengths (F, B) int64)``."""
    return kjt.values().to(torch.int64), kjt.lengths().to(torch.int64).reshape(len(kjt.keys()), -1)


def _ctr_sample(task: Any, rows: int) -> tuple[tuple[Tensor, ...], dict[str, Any]]:
    data = task.train_data
    batch = data.batch(slice(task.train_start, task.train_start + rows))
    kjt = batch.sparse_features
    return (batch.dense_features.float(), *kjt_inputs(kjt)), {
        "keys": list(kjt.keys()), "dense_features": list(data.dense_features),
        "jagged_features": list(getattr(data, "jagged_features", []) or [])}


def _sequence_sample(task: Any, rows: int) -> tuple[tuple[Tensor, ...], dict[str, Any]]:
    ds = task.ds
    split = "valid" if len(ds.positives("valid")) else "train"
    ex = ds.examples(split)
    kjt = ds.make_batch(ex.take(np.arange(min(rows, len(ex.label))))).sparse_features
    return kjt_inputs(kjt), {"keys": list(kjt.keys())}


def serving_module(unsharded: Unsharded, rows: int = SAMPLE_ROWS) -> tuple[nn.Module, tuple[Tensor, ...], dict[str, Any]]:
    """The serving module of a run, a sample input for it and the input description for the manifest."""
    task, module = unsharded.task, unsharded.train_module
    if task.name == "ctr":
        args, inputs = _ctr_sample(task, rows)
        return CTRServing(module.model, inputs["keys"]).eval(), args, {"kind": "ctr", **inputs}
    if task.name == "sequence":
        args, inputs = _sequence_sample(task, rows)
        return SequenceServing(module.model, inputs["keys"]).eval(), args, {"kind": "sequence", **inputs}
    serving = retrieval_serving(module)
    users = serving.tables.embedding_bags["user_emb"].weight
    sample = (torch.arange(min(rows, users.shape[0]), dtype=torch.int64),)
    return serving, sample, {"kind": "retrieval", "num_users": int(users.shape[0]),
                             "num_items": int(serving.all_items.shape[0])}


def retrieval_serving(train_module: nn.Module) -> RetrievalServing:
    """The serving module of a graph (``GraphBPRTrain``) or two-tower (``TwoTowerTrain``) training module:
    its final user and item embeddings (propagated over the training graph / through the towers)."""
    from recsys_emb.train.tasks.graph import final_embeddings

    tower = train_module.model
    if hasattr(tower, "user_embeddings"):  # two-tower: the towers over every user and item id
        with torch.no_grad():
            users, items = tower.user_embeddings(), tower.item_embeddings()
    else:
        users, items = final_embeddings(train_module)
    return RetrievalServing(users.detach().float(), items.detach().float()).eval()


def dynamic_shapes(kind: str) -> tuple[dict[int, Any], ...]:
    """``torch.export`` dynamic dims of a serving module's inputs: the batch (shared) and the id count."""
    from torch.export import Dim

    batch, ids = Dim("batch", min=1, max=1 << 24), Dim("ids", min=0, max=1 << 31)
    if kind == "ctr":
        return ({0: batch}, {0: ids}, {1: batch})
    if kind == "sequence":
        return ({0: ids}, {1: batch})
    return ({0: batch},)


# -------------------------------------------------------------------------------------- inputs
def _write_inputs(unsharded: Unsharded, run_dir: Path, out: Path) -> dict[str, Any]:
    """What turns a raw row into model input, into ``out/inputs/``; returns its manifest entry."""
    task = unsharded.task
    out.mkdir(parents=True, exist_ok=True)
    if task.name == "ctr":
        src = run_dir / "data"
        shutil.copy2(src / "meta.json", out / "meta.json")
        if (src / "vocab").is_dir():
            shutil.copytree(src / "vocab", out / "vocab")
        meta = json.loads((src / "meta.json").read_text())
        if "schema" in meta:  # `prepare table` data: vocab/ holds the schema and every fitted encoding
            raw = "table_schema" if (src / "vocab" / "schema.yaml").is_file() else None  # None: prepared folders only
            return {"raw": raw, "files": ["meta.json", "vocab/"], "schema": meta["schema"],
                    "sparse_features": list(meta["sparse_features"])}
        return {"raw": "criteo_tsv" if (src / "vocab").is_dir() else None, "files": ["meta.json", "vocab/"]}
    if task.name == "sequence":
        from recsys_emb.data.sequences import FIRST_ID, MISSING_ID, OOV_ID

        ds = task.ds
        np.savez(out / "sequence.npz", item_raw_ids=np.asarray(ds.item_raw_ids, dtype=np.int64),
                 raw_users=np.asarray(ds.raw_users, dtype=np.int64), item_cat=np.asarray(ds.item_cat, dtype=np.int64),
                 item_attr_offsets=np.asarray(ds.item_attr_offsets, dtype=np.int64),
                 item_attr_values=np.asarray(ds.item_attr_values, dtype=np.int64))
        return {"raw": "sequence_jsonl", "files": ["sequence.npz"], "max_history": int(ds.cfg.max_history),
                "first_id": FIRST_ID, "oov_id": OOV_ID, "missing_id": MISSING_ID}
    # graph data sets are already dense 0-based user / item indices: the raw id is the index
    return {"raw": "user_ids", "files": []}


def _techniques(cfg: Any) -> list[dict[str, Any]]:
    from recsys_emb.config.embedding import technique_entry

    return [{"group": g.name, "features": g.features, "chain": [technique_entry(e, g.name)[0] for e in g.chain] or ["plain"]}
            for g in cfg.embedding.groups]


def export_program(serving: nn.Module, sample: tuple[Tensor, ...], kind: str, eager: Tensor | None = None) -> tuple[Any, float]:
    """``torch.export`` a serving module (dynamic batch and id count) and its max abs difference from eager on ``sample``."""
    if eager is None:
        with torch.no_grad():
            eager = serving(*sample)
    program = torch.export.export(serving, sample, dynamic_shapes=dynamic_shapes(kind), strict=False)
    with torch.no_grad():
        exported = program.module()(*sample)
    return program, float((exported - eager).abs().max()) if eager.numel() else 0.0


# --------------------------------------------------------------------------------- torchscript
class TorchScriptUnsupported(ValueError):
    """A serving module that TorchRec's fx tracing + ``torch.jit.script`` cannot turn into TorchScript
    (export it with ``format="pt2"``). The message names the module, the line and why."""


# UserWarnings of torch.jit.script on TorchRec 1.8's own classes (their annotations); nothing a caller can change
def _culprit(error: BaseException) -> str:
    """Where in our model code (not torch's, not this package's) ``error`` was raised."""
    here = Path(__file__).resolve().parent
    package = here.parent
    frames = []  # (frame, line) of our model code, outermost first
    tb = error.__traceback__
    while tb is not None:
        path = Path(tb.tb_frame.f_code.co_filename).resolve()
        if package in path.parents and here not in path.parents:
            frames.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    if not frames:
        return ""
    frame, line = frames[-1]
    owner = next((type(f.f_locals["self"]).__name__ for f, _ in reversed(frames)
                  if isinstance(f.f_locals.get("self"), nn.Module)), None)
    function = frame.f_code.co_name
    name = function if not function.startswith("<") and "self" not in frame.f_locals else f"{owner}.{function}"
    where = f"{Path(frame.f_code.co_filename).resolve().relative_to(package.parent)}:{line}"
    source = linecache.getline(frame.f_code.co_filename, line).strip()
    return f" in {name} ({where}: `{source}`)"


def _plain_annotations(graph: torch.fx.GraphModule) -> None:
    """The traced inputs as ``Tensor`` and the output unannotated: the serving modules' string annotations
    (``from __future__ import annotations``) are not types TorchScript can read."""
    for node in graph.graph.nodes:
        if isinstance(node.type, str):
            node.type = Tensor if node.op == "placeholder" else None
    graph.recompile()


def _first_rows(args: tuple[Tensor, ...], kind: str, rows: int) -> tuple[Tensor, ...]:
    """The first ``rows`` examples of a serving module's inputs (``lengths`` is ``(F, B)``)."""
    if kind == "retrieval":
        return (args[0][:rows],)
    *head, values, lengths = args
    keep = torch.zeros_like(lengths, dtype=torch.bool)
    keep[:, :rows] = True
    return (*[h[:rows] for h in head], values[torch.repeat_interleave(keep.reshape(-1), lengths.reshape(-1))], lengths[:, :rows])


def script_program(serving: nn.Module, sample: tuple[Tensor, ...], kind: str) -> tuple[torch.jit.ScriptModule, float]:
    """TorchScript of a serving module: TorchRec's fx tracer (it knows KJT / JaggedTensor; the fbgemm and
    ``recsys_emb`` ops are recorded as ``torch.ops`` calls) then ``torch.jit.script``; the scripted module after
    a save / load round trip, and its max abs difference from eager on ``sample`` and on its first row
    (a batch size baked into the graph would show there).

    Raises:
        TorchScriptUnsupported: the module does not trace or script (the message says where and why).
    """
    import torchrec.fx

    try:
        with known_warnings("forward"):  # TorchRec's KJT code calls torch.fx's is_fx_tracing(), which logs a notice
            graph = torchrec.fx.symbolic_trace(serving)
    except Exception as e:  # noqa: BLE001 (Python control flow on traced values: say where)
        first = str(e).splitlines()[0].split(". ")[0] if str(e) else ""
        raise TorchScriptUnsupported(f"TorchRec's fx tracing failed{_culprit(e)} ({type(e).__name__}: {first})") from e
    _plain_annotations(graph)
    try:
        with known_warnings("torchscript"):  # raised while TorchScript compiles TorchRec's KJT / JaggedTensor classes
            scripted = torch.jit.script(graph)
    except Exception as e:  # noqa: BLE001
        raise TorchScriptUnsupported(f"torch.jit.script of the traced module failed ({type(e).__name__}: "
                                     f"{' '.join(str(e).split())[:500]})") from e
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    scripted = torch.jit.load(buffer, map_location="cpu")
    parity = 0.0
    with torch.no_grad():
        for args in (sample, _first_rows(sample, kind, 1)):
            eager, out = serving(*args), scripted(*args)
            if eager.numel():
                parity = max(parity, float((out - eager).abs().max()))
    return scripted, parity


def _aoti(program: Any, path: Path) -> str | None:
    """Package ``program`` with AOTInductor at ``path``; the reason when the model does not allow it."""
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
        return None
    except Exception as e:  # noqa: BLE001 (any compile failure: record why, the pt2 program still serves)
        path.unlink(missing_ok=True)
        return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


@known_warnings("forward", "sharded_tensor")
def export_run(run_dir: str | Path, out: str | Path, *, quantize: str | dict[str, str] = "none", checkpoint: str = "best",
               format: str = "pt2", aoti: bool = False, overwrite: bool = False, row_alignment: int = 16,
               unsharded: Unsharded | None = None) -> dict[str, Any]:
    """Export a finished run to ``out`` (see the module docstring); returns the manifest.

    Args:
        run_dir: a ``recsys-emb train`` run folder (trained on any number of ranks).
        out: the artefact folder to create (refused when it exists, unless ``overwrite``).
        quantize: table dtype, ``none`` (fp32), ``fp16``, ``int8`` or ``int4``, or ``{table: dtype}``.
        checkpoint: ``best`` or ``checkpoint`` (see :func:`unshard`).
        format: ``pt2`` (a ``torch.export`` program, ``model.pt2``) or ``torchscript`` (TorchRec fx tracing +
            ``torch.jit.script``, ``model.torchscript.pt``: every family and technique chain; a model fx cannot
            trace raises :class:`TorchScriptUnsupported`, see :func:`script_program`).
        aoti: also package the program with AOTInductor (``model.aoti.pt2``; ``pt2`` only).
        overwrite: replace an existing ``out``.
        row_alignment: bytes a quantised table row is padded to: 16 (TorchRec's default; the CUDA kernels
            need it) or 1 (unpadded rows, CPU serving only: dim-16 int8 rows take 20 bytes instead of 32).
        unsharded: an already unsharded run (tests reuse one); None = :func:`unshard` it.

    Raises:
        TorchScriptUnsupported: ``format="torchscript"`` for a model that does not script (a ``ValueError``).
    """
    from recsys_emb.inference.quantize import quantize_tables, table_bytes

    run_dir, out = Path(run_dir), Path(out)
    if format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    if aoti and format != "pt2":
        raise ValueError("--aoti packages a torch.export program: it needs --format pt2")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")
    started = time.perf_counter()
    unsharded = unsharded or unshard(run_dir, checkpoint)
    serving, sample, inputs = serving_module(unsharded)
    with torch.no_grad():
        eager = serving(*sample)
    dtype = "fp32" if quantize in ("none", None) else quantize
    if dtype != "fp32":  # on a copy: the unsharded model stays fp32 (callers export several dtypes from one)
        serving = quantize_tables(copy.deepcopy(serving), dtype, row_alignment=row_alignment)
        with torch.no_grad():
            eager = serving(*sample)
    if format == "torchscript":
        try:
            program, parity = script_program(serving, sample, inputs["kind"])
        except TorchScriptUnsupported as e:
            chains = "; ".join(f"{t['group']}: {'+'.join(t['chain'])}" for t in _techniques(unsharded.cfg))
            raise TorchScriptUnsupported(
                f"--format torchscript: the {unsharded.task.name} model {unsharded.cfg.model.name!r} (technique chains "
                f"{chains}) cannot be scripted: {e}. Export it with --format pt2 (torch.export handles it; --aoti "
                f"for a package C++ loads). TorchScript needs a forward that fx can trace (docs/serving.md)") from e
    else:
        program, parity = export_program(serving, sample, inputs["kind"], eager)
    if not parity <= PARITY_TOLERANCE:
        raise RuntimeError(f"the exported program differs from the eager model by {parity:.3g} on a sample batch "
                           f"(tolerance {PARITY_TOLERANCE}); this is a bug, please report it with {run_dir / 'config.yaml'}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        if format == "torchscript":
            torch.jit.save(program, str(tmp / FORMATS[format]))
        else:
            torch.export.save(program, str(tmp / FORMATS[format]))
        aoti_error = _aoti(program, tmp / "model.aoti.pt2") if aoti else "not requested"
        input_entry = _write_inputs(unsharded, run_dir, tmp / "inputs")
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "format_version": FORMAT_VERSION,
            "task": unsharded.task.name, "model": unsharded.cfg.model.name, "name": getattr(unsharded.cfg, "name", None),
            "techniques": _techniques(unsharded.cfg),
            "inputs": {**inputs, **input_entry},
            "outputs": "scores (B, num_items)" if inputs["kind"] == "retrieval" else "logits (B,)",
            "quantize": dtype, "row_alignment": row_alignment if dtype != "fp32" else None, "tables": table_bytes(serving),
            "format": format, "artefact": FORMATS[format], "aoti": None if aoti_error else "model.aoti.pt2", "aoti_error": aoti_error,
            "bytes": {str(p.relative_to(tmp)): p.stat().st_size for p in files},
            "sha256": {str(p.relative_to(tmp)): sha256(p) for p in files},
            "export_parity_max_abs": parity,
            "source": {"run_dir": str(run_dir.resolve()), "checkpoint": unsharded.source,
                       "metrics": _metrics(run_dir)},
            "versions": library_versions(),
            "export_seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _metrics(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return {k: data[k] for k in ("select_metric", "selected_on", data.get("selected_on"), "test") if k and k in data}
