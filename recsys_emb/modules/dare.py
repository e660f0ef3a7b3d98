"""DARE: decoupled attention and representation embeddings (a chain technique of kind ``roles``).

Paper: Feng et al., "Long-Sequence Recommendation Models Need Decoupled Embeddings" (DARE), 2024
(arXiv:2410.02604). In a long-sequence model one embedding per id serves two roles: in the attention
(search/target-attention logits between the target and every behaviour) and in the representation
(the values summed with the attention weights, and the target's own representation). The gradients of
the two roles conflict; DARE gives every id feature TWO tables:

* an ATTENTION table, used for the query (the target) and the keys (the behaviours) of the search
  stage and of the target attention;
* a REPRESENTATION table, used for the values and the target's representation.

The attention dim may be smaller than the representation dim (the paper shows this makes the search
stage cheaper at little cost).

Here ``dare`` is a chain entry of a sequence group (``embedding.groups[*].chain``): the group's whole
chain is built twice (recsys_emb/modules/spec.py :func:`build_sequence`), once with the attention dim
(tables ``att_*``) and once with the group's dim (tables ``rep_*``), so DARE composes with any layout:
``[dare]`` (plain), ``[unified, dare]``, ``[semantic_ids, dare]``, ``[semantic_ids, unified, dare]``.
Both sets are stock tables, sharded by the stock sharders. Without ``dare`` a group's one set of
tables serves both roles: exactly the coupled (single-table) model, the reduction tested in
tests/models/test_dare.py.

Deviations from the paper: none in the layout. The paper's models (TWIN / DIN on Taobao, Tmall) use
their own feature sets; ours has item, category and recency position per behaviour (see
recsys_emb/data/sequences.py), and a group without ``dare`` (e.g. position) may stay coupled.
"""

from __future__ import annotations

from dataclasses import dataclass

from recsys_emb.modules.spec import register_technique


@dataclass
class DareOptions:
    """``dare: {attention_dim: 8}``: the chain's tables twice, attention (this dim) and representation."""

    attention_dim: int | None = None  # dim of the attention tables (None = the group's dim)

    def __post_init__(self) -> None:
        if self.attention_dim is not None and self.attention_dim < 1:
            raise ValueError(f"dare.attention_dim must be >= 1, got {self.attention_dim}")


register_technique("dare", "roles", DareOptions, pooled=False,
                   doc="attention and representation tables per field (Feng et al. 2024)")(None)
