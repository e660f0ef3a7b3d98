"""Production inference: export a trained run to an artefact folder, and load / score it.

* :func:`export_run` / :func:`unshard` (:mod:`recsys_emb.inference.export`): training side; needs the
  training code and TorchRec.
* :class:`Predictor` (:mod:`recsys_emb.inference.predictor`): serving side; needs torch, fbgemm_gpu and
  ``recsys_emb.ops`` only. Importing this package imports neither side until a name is used.

See docs/serving.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ArtefactError", "Predictor", "export_run", "quantize_tables", "unshard"]

_WHERE = {
    "Predictor": "recsys_emb.inference.predictor", "ArtefactError": "recsys_emb.inference.manifest",
    "export_run": "recsys_emb.inference.export", "unshard": "recsys_emb.inference.export",
    "quantize_tables": "recsys_emb.inference.quantize",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'recsys_emb.inference' has no attribute {name!r}")
