"""The DNIS bi-level search (Cheng et al. 2020 / AutoSrh), as in the authors' code.

1. warm start: ``warmup_steps`` ordinary training steps (tables + dense network, alpha fixed at 1);
2. search: ``search_steps`` times, a WEIGHT step on a training batch (embedding tables only: the
   dense network is frozen and alpha gets no gradient) then an ALPHA step on a validation batch with
   loss ``BCE + l1 * sum|alpha|``; the alpha gradient is normalised per row (block) by its mean
   absolute value, ``alpha -= alpha_lr * g_normalised``, and alpha is clamped to [0, 1];
3. prune: a threshold ``t`` on ``|alpha * E|`` found by binary search so that the target fraction of
   embedding values is pruned (``prune_by: entry``), or of whole (block, dim) columns weighted by
   their rows (``prune_by: column``, a column survives when any of its entries reaches ``t``: the
   structure real tables can drop);
4. ``derive_tables`` + retrain with alpha folded into the fixed compact tables (see search/cli.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from recsys_emb.console import tqdm

from recsys_emb.modules.dnis import DNISEmbeddingBagCollection, DNISSearchConfig
from recsys_emb.search.common import SearchSetup, make_optimizer, set_trainable
from recsys_emb.utils import log

EPS = 1e-12


def normalise_rows(grad: Tensor) -> Tensor:
    """``g / mean(|g|)`` per row (L, D) -> each row has mean |g| == 1 (an all-zero row stays zero)."""
    scale = grad.abs().mean(dim=1, keepdim=True)  # (L, 1)
    return torch.where(scale > EPS, grad / scale.clamp_min(EPS), torch.zeros_like(grad))


@torch.no_grad()
def masked_values(module: DNISEmbeddingBagCollection) -> dict[str, Tensor]:
    """Per feature the (V, D) values ``|alpha[block(i)] * E[i]|`` the pruning ranks."""
    alphas = module.alphas()
    return {f: (module.table_weight(f).detach() * alphas[f].detach()[module.block_of(f)]).abs() for f in module.features}


def _binary_search(pruned_fraction: Callable[[float], float], hi: float, target: float, iters: int = 60) -> float:
    """Smallest threshold t in [0, hi] whose pruned fraction (values < t) reaches ``target``."""
    lo = 0.0
    if pruned_fraction(lo) >= target:
        return lo
    for _ in range(iters):
        mid = (lo + hi) / 2
        if pruned_fraction(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi


@torch.no_grad()
def prune_masks(module: DNISEmbeddingBagCollection, target: float, by: str = "entry") -> tuple[dict[str, Tensor], float]:
    """Keep-masks (V, D) per feature pruning ``target`` of the embedding values, and the threshold.

    ``entry``: values ``|alpha * E| < t`` are pruned. ``column``: a (block, dim) column is pruned when
    all its values are ``< t``; the pruned fraction counts the column's rows.
    """
    values = masked_values(module)
    if by == "entry":
        flat = torch.cat([v.flatten() for v in values.values()])
        total = flat.numel()
        t = _binary_search(lambda th: float((flat < th).sum()) / total, float(flat.max()) * (1 + 1e-6) + EPS, target)
        return {f: v >= t for f, v in values.items()}, t
    # column scores: max |alpha E| over the rows of each block, weighted by the block's row count
    scores, weights = [], []
    for f, v in values.items():
        blocks = module.block_of(f)
        for b in range(module.num_blocks):
            rows = v[blocks == b]  # (n_b, D)
            if rows.numel():
                scores.append(rows.max(dim=0).values)
                weights.append(torch.full((v.shape[1],), float(rows.shape[0])))
    score, weight = torch.cat(scores), torch.cat(weights)
    total = float(weight.sum())
    t = _binary_search(lambda th: float(weight[score < th].sum()) / total, float(score.max()) * (1 + 1e-6) + EPS, target)
    masks = {}
    for f, v in values.items():
        blocks = module.block_of(f)
        keep = torch.zeros_like(v, dtype=torch.bool)
        for b in range(module.num_blocks):
            sel = blocks == b
            if bool(sel.any()):
                keep[sel] = (v[sel].max(dim=0).values >= t).unsqueeze(0).expand(int(sel.sum()), -1)
        masks[f] = keep
    return masks, t


def alpha_step(setup: SearchSetup, batch: Any, l1: float, lr: float) -> float:
    """One validation-batch alpha step (normalised gradient, clamp to [0, 1]); returns the loss."""
    module: DNISEmbeddingBagCollection = setup.embedding
    alphas = module.alphas()
    set_trainable(setup.table_params, False)
    set_trainable(setup.dense_params, False)
    set_trainable(setup.technique_params, True)
    for a in alphas.values():
        a.grad = None
    loss, _ = setup.model(batch)
    loss = loss + l1 * sum(a.abs().sum() for a in alphas.values())
    loss.backward()
    with torch.no_grad():
        for a in alphas.values():
            if a.grad is not None:
                a.sub_(lr * normalise_rows(a.grad))
                a.clamp_(0.0, 1.0)
                a.grad = None
    return float(loss.detach())


def weight_step(setup: SearchSetup, batch: Any, optimizer: torch.optim.Optimizer) -> float:
    """One training-batch step of the embedding tables only (dense frozen, alpha gets no gradient)."""
    set_trainable(setup.table_params, True)
    set_trainable(setup.dense_params, False)
    set_trainable(setup.technique_params, False)
    optimizer.zero_grad()
    loss, _ = setup.model(batch)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def warmup(setup: SearchSetup, steps: int, tables_opt: torch.optim.Optimizer, dense_opt: torch.optim.Optimizer, first: int = 0,
           progress: bool = True, on_step: Callable[[int], None] | None = None) -> None:
    """Plain training (tables + dense, alpha fixed) for ``steps - first`` steps."""
    set_trainable(setup.table_params, True)
    set_trainable(setup.dense_params, True)
    set_trainable(setup.technique_params, False)
    data = setup.train_batches(first)
    for step in tqdm(range(first, steps), desc="dnis warm-up", disable=not progress, leave=False):
        tables_opt.zero_grad()
        dense_opt.zero_grad()
        loss, _ = setup.model(next(data))
        loss.backward()
        tables_opt.step()
        dense_opt.step()
        if on_step is not None:
            on_step(step + 1)


def search(
    setup: SearchSetup,
    sc: DNISSearchConfig,
    tables_opt: torch.optim.Optimizer,
    first: int = 0,
    writer: Any = None,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> None:
    """``sc.search_steps - first`` (weight step, alpha step) pairs; TensorBoard curves of alpha."""
    module: DNISEmbeddingBagCollection = setup.embedding
    train_it, valid_it = setup.train_batches(first, salt=1), setup.valid_batches(first)
    bar = tqdm(range(first, sc.search_steps), desc="dnis search", disable=not progress, leave=False)
    for step in bar:
        w_loss = weight_step(setup, next(train_it), tables_opt)
        a_loss = alpha_step(setup, next(valid_it), sc.l1, sc.alpha_lr)
        if writer is not None and (step + 1) % max(1, setup.cfg.train.log_every_steps) == 0:
            flat = torch.cat([a.detach().flatten() for a in module.alphas().values()])
            writer.add_scalar("search/weight_loss", w_loss, step + 1)
            writer.add_scalar("search/alpha_loss", a_loss, step + 1)
            writer.add_scalar("search/alpha_mean", float(flat.mean()), step + 1)
            writer.add_scalar("search/alpha_zero_fraction", float((flat == 0).float().mean()), step + 1)
            bar.set_postfix(alpha_mean=f"{float(flat.mean()):.3f}", zero=f"{float((flat == 0).float().mean()):.2f}")
        if on_step is not None:
            on_step(step + 1)


def run(setup: SearchSetup, sc: DNISSearchConfig, state: dict[str, Any] | None = None, writer: Any = None,
        progress: bool = True, checkpoint: Callable[[dict[str, Any]], None] | None = None, every: int = 0) -> dict[str, Any]:
    """Warm-up + search + prune (resumable from ``state``); returns a report and leaves masks set."""
    tables_opt = make_optimizer(list(setup.table_params.values()), setup.cfg.train.embedding_optimizer)
    dense_opt = make_optimizer(list(setup.dense_params.values()), setup.cfg.train.dense_optimizer)
    phase, done = "warmup", 0
    if state is not None:
        setup.model.load_state_dict(state["model"])
        tables_opt.load_state_dict(state["tables_opt"])
        dense_opt.load_state_dict(state["dense_opt"])
        phase, done = state["phase"], int(state["step"])
        log(f"[search] resumed DNIS at {phase} step {done}")

    def snapshot(ph: str) -> Callable[[int], None]:
        def hook(step: int) -> None:
            if checkpoint is not None and every and step % every == 0:
                checkpoint({"phase": ph, "step": step, "model": setup.model.state_dict(),
                            "tables_opt": tables_opt.state_dict(), "dense_opt": dense_opt.state_dict()})
        return hook

    if phase == "warmup":
        warmup(setup, sc.warmup_steps, tables_opt, dense_opt, done, progress, snapshot("warmup"))
        phase, done = "search", 0
    search(setup, sc, tables_opt, done, writer, progress, snapshot("search"))
    set_trainable(setup.table_params, True)
    set_trainable(setup.dense_params, True)
    set_trainable(setup.technique_params, False)
    module: DNISEmbeddingBagCollection = setup.embedding
    module.set_entry_masks(None)
    searched = setup.evaluate("valid")
    masks, threshold = prune_masks(module, sc.target_compression, sc.prune_by)
    module.set_entry_masks(masks)
    pruned = setup.evaluate("valid")
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    alphas = {f: a.detach().tolist() for f, a in module.alphas().items()}
    log(f"[search] DNIS: threshold {threshold:.3g} keeps {kept}/{total} values; valid auc {searched['auc']:.5f} -> {pruned['auc']:.5f}")
    return {"threshold": threshold, "kept_values": kept, "total_values": total, "valid_searched": searched,
            "valid_pruned": pruned, "alpha": alphas}
