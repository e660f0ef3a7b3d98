"""A two-stage long-sequence model (SIM / TWIN style): search the top-k behaviours, then target attention.

Papers: Pi et al., "Search-based User Interest Modeling with Lifelong Sequential Behavior Data" (SIM,
CIKM 2020); Chang et al., "TWIN: TWo-stage Interest Network for Lifelong User Behavior Modeling"
(KDD 2023); the embedding layout of Feng et al., DARE (2024), see recsys_emb/modules/dare.py.

1. Search stage: every behaviour ``i`` of a user is scored against the target with a scaled dot
   product of attention embeddings, ``s_i = <q_a, k_a,i> / sqrt(E_a)``, and the top ``k`` (default 20;
   all of them when the history is shorter) are kept. Jagged, no padding: only histories longer than
   ``k`` are sorted (two stable sorts over their scores).
2. Target attention over the kept behaviours: ``w = softmax(s)`` within each user (the same scores, as
   TWIN's consistency between the stages), ``h = sum_i w_i v_i`` with representation embeddings ``v``.
3. Target-aware representation ``[q_r, h, q_r * h]`` -> MLP -> logit.
4. Optional auxiliary head (``aux_weight > 0``): the same representation built from the ATTENTION
   embeddings, ``[q_a, h_a, q_a * h_a]`` with ``h_a = sum_i w_i k_a,i``, gets its own small MLP and a
   BCE loss weighted by ``aux_weight``. Our addition (not in the papers): it gives the attention
   tables a direct training signal besides the gradient through the weights.

Coupled (TWIN-like) = tied roles (no ``dare`` in the embedding spec); DARE = separate tables, possibly
with a smaller attention dim. Deviations from TWIN: no linear projections of the keys/queries, a single head,
and the search uses the learned attention embeddings (no separate offline index); ties in the scores
keep the earlier behaviour.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_emb.models.din import ACTIVATIONS, ActivationMLP, bce, jagged_softmax, jagged_weighted_sum, segment_ids, sequence_tokens
from recsys_emb.modules.tracing import tracing


@dataclass
class TwoStageConfig:
    """Options of the two-stage model (the embedding layout is set in ``SequenceModelConfig``)."""

    top_k: int = 20  # behaviours kept by the search stage
    mlp: list[int] = field(default_factory=lambda: [200, 80])  # hidden layers of the output MLP
    mlp_activation: str = "prelu"  # dice | prelu | relu | sigmoid
    aux_weight: float = 0.0  # > 0: auxiliary head on the attention embeddings with this loss weight
    aux_mlp: list[int] = field(default_factory=lambda: [64])  # hidden layers of the auxiliary head

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"two_stage.top_k must be >= 1, got {self.top_k}")
        if self.mlp_activation not in ACTIVATIONS:
            raise ValueError(f"two_stage.mlp_activation must be one of {list(ACTIVATIONS)}, got '{self.mlp_activation}'")
        if self.aux_weight < 0:
            raise ValueError(f"two_stage.aux_weight must be >= 0, got {self.aux_weight}")


@torch.fx.wrap  # TorchScript export: fx records one call, its (TorchScript) body runs per batch
def jagged_topk(scores: Tensor, lengths: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` values of every jagged row, without padding.

    Rows not longer than ``k`` keep everything without sorting; only the values of longer rows are
    ranked (two stable sorts: by score, then by row), so short histories cost nothing.

    Args:
        scores: (N,) scores of all rows' values, row-major.
        lengths: (B,) row lengths.
        k: how many to keep per row (rows shorter than ``k`` keep everything).

    Returns:
        ``(index (M,), new_lengths (B,))``: increasing indices into ``scores`` of the kept values (so
        grouped by row, in the original order within a row); ``new_lengths = min(lengths, k)``. Among
        equal scores the earlier value is kept.

    Traced (``torch.export``) the data-dependent shortcuts (empty batch, no long row) are not taken: the
    general path gives the same result there.
    """
    traced = tracing()
    lengths = lengths.long()
    kept = lengths.clamp(max=k)
    if not traced and scores.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device), kept
    seg = segment_ids(lengths, scores.shape[0])  # (N,)
    long_rows = lengths > k  # (B,)
    keep = ~long_rows[seg]  # (N,) values of short rows are all kept
    if traced or bool(long_rows.any()):
        candidates = torch.nonzero(~keep).squeeze(1)  # (N_long,) increasing
        by_score = torch.sort(scores.detach()[candidates], descending=True, stable=True).indices
        order = by_score[torch.sort(seg[candidates][by_score], stable=True).indices]  # by row, then score desc
        row = seg[candidates][order]
        long_lengths = torch.where(long_rows, lengths, torch.zeros_like(lengths))  # (B,)
        start_in_candidates = torch.cumsum(long_lengths, 0) - long_lengths  # (B,) first candidate of each long row
        rank = torch.arange(candidates.numel(), device=scores.device) - start_in_candidates[row]
        keep[candidates[order[rank < k]]] = True
    return torch.nonzero(keep).squeeze(1), kept


class TwoStageModel(nn.Module):
    """Search (top-k by scaled dot product) + target attention: ``forward(kjt) -> logits (B,)``.

    Shapes: B examples, N = total history length, M = kept behaviours (sum of ``min(len, k)``),
    E_a / E_r = token dims of the attention / representation embeddings (the sum of the fields' dims),
    S = the side features' width (0 without side features).

    Args:
        embedding: a :class:`recsys_emb.models.sequence.SequenceEmbedding` (tied roles = coupled TWIN-style
            model, ``dare`` = DARE; side features are concatenated to the MLP input).
        config: model options.

    Example::

        emb = build_sequence_embedding(model_cfg, spec, facts)   # recsys_emb/models/sequence.py
        model = TwoStageModel(emb, TwoStageConfig())
        logits = model(batch.sparse_features)  # (B,)
    """

    def __init__(self, embedding: nn.Module, config: TwoStageConfig) -> None:
        super().__init__()
        self.embedding = embedding
        self.fields = dict(embedding.fields)
        self.config = config
        att_dim, rep_dim = embedding.attention_dim, embedding.representation_dim
        self.scale = 1.0 / math.sqrt(att_dim)
        self.mlp = ActivationMLP(3 * rep_dim + embedding.side_dim, config.mlp, 1, config.mlp_activation)
        self.aux_head = ActivationMLP(3 * att_dim, config.aux_mlp, 1, config.mlp_activation) if config.aux_weight > 0 else None
        self.time_search = False  # benchmarks: accumulate wall time of the search stage
        self.search_seconds = 0.0
        self.search_calls = 0
        self._aux_logits: Tensor | None = None

    def search(self, query: Tensor, keys: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Stage 1: ``(scores (N,), kept index (M,), kept lengths (B,))``."""
        seg = segment_ids(lengths, keys.shape[0])
        scores = (query[seg] * keys).sum(1) * self.scale  # (N,)
        index, kept = jagged_topk(scores, lengths, self.config.top_k)
        return scores, index, kept

    def parts(self, features: KeyedJaggedTensor) -> dict[str, Tensor]:
        """All intermediate tensors of a forward (tests and analysis)."""
        att, rep, side = self.embedding(features)
        keys, lengths, query = sequence_tokens(att, self.fields)  # (N, E_a), (B,), (B, E_a)
        values, _, target = sequence_tokens(rep, self.fields) if rep is not att else (keys, lengths, query)
        tick = time.perf_counter() if self.time_search else 0.0
        scores, index, kept = self.search(query, keys, lengths)
        if self.time_search:
            self.search_seconds += time.perf_counter() - tick
            self.search_calls += 1
        weights = jagged_softmax(scores[index], kept)  # (M,)
        interest = jagged_weighted_sum(weights, values[index], kept)  # (B, E_r)
        parts = [target, interest, target * interest] + ([side] if side is not None else [])
        logits = self.mlp(torch.cat(parts, dim=1)).squeeze(1)  # (B,)
        out = {
            "scores": scores, "index": index, "kept_lengths": kept, "weights": weights, "interest": interest,
            "query": query, "keys": keys, "values": values, "target": target, "logits": logits,
        }
        if self.aux_head is not None:
            att_interest = jagged_weighted_sum(weights, keys[index], kept)  # (B, E_a)
            out["aux_logits"] = self.aux_head(torch.cat([query, att_interest, query * att_interest], dim=1)).squeeze(1)
        return out

    def forward(self, features: KeyedJaggedTensor) -> Tensor:
        out = self.parts(features)
        self._aux_logits = out.get("aux_logits") if self.training else None
        return out["logits"]

    def aux_loss(self, labels: Tensor | None = None) -> Tensor | None:
        """``aux_weight * BCE(aux head)`` of the last training forward (None when the head is off)."""
        if self._aux_logits is None or labels is None:
            return None
        return self.config.aux_weight * bce(self._aux_logits, labels)
