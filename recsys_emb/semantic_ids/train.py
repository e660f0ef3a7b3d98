"""Training, assignment, save and load of the RQ-VAE (see rqvae.py for the model and its paper).

Training: AdamW over shuffled mini-batches of item vectors. Before the first step each level's
codebook is initialised by k-means on that level's residuals of the first batch. During an epoch the
codes each level uses are counted; at the epoch end unused ("dead") codes are re-seeded with random
residuals of a random batch at that level. Codebook collapse (a level using fewer than
``collapse_threshold`` of its codes after the reset) is reported in the history and warned about.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from recsys_emb.console import tqdm

from recsys_emb.config.io import from_dict
from recsys_emb.semantic_ids.codes import SemanticIds, code_metrics
from recsys_emb.semantic_ids.config import RQVAEConfig, RQVAETrainConfig
from recsys_emb.semantic_ids.rqvae import RQVAE, residual_quantize
from recsys_emb.utils import atomic_write_bytes


def train_rqvae(
    x: np.ndarray | torch.Tensor,
    config: RQVAEConfig,
    train: RQVAETrainConfig,
    model: RQVAE | None = None,
) -> tuple[RQVAE, list[dict]]:
    """Train an RQ-VAE on item vectors ``x`` (N, D) -> (model, per-epoch history).

    History rows: ``epoch, loss, recon, codebook, commitment, dead_codes_reset`` (per level),
    ``usage`` (per level, share of codes used over the epoch) and ``collapsed_levels``.
    """
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"RQ-VAE training needs a non-empty (items, dim) matrix, got shape {tuple(x.shape)}")
    torch.manual_seed(train.seed)
    gen = torch.Generator().manual_seed(train.seed)
    if model is None:
        model = RQVAE(x.shape[1], config)
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    n = x.shape[0]
    bs = min(train.batch_size, n)
    history: list[dict] = []
    model.train()
    bar = tqdm(range(train.epochs), desc="rq-vae", unit="epoch", disable=not train.progress)
    for epoch in bar:
        perm = torch.randperm(n, generator=gen)
        used = torch.zeros(model.num_levels, model.codebook_size, dtype=torch.long)
        sums = {"loss": 0.0, "recon": 0.0, "codebook": 0.0, "commitment": 0.0}
        steps = 0
        for start in range(0, n, bs):
            batch = x[perm[start:start + bs]]
            if train.kmeans_init and not bool(model.initialized):
                model.init_codebooks_kmeans(batch, train.kmeans_iters, gen)
            out = model(batch)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            for lvl in range(model.num_levels):
                used[lvl] += torch.bincount(out.codes[:, lvl], minlength=model.codebook_size)
            for key, val in (("loss", out.loss), ("recon", out.recon_loss), ("codebook", out.codebook_loss),
                             ("commitment", out.commitment_loss)):
                sums[key] += float(val.detach())
            steps += 1
        row: dict = {"epoch": epoch, **{k: v / steps for k, v in sums.items()}}
        row["usage"] = [float((used[lvl] > 0).float().mean()) for lvl in range(model.num_levels)]
        resets = [0] * model.num_levels
        if train.reset_dead_codes and epoch < train.epochs - 1:
            with torch.no_grad():
                sample = x[torch.randperm(n, generator=gen)[:bs]]
                _, _, residuals = residual_quantize(model.encoder(sample), model.codebooks)
                for lvl in range(model.num_levels):
                    resets[lvl] = model.reset_codes(lvl, used[lvl] == 0, residuals[lvl], gen)
        row["dead_codes_reset"] = resets
        row["collapsed_levels"] = [lvl for lvl, u in enumerate(row["usage"]) if u < train.collapse_threshold]
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", recon=f"{row['recon']:.4f}", usage=[round(u, 2) for u in row["usage"]])
    if history and history[-1]["collapsed_levels"]:
        warnings.warn(
            f"RQ-VAE codebook collapse: levels {history[-1]['collapsed_levels']} use fewer than "
            f"{train.collapse_threshold:.0%} of their {model.codebook_size} codes (usage {history[-1]['usage']}); "
            "try a smaller codebook_size, more epochs, or a lower lr",
            stacklevel=2,
        )
    model.eval()
    return model, history


@torch.no_grad()
def evaluate_rqvae(model: RQVAE, x: np.ndarray | torch.Tensor) -> dict:
    """Reconstruction error and code metrics of ``model`` on ``x`` (N, D) (codes without suffix)."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    model.eval()
    out = model(x)
    metrics = code_metrics(out.codes.numpy(), [model.codebook_size] * model.num_levels)
    metrics["recon_mse"] = float(out.recon_loss)
    metrics["quantization_mse"] = float(((out.z - out.z_q) ** 2).mean())
    return metrics


def assign_ids(model: RQVAE, x: np.ndarray | torch.Tensor, keys: list[str]) -> SemanticIds:
    """Unique semantic IDs (RQ-VAE codes + collision suffix) of items ``keys`` with vectors ``x``."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if x.shape[0] != len(keys):
        raise ValueError(f"{x.shape[0]} vectors but {len(keys)} item keys")
    if x.shape[1] != model.input_dim:
        raise ValueError(f"vectors have dim {x.shape[1]} but the RQ-VAE was trained on dim {model.input_dim}")
    return SemanticIds.from_codes(keys, model.encode(x).numpy(), model.codebook_size)


def save_rqvae(model: RQVAE, path: str | Path) -> None:
    """Weights + config in one file (atomic); load with :func:`load_rqvae` (``weights_only=True``)."""
    payload = {
        "format_version": 1,
        "input_dim": model.input_dim,
        "config": asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_rqvae(path: str | Path) -> RQVAE:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"RQ-VAE file not found: {p} (write one with `recsys-emb sid train`)")
    payload = torch.load(p, map_location="cpu", weights_only=True)
    model = RQVAE(int(payload["input_dim"]), from_dict(RQVAEConfig, payload["config"], where=str(p)))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model
