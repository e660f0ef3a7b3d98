"""DARE: decoupled attention and representation embeddings (a table layout over stock EmbeddingCollections).

Paper: Feng et al., "Long-Sequence Recommendation Models Need Decoupled Embeddings" (DARE), 2024
(arXiv:2410.02604). In a long-sequence model one embedding per id serves two roles: in the attention
(search/target-attention logits between the target and every behaviour) and in the representation
(the values summed with the attention weights, and the target's own representation). The gradients of
the two roles conflict; DARE gives every id feature TWO tables:

* an ATTENTION table, used for the query (the target) and the keys (the behaviours) of the search
  stage and of the target attention;
* a REPRESENTATION table, used for the values and the target's representation.

The attention dim may be smaller than the representation dim (the paper shows this makes the search
stage cheaper at little cost). One ``EmbeddingCollection`` needs equal dims, so the layout is two
collections: ``attention`` and ``representation``. Both are stock TorchRec modules, so the planner,
the stock sharders, FBGEMM kernels and fused optimizers apply to them unchanged:
:class:`DecoupledEmbeddingCollection` is a plain container and needs no sharder of its own.

``decoupled=False`` (tied) keeps ONE collection and returns its output for both roles: exactly the
coupled (single-table) model, which is the reduction tested in tests/models/test_dare.py.

Deviations from the paper: none in the layout. The paper's models (TWIN / DIN on Taobao, Tmall) use
their own feature sets; ours has item, category and recency position per behaviour (see
recsys_emb/data/sequences.py), each of which gets its two tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recsys_emb.data.sequences import GROUP_FEATURES

ATTENTION_PREFIX = "att_"
REPRESENTATION_PREFIX = "rep_"


def coupled_table_configs(
    table_sizes: Mapping[str, int],
    dim: int,
    groups: Sequence[str] = ("item", "category", "position"),
    group_features: Mapping[str, Sequence[str]] = GROUP_FEATURES,
    init_std: float | None = None,
) -> list[EmbeddingConfig]:
    """One table per feature group (its history and target features share it), all ``dim`` wide.

    Args:
        table_sizes: rows per group (e.g. ``SequenceDataset.table_sizes()``).
        dim: embedding dim.
        groups: which groups get a table (the model uses these).
        group_features: group -> the KJT keys looked up in that group's table.
        init_std: if set, rows start uniform in ``+-init_std * sqrt(3)`` (std ``init_std``); else torchrec's default.
    """
    return _configs("", table_sizes, dim, groups, group_features, init_std)


def dare_table_configs(
    table_sizes: Mapping[str, int],
    attention_dim: int,
    representation_dim: int,
    groups: Sequence[str] = ("item", "category", "position"),
    group_features: Mapping[str, Sequence[str]] = GROUP_FEATURES,
    init_std: float | None = None,
) -> tuple[list[EmbeddingConfig], list[EmbeddingConfig]]:
    """DARE layout: ``(attention tables, representation tables)``, one of each per feature group.

    Attention tables are named ``att_<group>`` (``attention_dim`` wide), representation tables
    ``rep_<group>`` (``representation_dim`` wide); both look up the same KJT keys.
    """
    return (
        _configs(ATTENTION_PREFIX, table_sizes, attention_dim, groups, group_features, init_std),
        _configs(REPRESENTATION_PREFIX, table_sizes, representation_dim, groups, group_features, init_std),
    )


def _configs(prefix, table_sizes, dim, groups, group_features, init_std) -> list[EmbeddingConfig]:  # noqa: ANN001
    if dim < 1:
        raise ValueError(f"embedding dim must be >= 1, got {dim}")
    init = {} if init_std is None else {"weight_init_min": -init_std * 3**0.5, "weight_init_max": init_std * 3**0.5}
    out = []
    for group in groups:
        if group not in table_sizes:
            raise ValueError(f"no table size for feature group '{group}' (have {sorted(table_sizes)})")
        out.append(
            EmbeddingConfig(
                name=f"{prefix}{group}", embedding_dim=dim, num_embeddings=int(table_sizes[group]),
                feature_names=list(group_features[group]), **init,
            )
        )
    return out


class DecoupledEmbeddingCollection(nn.Module):
    """Attention and representation lookups of the same KJT: ``forward(kjt) -> (attention, representation)``.

    Shapes: every output is ``dict[str, JaggedTensor]`` (one per KJT key, values ``(sum of lengths, D)``)
    with ``D = attention_dim`` for the first dict and ``representation_dim`` for the second.

    Args:
        attention_tables: tables for the attention role; when ``representation_tables`` is None they
            serve both roles (tied, the coupled model) and the two outputs are the same dict.
        representation_tables: tables for the representation role (DARE), or None.
        device: where to build the tables (``meta`` for DistributedModelParallel).

    Example::

        att, rep = dare_table_configs({"item": 100, "category": 10, "position": 51}, 8, 16)
        emb = DecoupledEmbeddingCollection(att, rep)
        # kjt keys: hist_item, hist_cat, hist_pos (jagged), target_item, target_cat, target_pos (1 per row)
        a, r = emb(kjt)  # a["hist_item"].values(): (N, 8); r["hist_item"].values(): (N, 16)
    """

    def __init__(
        self,
        attention_tables: Sequence[EmbeddingConfig],
        representation_tables: Sequence[EmbeddingConfig] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        dev = torch.device(device) if device is not None else None
        self.attention = EmbeddingCollection(tables=list(attention_tables), device=dev)
        self.representation = (
            EmbeddingCollection(tables=list(representation_tables), device=dev) if representation_tables is not None else None
        )
        if self.representation is not None:
            att_keys = sorted(f for c in attention_tables for f in c.feature_names)
            rep_keys = sorted(f for c in representation_tables for f in c.feature_names)
            if att_keys != rep_keys:
                raise ValueError(f"attention tables look up {att_keys} but representation tables {rep_keys}: they must match")

    @property
    def decoupled(self) -> bool:
        return self.representation is not None

    @property
    def attention_dim(self) -> int:
        return int(self.attention.embedding_configs()[0].embedding_dim)

    @property
    def representation_dim(self) -> int:
        tables = self.representation if self.representation is not None else self.attention
        return int(tables.embedding_configs()[0].embedding_dim)

    def embedding_configs(self) -> list[EmbeddingConfig]:
        """All tables (attention first)."""
        rep = self.representation.embedding_configs() if self.representation is not None else []
        return [*self.attention.embedding_configs(), *rep]

    def forward(self, features: KeyedJaggedTensor) -> tuple[dict[str, JaggedTensor], dict[str, JaggedTensor]]:
        att = self.attention(features)
        rep = self.representation(features) if self.representation is not None else att
        return att, rep
