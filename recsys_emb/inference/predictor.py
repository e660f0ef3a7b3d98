"""Load an exported artefact and score with it: :class:`Predictor` (``recsys-emb predict``).

Needs torch, fbgemm_gpu (the quantised tables' kernels and TorchRec's jagged ops) and our op library
``recsys_emb.ops`` (the technique pre-transforms) at load time, never the training code
(``recsys_emb.train`` / ``models`` / ``modules``) nor TorchRec: the artefact's inputs are plain tensors.

Example::

    predictor = Predictor.load("artefacts/dcn")
    logits = predictor(dense, values, lengths)            # the exported program, as-is
    predictor.predict_file(["day_23.tsv"], "scores.tsv")  # raw rows -> one score per row
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recsys_emb.console import known_warnings
from recsys_emb.data.criteo_reader import SkipLog
from recsys_emb.inference.manifest import FORMATS, ArtefactError, read_manifest


def _load_op_libraries() -> None:
    """Register the ops an exported program may call: fbgemm's (tables, jagged ops) and ours (pre-transforms)."""
    import importlib

    for library in ("fbgemm_gpu", "recsys_emb.ops"):  # torch.ops.fbgemm.*, torch.ops.recsys_emb.*
        importlib.import_module(library)


class Predictor:
    """A loaded artefact: ``predictor(*inputs)`` runs the exported program (see ``manifest['inputs']``).

    Args (use :meth:`load`):
        folder: the artefact folder.
        manifest: its manifest.
        program: the callable exported module (the ``torch.export`` program's module, the AOTInductor
            package's runner, or the ``torch.jit`` ScriptModule).
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], program: Any) -> None:
        self.folder, self.manifest, self.program = folder, manifest, program
        self.kind: str = manifest["inputs"]["kind"]

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, verify: bool = True, check_versions: bool = True,
             aoti: bool | None = None) -> Predictor:
        """Load ``folder`` (written by ``recsys-emb export``) with the loader of its manifest's ``format``:
        ``torch.export.load`` (``pt2``; ``aoti_load_package`` for its AOTInductor package) or ``torch.jit.load``
        (``torchscript``).

        Args:
            folder: the artefact folder.
            verify: check every file's sha256 against the manifest.
            check_versions: refuse an artefact of another torch / fbgemm minor version.
            aoti: run the AOTInductor package (None = when the folder has one).

        Raises:
            ArtefactError: missing, corrupted or incompatible artefact, naming the file and the problem.
        """
        folder = Path(folder)
        manifest = read_manifest(folder, verify=verify, check_versions=check_versions)
        _load_op_libraries()
        fmt = manifest.get("format", "pt2")  # artefacts written before TorchScript existed have no "format"
        if fmt not in FORMATS:
            raise ArtefactError(f"{folder / 'manifest.json'}: unknown artefact format {fmt!r} (this recsys_emb reads "
                                f"{', '.join(sorted(FORMATS))}); export the run again with this version")
        use_aoti = manifest.get("aoti") is not None if aoti is None else aoti
        if use_aoti and manifest.get("aoti") is None:
            raise ArtefactError(f"{folder} has no AOTInductor package ({manifest.get('aoti_error')})")
        path = folder / (manifest["aoti"] if use_aoti else manifest["artefact"])
        try:
            if use_aoti:
                program = torch._inductor.aoti_load_package(str(path))
            elif fmt == "torchscript":
                program = torch.jit.load(str(path))
            else:
                with known_warnings("export_load"):
                    program = torch.export.load(str(path)).module()
        except Exception as e:  # noqa: BLE001 (a damaged or foreign file: say which and why)
            raise ArtefactError(f"{path} could not be loaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                                "export the run again") from e
        return cls(folder, manifest, program)

    def __call__(self, *inputs: Tensor) -> Tensor:
        with torch.no_grad():
            return self.program(*inputs)

    # ------------------------------------------------------------------------------------ files
    def batches(self, paths: list[Path], batch_size: int, log: SkipLog) -> Iterator[Any]:
        """Raw rows of ``paths`` as the artefact's input batches (see :mod:`recsys_emb.inference.raw`)."""
        from recsys_emb.inference import raw

        spec, inputs_dir = self.manifest["inputs"], self.folder / "inputs"
        if self.kind == "ctr" and spec.get("raw") == "table_schema":  # a run on `prepare table` / data.schema data
            return raw.table_batches(paths, inputs_dir, spec, batch_size, log)
        if self.kind == "ctr":
            return raw.ctr_batches(paths, inputs_dir, spec, batch_size, log)
        if self.kind == "sequence":
            return raw.sequence_batches(paths, inputs_dir, spec, batch_size, log)
        return raw.user_batches(paths, spec, batch_size, log)

    def predict_file(self, data: list[str | os.PathLike[str]] | str | os.PathLike[str], out: str | os.PathLike[str],
                     batch_size: int = 4096, top_k: int = 20, progress: bool = True) -> dict[str, Any]:
        """Score raw rows and write one line per row to ``out`` (streamed, replaced atomically at the end); returns counts.

        CTR and sequence artefacts write ``row<TAB>score[<TAB>label]`` (``score`` = click probability;
        ``row`` = the index among the valid rows for Criteo TSV and schema'd tables, ``file:line`` for JSON lines);
        graph / two-tower artefacts write ``user<TAB>item,item,...<TAB>score,score,...`` (top ``top_k``).
        Malformed rows are skipped and counted (``skipped``, ``examples``); with labels the result
        has the ``auc`` of the scored rows.
        """
        from recsys_emb.console import tqdm

        from recsys_emb.inference import raw
        from recsys_emb.utils import atomic_open

        paths = raw.check_paths([data] if isinstance(data, (str, os.PathLike)) else list(data))
        log = SkipLog()
        scored = 0
        scores_all: list[np.ndarray] = []
        labels_all: list[np.ndarray] = []
        bar = tqdm(desc="predict", unit="row", disable=not progress, leave=False)
        with atomic_open(out, "w", encoding="utf-8") as f:  # streamed: one batch's lines at a time
            for batch in self.batches(paths, batch_size, log):
                out_t = self(*batch.inputs)
                if self.kind == "retrieval":
                    k = min(top_k, out_t.shape[1])
                    top = torch.topk(out_t, k, dim=1)
                    lines = [f"{user}\t{','.join(map(str, items))}\t{','.join(f'{s:.6g}' for s in scores)}"
                             for user, items, scores in zip(batch.keys, top.indices.tolist(), top.values.tolist())]
                else:
                    prob = torch.sigmoid(out_t).numpy()
                    scores_all.append(prob)
                    if batch.labels is not None:
                        labels_all.append(batch.labels)
                        lines = [f"{key}\t{p:.6g}\t{y:g}" for key, p, y in zip(batch.keys, prob, batch.labels)]
                    else:
                        lines = [f"{key}\t{p:.6g}" for key, p in zip(batch.keys, prob)]
                f.write("".join(line + "\n" for line in lines))
                scored += len(lines)
                bar.update(len(batch.keys))
        bar.close()
        result: dict[str, Any] = {"rows_read": log.rows_read, "scored": scored, "skipped": log.skipped,
                                  "examples": list(log.examples), "summary": log.summary()}
        if labels_all and sum(len(y) for y in labels_all) == scored:
            from recsys_emb.metrics import roc_auc

            value = roc_auc(torch.from_numpy(np.concatenate(scores_all)), torch.from_numpy(np.concatenate(labels_all)))
            if not math.isnan(value):  # both classes present
                result["auc"] = value
        return result

