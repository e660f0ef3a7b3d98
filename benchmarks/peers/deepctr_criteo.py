"""DeepCTR-Torch side of benchmarks/ctr_peers.py: train its CTR models on the SAME prepared arrays.

Runs under the peer venv (benchmarks/peers/setup_deepctr.sh), never under the project's: it imports
only torch, numpy, scikit-learn and deepctr_torch. The input is an ``.npz`` written by
benchmarks/ctr_peers.py from the project's prepared splits (so both sides see identical features:
dense ``log1p(max(x, 0))`` (missing = 0), categorical ids from a min-count vocabulary fitted on the
training rows, 0 = missing, 1 = OOV). Keys: ``{train,valid,test}_{dense,sparse,labels}``,
``vocab_sizes``, ``dense_names``, ``sparse_names``.

Models (DeepCTR-Torch 0.3.0, documented defaults unless stated):

- ``dcnv2``: ``DCN(cross_parameterization="matrix")`` (DCN-M = DCN-V2, full-rank cross; parallel
  cross + DNN (128, 128), cross_num 2);
- ``dcnmix``: ``DCNMix`` (DCN-V2's low-rank mixture of experts: low_rank 32, 4 experts);
- ``deepfm``: ``DeepFM`` (DNN (256, 128));
- ``lr``: DeepCTR-Torch has no LR model: its linear (wide) part alone (``BaseModel.linear_model``:
  one weight per id + a linear term on dense features + bias, the ``WDL`` wide side), same init/L2;
- DLRM: DeepCTR-Torch has none (its ``PNN`` rejects dense features); ctr_peers.py compares our DLRM
  with the best peer model.

Training: ``model.compile("adam", "binary_crossentropy", metrics=["auc"])`` (Adam lr 1e-3, the
library default), batch 256 (its default), embedding dim 16, at most ``--epochs`` epochs, validation
AUC after every epoch, early stopping after ``--patience`` epochs without a gain, and the weights of
the best validation epoch restored before the test split is scored (exact AUC, logloss).

    /work/peers_venv/bin/python benchmarks/peers/deepctr_criteo.py --data SPLITS.npz --model dcnv2 --seed 0 --out R.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import types

# deepctr_torch queries PyPI for its latest version in a thread at import time; benchmarks stay offline.
sys.modules.setdefault("requests", types.ModuleType("requests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import log_loss, roc_auc_score  # noqa: E402

import deepctr_torch  # noqa: E402
from deepctr_torch.callbacks import Callback, EarlyStopping  # noqa: E402
from deepctr_torch.inputs import DenseFeat, SparseFeat  # noqa: E402
from deepctr_torch.models import DCN, DCNMix, DeepFM  # noqa: E402
from deepctr_torch.models.basemodel import BaseModel  # noqa: E402

MODELS = ("dcnv2", "dcnmix", "deepfm", "lr")


class LinearOnly(BaseModel):
    """DeepCTR-Torch's linear (wide) part on its own: logistic regression with its init and L2."""

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.out(self.linear_model(X))


class KeepBest(Callback):
    """Keeps the weights of the best validation AUC; ``restore()`` loads them (EarlyStopping's own restore
    only acts when it stops the run, not when the epoch budget ends it)."""

    def __init__(self) -> None:
        super().__init__()
        self.best, self.best_epoch, self.state, self.history = -np.inf, None, None, []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        auc = (logs or {}).get("val_auc")
        self.history.append({"epoch": epoch + 1, "val_auc": auc, "loss": (logs or {}).get("loss")})
        if auc is not None and auc > self.best:
            self.best, self.best_epoch, self.state = auc, epoch + 1, copy.deepcopy(self.model.state_dict())

    def restore(self) -> None:
        if self.state is not None:
            self.model.load_state_dict(self.state)


def inputs(arrays: dict, split: str, dense_names: list[str], sparse_names: list[str]) -> dict[str, np.ndarray]:
    dense, sparse = arrays[f"{split}_dense"], arrays[f"{split}_sparse"]
    x = {name: dense[:, i].astype(np.float32) for i, name in enumerate(dense_names)}
    x.update({name: sparse[:, i].astype(np.int64) for i, name in enumerate(sparse_names)})
    return x


def build(name: str, columns: list, seed: int) -> BaseModel:
    if name == "dcnv2":
        return DCN(columns, columns, cross_parameterization="matrix", seed=seed)
    if name == "dcnmix":
        return DCNMix(columns, columns, seed=seed)
    if name == "deepfm":
        return DeepFM(columns, columns, seed=seed)
    if name == "lr":
        return LinearOnly(columns, [], seed=seed)
    raise SystemExit(f"unknown model {name!r}; expected one of {MODELS}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help=".npz of the prepared splits (written by ctr_peers.py)")
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=15, help="epoch budget")
    p.add_argument("--patience", type=int, default=2, help="epochs without a validation-AUC gain before stopping")
    p.add_argument("--batch-size", type=int, default=256, help="DeepCTR-Torch's default")
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    arrays = dict(np.load(args.data, allow_pickle=False))
    dense_names = [str(n) for n in arrays["dense_names"]]
    sparse_names = [str(n) for n in arrays["sparse_names"]]
    columns = [SparseFeat(n, vocabulary_size=int(v), embedding_dim=args.embedding_dim)
               for n, v in zip(sparse_names, arrays["vocab_sizes"])]
    columns += [DenseFeat(n, 1) for n in dense_names]
    x = {s: inputs(arrays, s, dense_names, sparse_names) for s in ("train", "valid", "test")}
    y = {s: arrays[f"{s}_labels"].astype(np.float32) for s in ("train", "valid", "test")}

    model = build(args.model, columns, args.seed)
    model.compile("adam", "binary_crossentropy", metrics=["auc"])
    keep = KeepBest()
    stop = EarlyStopping(monitor="val_auc", mode="max", patience=args.patience)
    t0 = time.perf_counter()
    model.fit(x["train"], y["train"], batch_size=args.batch_size, epochs=args.epochs, verbose=0,
              validation_data=(x["valid"], y["valid"]), shuffle=True, callbacks=[keep, stop])
    seconds = time.perf_counter() - t0
    keep.restore()
    result = {"model": args.model, "seed": args.seed, "best_epoch": keep.best_epoch, "epochs_run": len(keep.history),
              "seconds": seconds, "history": keep.history, "deepctr_torch": deepctr_torch.__version__,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "settings": {"batch_size": args.batch_size, "epochs": args.epochs, "patience": args.patience,
                           "embedding_dim": args.embedding_dim, "optimizer": "adam lr 1e-3 (compile default)"}}
    for split in ("valid", "test"):
        pred = model.predict(x[split], 4096).reshape(-1)
        result[split] = {"auc": float(roc_auc_score(y[split], pred)), "logloss": float(log_loss(y[split], pred, labels=[0, 1])),
                         "rows": int(len(pred))}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("model", "seed", "best_epoch", "valid", "test")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
