"""The embedding spec (``embedding:`` of every experiment): table groups, each a technique chain.

Every model family builds ALL its tables from this section (recsys_emb/modules/spec.py)::

    embedding:
      groups:
        - name: item                      # a table group: its features share the group's technique chain
          features: [item]                # sequence fields (item, category, position) or pooled keys
          chain:                          # applied in order: pre-transforms, table layout, post-transforms
            - semantic_ids: {codes: runs/sid/codes.npz}
            - unified: {budget_fraction: 0.5}
            - dare: {attention_dim: 8}
        - name: rest                      # features: null = every feature no other group names
          chain: [plain]

A chain entry is a technique name (``plain``) or a one-key mapping ``{technique: {options}}``. An empty
chain, or no ``groups`` at all, is the plain model: one stock table per feature. Which techniques exist,
what each does and which chains are refused: recsys_emb/modules/spec.py and docs/techniques/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml


@dataclass
class TableGroup:
    """One group of features and the technique chain that builds their tables."""

    name: str = "all"  # names the group's tables (and its errors)
    features: list[str] | None = None  # the features of this group; null = every feature no other group names
    chain: list[Any] = field(default_factory=list)  # [technique | {technique: {options}}, ...]; [] = plain
    dim: int | None = None  # table dim of this group (null = the model's embedding_dim)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"embedding.groups: every group needs a name, got {self.name!r}")
        from torch import nn

        if "." in self.name or hasattr(nn.ModuleDict(), self.name):
            raise ValueError(
                f"embedding group name '{self.name}' cannot name a submodule (the group's modules are kept by name in a "
                "torch ModuleDict, where it is a method or has a '.'); choose another, e.g. "
                f"'{self.name.replace('.', '_')}_group'"
            )
        if self.features is not None and not self.features:
            raise ValueError(f"embedding group '{self.name}': features is empty (null = every remaining feature)")
        if self.dim is not None and self.dim < 1:
            raise ValueError(f"embedding group '{self.name}': dim must be >= 1, got {self.dim}")
        for entry in self.chain:
            technique_entry(entry, self.name)


def technique_entry(entry: Any, group: str) -> tuple[str, dict[str, Any]]:
    """``(technique, options)`` of one chain entry (a name or a one-key mapping), or a clear error."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and len(entry) == 1:
        (name, options), = entry.items()
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise ValueError(f"embedding group '{group}': options of '{name}' must be a mapping, got {options!r}")
        return str(name), dict(options)
    raise ValueError(
        f"embedding group '{group}': chain entry {entry!r} must be a technique name or a one-key mapping "
        "{technique: {options}}"
    )


@dataclass
class EmbeddingSpec:
    """The ``embedding:`` section: table groups (see the module docstring). No groups = plain tables."""

    groups: list[TableGroup] = field(default_factory=list)

    @classmethod
    def check_keys(cls, data: dict[str, Any]) -> None:
        """Refuse the pre-0.3 single-technique form (``type: X, options: {...}``), showing the new one."""
        if "type" not in data and "options" not in data:
            return
        technique = data.get("type") or "plain"
        options = data.get("options") or {}
        chain = ["plain"] if technique == "ebc" else [technique if not options else {technique: dict(options)}]
        new = yaml.safe_dump({"embedding": {"groups": [{"name": "all", "chain": chain}]}}, sort_keys=False).rstrip()
        note = ("" if technique != "semantic_ids" else "\n(semantic_ids: put the item features in a group of their own, "
                "`features: [...]`; id_offset is now raw_id_offset; keep_item_id is now with_id: true, which ADDS the id row)")
        raise ValueError(
            "`type`/`options` is the old single-technique form; the embedding section is now a list of table groups. "
            f"The closest new form is:\n{new}{note}"
        )

    def __post_init__(self) -> None:
        names = [g.name for g in self.groups]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"embedding.groups: group names {dup} are used twice")
        listed = [(f, g.name) for g in self.groups for f in (g.features or [])]
        seen: dict[str, str] = {}
        for f, g in listed:
            if f in seen:
                raise ValueError(f"embedding.groups: feature '{f}' is in two groups, '{seen[f]}' and '{g}'")
            seen[f] = g
        if sum(g.features is None for g in self.groups) > 1:
            raise ValueError("embedding.groups: at most one group may leave features null (= every remaining feature)")
