"""DIN: Deep Interest Network (Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018).

What it does: the user's behaviours (a jagged history of item, category and recency-position ids) are
weighted by a LOCAL ACTIVATION UNIT, an MLP over ``[q, k, q - k, q * k]`` for the target (query) ``q``
and every behaviour (key) ``k``; the weighted sum of the behaviours, concatenated with the target, goes
through an MLP to a click logit.

Faithful to the paper:

* the activation weights are NOT normalised (the paper keeps the intensity of the user interest);
  ``softmax=True`` gives the reference code's softmax over each user's behaviours instead;
* Dice (Sec. 4.3): ``p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps))``, ``f(s) = p(s) s + (1 - p(s)) alpha s``
  with mini-batch statistics in training and running (moving-average) statistics at inference; PReLU is
  the alternative (``activation: prelu``);
* mini-batch-aware L2 regularisation (Sec. 4.2): per mini-batch, ``lambda/2 * sum_j ||w_j||^2 / n_j``
  over only the embedding rows ``j`` that occur in the batch, where ``n_j`` is the row's number of
  occurrences in the training set (``SequenceDataset.feature_frequencies()``); its gradient is
  ``lambda * w_j / n_j`` for those rows and 0 for all others. It is computed from the looked-up
  embeddings (one per distinct id), so it works with sharded tables and fused optimizers;
* GAUC / RelaImpr: recsys_emb/train/ranking_metrics.py.

Deviations: user-profile / context features are the optional pooled side features (the user id and
the target item's attribute bag on our data sets) concatenated to the MLP input; the behaviour and target tokens also carry a
recency-position embedding (target position 0), and the MLP has no input BatchNorm. The histories
stay jagged end to end: the activation unit runs on the ``(N, .)`` values of the behaviours (``N`` =
total history length of the batch) and pooling is a segment sum. With ``dare`` in the embedding spec
the activation unit sees the attention embeddings and the pooled values / target representation come
from the representation embeddings (tied = plain DIN). Every table comes from the embedding spec
(recsys_emb/models/sequence.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm.jagged_softmax)
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recsys_emb.modules.tracing import assert_all, fx_tracing, tracing

ACTIVATIONS = ("dice", "prelu", "relu", "sigmoid")


@dataclass
class DINConfig:
    """DIN options (the embedding layout is set in ``SequenceModelConfig``)."""

    attention_hidden: list[int] = field(default_factory=lambda: [80, 40])  # local activation unit MLP
    attention_activation: str = "dice"  # dice | prelu | relu | sigmoid
    softmax: bool = False  # normalise the activation weights per user (reference code); paper: False
    mlp: list[int] = field(default_factory=lambda: [200, 80])  # hidden layers of the output MLP
    mlp_activation: str = "dice"  # dice | prelu | relu | sigmoid
    dice_momentum: float = 0.01  # weight of the batch in Dice's running statistics
    dice_eps: float = 1e-8  # epsilon of Dice's normalisation
    mba_lambda: float = 0.0  # mini-batch-aware L2 strength (0 = off)

    def __post_init__(self) -> None:
        for name in ("attention_activation", "mlp_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"din.{name} must be one of {list(ACTIVATIONS)}, got '{getattr(self, name)}'")
        if not 0.0 < self.dice_momentum <= 1.0:
            raise ValueError(f"din.dice_momentum must be in (0, 1], got {self.dice_momentum}")
        if self.mba_lambda < 0:
            raise ValueError(f"din.mba_lambda must be >= 0, got {self.mba_lambda}")


class Dice(nn.Module):
    """Data-adaptive activation (DIN Sec. 4.3), per feature, on ``(R, F)`` inputs.

    Training: normalises with the batch mean and (biased) variance and updates the running statistics
    ``running = (1 - momentum) * running + momentum * batch`` (unbiased variance). Eval: uses the
    running statistics. An empty batch passes through; one row gives ``p = 1/2``.

    Args:
        num_features: F.
        momentum: weight of each batch in the running statistics.
        eps: added to the variance.
    """

    def __init__(self, num_features: int, momentum: float = 0.01, eps: float = 1e-8) -> None:
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.alpha = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] > 0:
            mean = x.mean(0)  # (F,)
            var = x.var(0, unbiased=False)  # (F,)
            with torch.no_grad():
                unbiased = x.var(0, unbiased=True) if x.shape[0] > 1 else var
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        p = torch.sigmoid((x - mean) / torch.sqrt(var + self.eps))  # (R, F)
        return p * x + (1 - p) * self.alpha * x


def make_activation(name: str, num_features: int, dice_momentum: float = 0.01, dice_eps: float = 1e-8) -> nn.Module:
    if name == "dice":
        return Dice(num_features, dice_momentum, dice_eps)
    if name == "prelu":
        return nn.PReLU(num_features, init=0.25)
    if name == "relu":
        return nn.ReLU()
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown activation '{name}' (choose from {list(ACTIVATIONS)})")


class ActivationMLP(nn.Sequential):
    """``Linear -> activation`` per hidden layer, then a final ``Linear`` to ``out_dim``."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, activation: str, dice_momentum: float = 0.01, dice_eps: float = 1e-8) -> None:
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), make_activation(activation, width, dice_momentum, dice_eps)]
            in_dim = width
        layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)


# ----------------------------------------------------------------------------------- jagged helpers


def segment_ids(lengths: Tensor, total: int | None = None) -> Tensor:
    """(N,) row index of every jagged value: ``[0]*lengths[0] + [1]*lengths[1] + ...``.

    ``total`` = N (``lengths.sum()``) when the caller knows it from a shape: the output size is then not
    read from the data (no device-to-host sync; under ``torch.export`` the size is data-dependent).
    """
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths.long(), output_size=total)


def jagged_softmax(logits: Tensor, lengths: Tensor) -> Tensor:
    """Softmax of ``(N,)`` logits within each jagged row (FBGEMM's kernel for float32; else torch segment ops).

    Traced (``torch.export``), always the torch segment ops: FBGEMM's kernel takes the longest row as a
    plain ``int``, which is data-dependent there.
    """
    if tracing():
        return _segment_softmax(logits, lengths.long())
    return _kernel_softmax(logits, lengths)


@torch.fx.wrap
def _kernel_softmax(logits: Tensor, lengths: Tensor) -> Tensor:
    """:func:`jagged_softmax` eager: FBGEMM's kernel (it takes the longest row as an ``int``) for float32.

    fx-wrapped with a TorchScript body: the TorchScript export records one call and the scripted program
    runs the same kernel (and the same empty-batch shortcut) as eager."""
    if logits.numel() == 0:
        return logits
    lengths = lengths.long()
    if logits.dtype == torch.float32:
        offsets = torch.zeros(lengths.numel() + 1, dtype=torch.long, device=lengths.device)
        offsets[1:] = torch.cumsum(lengths, 0)
        out, _ = torch.ops.fbgemm.jagged_softmax(logits.unsqueeze(1), offsets, int(lengths.max()))
        return out.squeeze(1)
    return _segment_softmax(logits, lengths)


def _segment_softmax(logits: Tensor, lengths: Tensor) -> Tensor:
    """Softmax of ``(N,)`` logits within each row of int64 ``lengths``, by torch segment ops."""
    seg = segment_ids(lengths, logits.shape[0])
    peak = torch.full((lengths.numel(),), -torch.inf, dtype=logits.dtype, device=logits.device)
    peak = peak.scatter_reduce(0, seg, logits.detach(), "amax")  # softmax is shift invariant: no gradient needed
    e = torch.exp(logits - peak[seg])
    total = torch.zeros(lengths.numel(), dtype=logits.dtype, device=logits.device).index_add(0, seg, e)
    return e / total[seg]


def jagged_weighted_sum(weights: Tensor, values: Tensor, lengths: Tensor) -> Tensor:
    """``out[b] = sum_i weights_i values_i`` over row ``b``'s values: (N,), (N, D) -> (B, D); empty rows give 0."""
    seg = segment_ids(lengths, values.shape[0])
    out = values.new_zeros([lengths.numel(), values.shape[1]])  # (B, D)
    return out.index_add(0, seg, weights.unsqueeze(1) * values)


def sequence_tokens(embeddings: Mapping[str, JaggedTensor], fields: Mapping[str, tuple[str, str]]) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate the fields' embeddings into behaviour and target tokens.

    Args:
        embeddings: KJT key -> JaggedTensor of its looked-up rows.
        fields: field -> (history key, target key), in token order.

    Returns:
        ``(behaviours (N, E), lengths (B,), targets (B, E))``, E = the sum of the fields' dims.
    """
    if tracing():
        return _traced_sequence_tokens(embeddings, fields)
    hist = [embeddings[h] for h, _ in fields.values()]
    lengths = hist[0].lengths()
    behaviours = torch.cat([jt.values() for jt in hist], dim=1)  # (N, E)
    targets = torch.cat([embeddings[t].values() for _, t in fields.values()], dim=1)  # (B, E)
    if fx_tracing():  # TorchScript: the scripted program checks every batch
        torch._assert(targets.shape[0] == lengths.numel(), "every example needs exactly one target id per feature")
    elif targets.shape[0] != lengths.numel():
        raise ValueError(f"every example needs exactly one target id per feature: {targets.shape[0]} targets for {lengths.numel()} rows")
    return behaviours, lengths, targets


def _traced_sequence_tokens(embeddings: Mapping[str, JaggedTensor], fields: Mapping[str, tuple[str, str]]) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`sequence_tokens` while traced (torch.export): the value counts are data-dependent there.

    The histories are asserted parallel (as many values each: the tracer then knows the shapes match).
    The targets are asserted one per example (runtime assert on their lengths) and their ``B`` rows are
    selected by index: equating the data-dependent count with the batch size instead would make the
    tracer assume ``B >= 2`` (it specialises the sizes 0 and 1 of a dynamic batch dim).
    """
    hist = [embeddings[h] for h, _ in fields.values()]
    lengths = hist[0].lengths()  # (B,)
    rows = torch.arange(lengths.numel(), device=lengths.device)  # (B,)
    for (h, t), jt in zip(fields.values(), hist):
        torch._check(jt.values().shape[0] == hist[0].values().shape[0], lambda h=h: f"history {h!r}: another length than the first field's")
        assert_all(embeddings[t].lengths() == 1, f"every example needs exactly one target id per feature ({t!r})")
    behaviours = torch.cat([jt.values() for jt in hist], dim=1)  # (N, E)
    targets = torch.cat([embeddings[t].values().index_select(0, rows) for _, t in fields.values()], dim=1)  # (B, E)
    return behaviours, lengths, targets


# ----------------------------------------------------------------------------------- MBA regulariser


class MiniBatchAwareL2(nn.Module):
    """``lambda/2 * sum_{j in batch} ||w_j||^2 / n_j`` per table, from the looked-up rows (DIN Sec. 4.2).

    Args:
        frequencies: field -> (rows,) training-set occurrence counts ``n_j`` (clamped to >= 1).
        lam: lambda.
        fields: field -> its KJT keys (history, target), the fields whose tables are regularised.
    """

    def __init__(self, frequencies: Mapping[str, Tensor], lam: float, fields: Mapping[str, Sequence[str]]) -> None:
        super().__init__()
        self.lam = lam
        self.fields = {f: list(keys) for f, keys in fields.items()}
        self.groups = list(self.fields)
        for g in self.groups:
            self.register_buffer(f"inv_freq_{g}", 1.0 / torch.as_tensor(frequencies[g], dtype=torch.float32).clamp(min=1.0), persistent=False)

    def forward(self, features: KeyedJaggedTensor, embeddings: Mapping[str, JaggedTensor],
                fields: Sequence[str] | None = None) -> Tensor:
        """The penalty of the rows looked up for ``fields`` (default: every regularised field)."""
        total = torch.zeros((), device=features.values().device)
        for g in self.groups if fields is None else [f for f in self.groups if f in fields]:
            keys = self.fields[g]
            ids = torch.cat([features[k].values() for k in keys]).long()  # (M,)
            rows = torch.cat([embeddings[k].values() for k in keys])  # (M, D)
            if ids.numel() == 0:
                continue
            uniq, inverse = torch.unique(ids, return_inverse=True)
            first = torch.full((uniq.numel(),), ids.numel(), dtype=torch.long, device=ids.device)
            first = first.scatter_reduce(0, inverse, torch.arange(ids.numel(), device=ids.device), "amin")
            inv_freq = getattr(self, f"inv_freq_{g}")[uniq]  # (U,)
            total = total + 0.5 * self.lam * (rows[first].pow(2).sum(1) * inv_freq.to(rows.dtype)).sum()
        return total


# ----------------------------------------------------------------------------------- the model


class LocalActivationUnit(nn.Module):
    """``a(q, k) = MLP([q, k, q - k, q * k])``: (N, E), (N, E) -> (N,) unnormalised weights."""

    def __init__(self, dim: int, hidden: Sequence[int], activation: str, dice_momentum: float = 0.01, dice_eps: float = 1e-8) -> None:
        super().__init__()
        self.mlp = ActivationMLP(4 * dim, hidden, 1, activation, dice_momentum, dice_eps)

    def forward(self, query: Tensor, keys: Tensor) -> Tensor:
        return self.mlp(torch.cat([query, keys, query - keys, query * keys], dim=1)).squeeze(1)


class DIN(nn.Module):
    """DIN over jagged behaviour sequences: ``forward(kjt) -> logits (B,)``.

    Shapes: B examples, N = total history length in the batch, E_a / E_r = token dims of the attention /
    representation embeddings (the sum of the fields' dims; equal and shared for plain DIN), S = the
    side features' width (0 without side features).

    Args:
        embedding: a :class:`recsys_emb.models.sequence.SequenceEmbedding` (its ``fields`` form the token;
            tied roles = plain DIN, ``dare`` = DIN + DARE; side features are concatenated to the MLP input).
        config: DIN options.
        frequencies: per field training-set row counts (needed when ``config.mba_lambda > 0``).

    Example::

        emb = build_sequence_embedding(model_cfg, spec, facts)   # recsys_emb/models/sequence.py
        model = DIN(emb, DINConfig())
        logits = model(batch.sparse_features)  # (B,)
    """

    def __init__(self, embedding: nn.Module, config: DINConfig, frequencies: Mapping[str, Tensor] | None = None) -> None:
        super().__init__()
        self.embedding = embedding
        self.fields = dict(embedding.fields)
        self.config = config
        att_dim, rep_dim = embedding.attention_dim, embedding.representation_dim
        self.activation_unit = LocalActivationUnit(att_dim, config.attention_hidden, config.attention_activation, config.dice_momentum, config.dice_eps)
        self.mlp = ActivationMLP(2 * rep_dim + embedding.side_dim, config.mlp, 1, config.mlp_activation, config.dice_momentum, config.dice_eps)
        self.mba: MiniBatchAwareL2 | None = None
        if config.mba_lambda > 0:
            if frequencies is None:
                raise ValueError("din.mba_lambda > 0 needs the training-set frequencies n_j (SequenceDataset.feature_frequencies())")
            self.mba = MiniBatchAwareL2(frequencies, config.mba_lambda, self.fields)
        self._last: tuple[KeyedJaggedTensor, dict, dict] | None = None

    def forward(self, features: KeyedJaggedTensor) -> Tensor:
        att, rep, side = self.embedding(features)
        keys, lengths, query = sequence_tokens(att, self.fields)  # (N, E_a), (B,), (B, E_a)
        values, _, target = sequence_tokens(rep, self.fields) if rep is not att else (keys, lengths, query)
        seg = segment_ids(lengths, keys.shape[0])  # (N,)
        weights = self.activation_unit(query[seg], keys)  # (N,)
        if self.config.softmax:
            weights = jagged_softmax(weights, lengths)
        interest = jagged_weighted_sum(weights, values, lengths)  # (B, E_r)
        self._last = (features, att, rep) if self.training else None
        parts = [interest, target] if side is None else [interest, target, side]
        return self.mlp(torch.cat(parts, dim=1)).squeeze(1)  # (B,)

    def aux_loss(self, labels: Tensor | None = None) -> Tensor | None:
        """The mini-batch-aware L2 penalty of the last training forward (None when off or in eval)."""
        if self.mba is None or self._last is None:
            return None
        features, att, rep = self._last
        penalty = self.mba(features, att)
        # fields with their own representation tables (dare); the others' one table is penalised once
        own = [f for f, (h, _) in self.fields.items() if rep[h] is not att[h]]
        if own:
            penalty = penalty + self.mba(features, rep, own)
        return penalty


def bce(logits: Tensor, labels: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
