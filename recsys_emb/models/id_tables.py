"""The user / item id tables of the retrieval families (graph CF, two-tower) from the ``embedding:`` spec.

Both families embed two id features, ``user`` (U rows) and ``item`` (I rows), and build their tables
through recsys_emb/modules/spec.py like every family. Example (LightGCN with hashed item rows)::

    embedding:
      groups:
        - {name: users, features: [user]}
        - {name: items, features: [item], chain: [{unified: {budget_fraction: 0.5}}]}

A spec whose chains are all plain (no groups, empty chains or ``[plain]``) and whose group dims are
the model's is the family's own reference tables, exactly as before the spec existed (same table
names, same checkpoints): :func:`plain_spec` tells the families which case they are in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from recsys_emb.config.embedding import EmbeddingSpec, technique_entry
from recsys_emb.config.io import ConfigError

ID_FEATURES = ("user", "item")


def chain_techniques(spec: EmbeddingSpec) -> list[tuple[str, str]]:
    """``(group, technique)`` of every chain entry of ``spec`` that is not ``plain`` (config only)."""
    return [(g.name, name) for g in spec.groups for name, _ in (technique_entry(e, g.name) for e in g.chain)
            if name != "plain"]


def plain_spec(spec: EmbeddingSpec, dim: int, *, family: str) -> bool:
    """True when ``spec`` builds the plain user/item tables (every chain plain, every group ``dim`` the model's).

    Raises:
        ConfigError: a group names a feature other than ``user`` / ``item``, or a feature is in no group.
    """
    from recsys_emb.modules.spec import assign_groups

    assign_groups(spec, list(ID_FEATURES), family=family)
    return not chain_techniques(spec) and all(g.dim in (None, dim) for g in spec.groups)


def build_id_tables(
    spec: EmbeddingSpec,
    vocab: Mapping[str, int],
    dim: int,
    *,
    family: str,
    init: Mapping[str, Any],
    context: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """The EBC-compatible module of ``spec`` over ``vocab`` (``{"user": U, "item": I}``): ``KJT -> KeyedTensor``.

    Every feature's output must be ``dim`` wide (the models dot and propagate user and item rows together).

    Raises:
        ConfigError: a group's chain gives a feature rows of another width (names the group and its chain).
    """
    from recsys_emb.modules.contract import output_feature_dims
    from recsys_emb.modules.spec import assign_groups, build_pooled

    groups = assign_groups(spec, list(vocab), family=family)
    module = build_pooled(spec, vocab, dim, family=family, init=init, context=context, device=device, groups=groups)
    dims = dict(output_feature_dims(module))
    for group, features in groups:
        for f in features:
            if dims.get(f) != dim:
                chain = [n for n, _ in (technique_entry(e, group.name) for e in group.chain)] or ["plain"]
                raise ConfigError(
                    f"embedding group '{group.name}' (chain {chain}): feature '{f}' gets {dims.get(f)}-dim rows, but the "
                    f"{family} model needs embedding_dim={dim} for both user and item rows; remove the group's dim or "
                    "choose technique options that keep the width (e.g. unified.chunk_dim x probes = embedding_dim)"
                )
    return module


def id_counts(indptr: np.ndarray, items: np.ndarray, num_items: int) -> dict[str, np.ndarray]:
    """Training interactions per user (U,) and per item (I,) of a CSR split: the ``counts`` context
    of techniques that need id frequencies (``dnis: {frequency: data}``)."""
    return {"user": np.diff(np.asarray(indptr)).astype(np.int64),
            "item": np.bincount(np.asarray(items, dtype=np.int64), minlength=num_items).astype(np.int64)}

