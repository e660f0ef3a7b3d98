"""One embedding spec for every model family: table groups, each built by a technique chain.

The ``embedding:`` section (:class:`recsys_emb.config.embedding.EmbeddingSpec`) lists table groups;
every model family builds ALL its tables here, through the same technique code (DESIGN.md,
principles 2 and 8). A technique is one of four kinds:

==========  =================================================================  ==================
kind        what it is                                                         techniques
==========  =================================================================  ==================
pre         a parameter-free ``KJT -> KJT`` transform before the lookup,       ``semantic_ids``
            changing the ids' space (it runs before the sharded input
            all-to-all: it sits inside a TransformedEmbeddingBagCollection)
layout      the tables themselves (stock EBC tables, possibly behind a         ``plain``, ``hash``,
            parameter-free transform); at most one per chain, ``plain``        ``unified``, ``qr``
            when none is named
post        a post-lookup transform with small dense parameters over the       ``dnis``, ``optembed``
            looked-up rows of the RAW ids (data-parallel under DMP)
roles       builds the whole chain twice, once per role, with their own dims   ``dare``
            (attention / representation; behaviour sequences only)
==========  =================================================================  ==================

A chain is applied in that order: ``[semantic_ids] -> layout -> [dnis | optembed]``, ``dare``
anywhere. Chains that make no sense are refused with a message naming both techniques
(:func:`resolve_chain`).

Two kinds of module come out, from the same code:

* pooled (EBC-compatible, ``KJT -> KeyedTensor``, one key per feature): :func:`build_pooled`. Several
  groups are joined by :class:`PooledGroups`; one group that covers every feature is returned as is.
* sequence (EC-compatible, ``KJT -> dict[str, JaggedTensor]``): :class:`SequenceLookup` turns every id
  of a field's keys (a behaviour history and its target share a field, hence its embedding) into a bag
  of its own, runs the pooled module of the field's group on those bags, and splits the pooled rows
  back into the jagged keys. A chain therefore serves sequences unchanged, and the tables are stock
  EBC tables that TorchRec's and our pooled sharders shard (no sequence sharder of our own is needed;
  docs/ARCHITECTURE.md). The bags are padded to ``bags_per_example x B`` per field so that every rank's
  pooled lookup has the same batch size (TorchRec's sharded pooled tables require it).
  :class:`RoleLookup` holds the attention and representation lookups (DARE) or one tied lookup.

Techniques never know a data set's key names: the model passes its features (and, for sequences, its
fields) in, and the family passes data facts (``context``: training data, id counts, raw item ids).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from recsys_emb.config.embedding import EmbeddingSpec, TableGroup, technique_entry
from recsys_emb.config.io import ConfigError, from_dict
from recsys_emb.modules.contract import output_feature_dims
from recsys_emb.modules.tracing import fx_tracing, tracing
from recsys_emb.modules.wrapper import TransformedEmbeddingBagCollection

KINDS = ("pre", "layout", "post", "roles")
ROLES = ("attention", "representation")
ROLE_PREFIX = {"attention": "att_", "representation": "rep_"}


@dataclass
class Tables:
    """What a chain builds on, for one group and one role: threaded through the chain.

    Attributes:
        group: the group's name (names its shared tables).
        features: output keys of the group's pooled module, in order.
        vocab: rows of each feature's id space as the layout sees it (a pre-transform changes it).
        dim: table dim.
        prefix: prefix of per-feature table names (``t_`` for CTR, the DARE role prefix, ...).
        suffix: suffix of every table name (``_first_order`` for per-id weight tables).
        init: table init keyword arguments (``weight_init_min/max`` or ``init_fn``).
        pre: the parameter-free transforms so far (applied in order before the layout).
        context: data facts from the family (``data``, ``counts``, ``items``); see :func:`build_pooled`.
        device: where the tables are built (``meta`` for DistributedModelParallel).
        tables: feature -> the table (vocabulary) it uses, from the data (a schema's ``table:``); a
            feature not listed uses its own. Features naming the same table look up the same rows:
            ONE stock table ``prefix + table + suffix`` with several ``feature_names`` (each feature
            still has its own pooled output key). A table used by one feature keeps the per-feature
            name ``prefix + feature + suffix``, so data without shared tables builds the same tables.
    """

    group: str
    features: list[str]
    vocab: dict[str, int]
    dim: int
    prefix: str = ""
    suffix: str = ""
    init: dict[str, Any] = field(default_factory=dict)
    pre: list[nn.Module] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    device: torch.device | None = None
    tables: dict[str, str] = field(default_factory=dict)

    def table_of(self, feature: str) -> str:
        """The table (vocabulary) ``feature`` uses (its own name unless :attr:`tables` says otherwise)."""
        return self.tables.get(feature, feature)

    def shared_tables(self) -> dict[str, list[str]]:
        """Table -> its features (in order), for every table that several of the group's features share.

        Raises:
            ValueError: the features of a shared table have different row counts, or a shared table has
                the name of another feature (whose own table would get the same name).
        """
        by_table: dict[str, list[str]] = {}
        for f in self.features:
            by_table.setdefault(self.table_of(f), []).append(f)
        shared = {t: fs for t, fs in by_table.items() if len(fs) > 1}
        for t, fs in shared.items():
            rows = {f: int(self.vocab[f]) for f in fs}
            if len(set(rows.values())) > 1:
                raise ValueError(f"table '{t}' is shared by features {fs}, but their vocabularies differ ({rows}); "
                                 "features sharing a table must have the same rows")
            if t in self.features and t not in fs:
                raise ValueError(f"table '{t}' (shared by {fs}) has the name of feature '{t}', which uses table "
                                 f"'{self.table_of(t)}': their tables would both be named '{self.prefix}{t}{self.suffix}'; "
                                 "rename the shared table")
        return shared

    def table_groups(self) -> list[tuple[str, list[str]]]:
        """``(name stem, features)`` of every table, in the order of their first feature: a shared table is
        named after the table, any other after its feature (the per-feature names of unshared data)."""
        shared = self.shared_tables()
        out: list[tuple[str, list[str]]] = []
        for f in self.features:
            t = self.table_of(f)
            if t not in shared:
                out.append((f, [f]))
            elif shared[t][0] == f:
                out.append((t, shared[t]))
        return out

    def table_configs(self, pooling: PoolingType = PoolingType.SUM) -> list[EmbeddingBagConfig]:
        """One stock table per table of :meth:`table_groups` (``prefix + stem + suffix``), ``vocab`` rows, ``dim``
        wide; a shared table lists all its features (TorchRec pools each feature into its own output key)."""
        return [
            EmbeddingBagConfig(name=f"{self.prefix}{stem}{self.suffix}", embedding_dim=self.dim,
                               num_embeddings=int(self.vocab[fs[0]]), feature_names=list(fs), pooling=pooling, **self.init)
            for stem, fs in self.table_groups()
        ]

    def feature_configs(self, pooling: PoolingType = PoolingType.SUM) -> list[EmbeddingBagConfig]:
        """One stock table config per feature (``prefix + feature``): each feature's id space, for techniques
        that lay out their own tables (``hash``, ``unified``: they take :meth:`shared_tables` separately)."""
        return [
            EmbeddingBagConfig(name=f"{self.prefix}{f}{self.suffix}", embedding_dim=self.dim, num_embeddings=int(self.vocab[f]),
                               feature_names=[f], pooling=pooling, **self.init)
            for f in self.features
        ]

    def shared_keys(self) -> dict[str, str]:
        """Feature -> its table, for the features of :meth:`shared_tables` only."""
        return {f: t for t, fs in self.shared_tables().items() for f in fs}

    def refuse_shared(self, technique: str, reason: str) -> None:
        """Raise a :class:`ConfigError` naming the group, ``technique`` and the first shared table, if any."""
        shared = self.shared_tables()
        if shared:
            table, feats = next(iter(shared.items()))
            raise ConfigError(
                f"embedding group '{self.group}': {technique} cannot build on table '{table}', which features {feats} "
                f"share (the data's `table: {table}`): {reason}. Put those features in a group of their own whose "
                f"chain has no {technique} (embedding.groups), or give each its own table in the schema"
            )

    def transform(self) -> nn.Module | None:
        """The pre-transforms as one module (None when there are none)."""
        if not self.pre:
            return None
        return self.pre[0] if len(self.pre) == 1 else nn.Sequential(*self.pre)

    @property
    def role_prefix(self) -> str:
        """The DARE role prefix (``att_`` / ``rep_``) of this build, or ``""``."""
        return self.prefix if self.prefix in ROLE_PREFIX.values() else ""

    def shared_name(self, technique: str) -> str:
        """Name of a table shared by the group's features (``unified`` for the group ``all``)."""
        return self.role_prefix + (technique if self.group == "all" else f"{technique}_{self.group}") + self.suffix


@dataclass(frozen=True)
class Technique:
    name: str
    kind: str  # pre | layout | post | roles
    options: type | None
    build: Callable[..., Any] | None  # pre: (opts, Tables) -> Tables; layout: -> nn.Module; post: (opts, module, Tables) -> nn.Module
    pooled: bool = True  # usable on pooled groups (False: sequence groups only)
    doc: str = ""


_TECHNIQUES: dict[str, Technique] = {}


def register_technique(name: str, kind: str, options: type | None = None, *, pooled: bool = True, doc: str = "") -> Callable:
    """Decorator registering a chain technique's builder (see :class:`Technique`)."""
    if kind not in KINDS:
        raise ValueError(f"technique kind must be one of {KINDS}, got {kind!r}")

    def decorate(build: Callable | None) -> Callable | None:
        if name in _TECHNIQUES and _TECHNIQUES[name].build is not build:
            raise ValueError(f"embedding technique '{name}' is registered twice")
        _TECHNIQUES[name] = Technique(name, kind, options, build, pooled, doc)
        return build

    return decorate


TECHNIQUE_MODULES = ("dare", "dnis", "optembed", "qr", "semantic_ids", "unified")  # modules/<name>.py register themselves


def _load_all() -> None:
    for name in TECHNIQUE_MODULES:
        importlib.import_module(f"recsys_emb.modules.{name}")


def techniques() -> dict[str, Technique]:
    """Every registered technique by name."""
    _load_all()
    return dict(_TECHNIQUES)


# ------------------------------------------------------------------------------------------ chains
@dataclass
class Chain:
    """A resolved chain: the techniques of each kind with their parsed options."""

    pre: list[tuple[Technique, Any]]
    layout: tuple[Technique, Any]
    post: list[tuple[Technique, Any]]
    roles: Any | None  # DareOptions when the chain has dare

    def names(self) -> list[str]:
        names = [t.name for t, _ in self.pre] + [self.layout[0].name] + [t.name for t, _ in self.post]
        return names + (["dare"] if self.roles is not None else [])


# pairs that cannot stack (in either order), and why
_REFUSED: dict[tuple[str, str], str] = {
    ("semantic_ids", "dnis"): "a dimension search prices every ID's own row, but semantic-ID pieces are rows shared by many items",
    ("semantic_ids", "optembed"): "row pruning prices every ID's own row, but semantic-ID pieces are rows shared by many items",
    ("dnis", "optembed"): "both search the embedding dims of the same rows; use one search per group",
    ("hash", "dnis"): "hashed rows are shared by many IDs, so a per-ID-frequency dim search has no rows of its own to shrink",
    ("hash", "optembed"): "hashed rows are shared by many IDs, so pruning a row prunes unrelated IDs",
    ("qr", "dnis"): "quotient and remainder rows are each shared by many IDs, so a per-ID-frequency dim search has no rows of its own to shrink",
    ("qr", "optembed"): "quotient and remainder rows are each shared by many IDs, so pruning a row prunes unrelated IDs",
}


def resolve_chain(group: TableGroup, *, sequence: bool) -> Chain:
    """Parse and check ``group.chain`` for a pooled (``sequence=False``) or a sequence group.

    Raises:
        ConfigError: unknown technique or options, a technique where it makes no sense, or a chain
            whose order or combination is impossible; the message names the group and the techniques.
    """
    known = techniques()
    where = f"embedding group '{group.name}'"
    raw: list[tuple[Technique, dict[str, Any]]] = []
    for entry in group.chain:
        name, options = technique_entry(entry, group.name)
        if name not in known:
            raise ConfigError(f"{where}: unknown technique '{name}' (choose from {sorted(known)})")
        tech = known[name]
        if not sequence and not tech.pooled:
            raise ConfigError(
                f"{where}: '{name}' needs a behaviour-sequence group: its attention / representation roles exist only "
                "in sequence rankers (din, two_stage), and this group holds pooled features"
            )
        if tech.options is None and options:
            raise ConfigError(f"{where}: '{name}' takes no options, got {sorted(options)}")
        raw.append((tech, options))
    names = [t.name for t, _ in raw]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if a == b:
                raise ConfigError(f"{where}: '{a}' appears twice in the chain")
            reason = _REFUSED.get((a, b)) or _REFUSED.get((b, a))
            if reason:
                raise ConfigError(f"{where}: '{a}' and '{b}' do not stack: {reason}")
    order = {"pre": 0, "layout": 1, "post": 2}
    last_name, last_rank = "", -1
    for tech, _ in raw:
        if tech.kind == "roles":  # dare may stand anywhere: it builds the whole chain once per role
            continue
        rank = order[tech.kind]
        if tech.kind == "layout" and last_rank == order["layout"]:
            raise ConfigError(f"{where}: '{last_name}' and '{tech.name}' are both table layouts; a group has one")
        if rank < last_rank:
            raise ConfigError(
                f"{where}: '{tech.name}' cannot come after '{last_name}': a chain is pre-transforms (semantic_ids), then one "
                "table layout (plain, hash, unified, qr), then post-lookup transforms (dnis, optembed)"
            )
        last_name, last_rank = tech.name, rank
    parsed = [(tech, from_dict(tech.options, options, where=f"{where}: {tech.name}") if tech.options is not None else None)
              for tech, options in raw]
    layouts = [p for p in parsed if p[0].kind == "layout"]
    layout = layouts[0] if layouts else (known["plain"], None)
    roles = [opts for t, opts in parsed if t.kind == "roles"]
    return Chain([p for p in parsed if p[0].kind == "pre"], layout, [p for p in parsed if p[0].kind == "post"],
                 roles[0] if roles else None)


# ------------------------------------------------------------------------------------ pooled modules
def build_chain(chain: Chain, tables: Tables, *, post: bool = True) -> nn.Module:
    """The pooled module of one group (and role): pre-transforms, layout, post-transforms.

    Raises:
        ConfigError: a technique cannot build on these tables (e.g. a budget below one row); names the
            group and the technique.
    """
    raw = dataclasses.replace(tables, pre=[], vocab=dict(tables.vocab))
    state = raw
    current = ""
    try:
        for tech, opts in chain.pre:
            current = tech.name
            state = tech.build(opts, state)
        layout, opts = chain.layout
        current = layout.name
        module = layout.build(opts, state)
        if post:
            for tech, opts in chain.post:
                current = tech.name
                module = tech.build(opts, module, raw)
    except (ValueError, KeyError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"embedding group '{tables.group}': {current}: {e}") from e
    return module


@register_technique("plain", "layout", doc="one stock table per feature (or per shared table), one row per id (the reference)")
def build_plain(options: None, tables: Tables) -> nn.Module:
    transform = tables.transform()
    if transform is None:
        return EmbeddingBagCollection(tables.table_configs(), device=tables.device)
    return TransformedEmbeddingBagCollection(transform, tables.table_configs(), device=tables.device)


@torch.fx.wrap
def key_positions(keys: list[str], wanted: list[str]) -> list[int]:
    """Position of every ``wanted`` key among a KJT's ``keys`` (for ``permute``); a missing one is an error.

    fx-wrapped with a TorchScript body: the TorchScript export records one call, the scripted program
    reads each batch's keys."""
    position: dict[str, int] = {}
    for i, k in enumerate(keys):
        position[k] = i
    out: list[int] = []
    for f in wanted:
        if f not in position:
            raise KeyError(f"embedding groups: feature {f} is not in the input (keys {keys})")
        out.append(position[f])
    return out


class PooledGroups(nn.Module):
    """Several groups' pooled modules as one EBC-compatible module: ``KJT -> KeyedTensor``.

    The input KJT is permuted once into the groups' features (keys no group names are left out) and
    split; the outputs are concatenated in group order (:meth:`output_feature_dims` gives the order).
    The permutation comes from the batch's keys (:func:`key_positions`, cached per key list; run per
    batch by a TorchScript export's program, which cannot read them while fx traces).
    """

    def __init__(self, modules: Mapping[str, nn.Module], features: Mapping[str, Sequence[str]]) -> None:
        super().__init__()
        self.groups = nn.ModuleDict(dict(modules))
        self.features = {g: list(features[g]) for g in modules}
        self._order = [f for g in self.groups for f in self.features[g]]
        self._plans: dict[tuple[str, ...], list[int]] = {}

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        if fx_tracing():  # TorchScript: the keys are unknown while traced; the scripted program orders each batch
            index = key_positions(features.keys(), self._order)
        else:
            keys = tuple(features.keys())
            index = self._plans.get(keys)
            if index is None:
                index = self._plans[keys] = key_positions(list(keys), self._order)
        parts = features.permute(index).split([len(self.features[g]) for g in self.groups])
        outs = [module(parts[i]) for i, module in enumerate(self.groups.values())]
        if fx_tracing():  # the outputs' keys are proxies: the (unsharded) groups' contract gives them
            dims = self.output_feature_dims()
            keys, sizes = [k for k, _ in dims], [d for _, d in dims]
        else:
            keys, sizes = [k for o in outs for k in o.keys()], [n for o in outs for n in o.length_per_key()]
        return KeyedTensor(keys=keys, length_per_key=sizes, values=torch.cat([o.values() for o in outs], dim=1))

    def output_feature_dims(self) -> list[tuple[str, int]]:
        return [d for module in self.groups.values() for d in output_feature_dims(module)]

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return [c for module in self.groups.values() for c in _configs(module)]

    def aux_loss(self) -> Tensor | None:
        return sum_aux_losses(self.groups.values())


def sum_aux_losses(modules: Any) -> Tensor | None:
    """The sum of the ``aux_loss()`` of those ``modules`` that have one (None when none returns a tensor)."""
    total = None
    for module in modules:
        fn = getattr(module, "aux_loss", None) if module is not None else None
        value = fn() if callable(fn) else None
        if value is not None:
            total = value if total is None else total + value
    return total


def _configs(module: nn.Module) -> list[EmbeddingBagConfig]:
    fn = getattr(module, "embedding_bag_configs", None)
    return list(fn()) if callable(fn) else []


def assign_groups(spec: EmbeddingSpec, features: Sequence[str], *, family: str) -> list[tuple[TableGroup, list[str]]]:
    """Each group of ``spec`` with its features (in the model's order); a plain group of all when empty.

    Raises:
        ConfigError: a group names a feature the model does not have, or a feature is in no group.
    """
    groups = list(spec.groups) or [TableGroup(name="all")]
    named = {f for g in groups for f in (g.features or [])}
    out = []
    for g in groups:
        if g.features is not None:
            unknown = [f for f in g.features if f not in features]
            if unknown:
                raise ConfigError(
                    f"embedding group '{g.name}': unknown feature(s) {unknown}; the {family} model has {list(features)}"
                )
            out.append((g, [f for f in features if f in g.features]))
        else:
            rest = [f for f in features if f not in named]
            if not rest:
                raise ConfigError(f"embedding group '{g.name}' (features: null) gets no feature: every one is in another group")
            out.append((g, rest))
    covered = {f for _, fs in out for f in fs}
    left = [f for f in features if f not in covered]
    if left:
        raise ConfigError(
            f"embedding: feature(s) {left} of the {family} model are in no group; add them to a group or add a group "
            "with features: null (every remaining feature)"
        )
    return out


def build_pooled(
    spec: EmbeddingSpec,
    vocab: Mapping[str, int],
    dim: int,
    *,
    family: str,
    prefix: str = "",
    suffix: str = "",
    init: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    post: bool = True,
    groups: Sequence[tuple[TableGroup, list[str]]] | None = None,
    select: bool = False,
    tables: Mapping[str, str] | None = None,
) -> nn.Module:
    """The pooled (EBC-compatible) module of ``spec`` over the features ``vocab`` lists (in that order).

    Args:
        spec: the ``embedding:`` section.
        vocab: feature -> rows of its id space (the plain table's rows), in the model's order.
        dim: the model's embedding dim (a group's ``dim`` overrides it).
        family: the model's name, for error messages.
        prefix: per-feature table name prefix (``t_`` for CTR).
        suffix: suffix of every table name (``_first_order`` for per-id weight tables).
        init: table init keyword arguments.
        context: data facts for techniques: ``data`` (PreparedCTRData of the training split: DNIS
            counts), ``counts`` (feature -> (rows,) id counts), ``items`` (feature -> ItemIds for SIDs).
        device: table device (``meta`` for DMP).
        post: apply post-lookup transforms (False for side tables such as DeepFM's first-order weights).
        groups: already assigned groups (default: :func:`assign_groups`).
        select: the input KJT holds other keys too (e.g. a sequence batch): always return
            :class:`PooledGroups`, which picks the groups' features out of it.
        tables: feature -> the table (vocabulary) it uses (a prepared schema's ``meta.json`` ``tables``);
            features naming the same table share its rows (:class:`Tables`). None = one table per feature.

    Returns:
        The group's own module when one group covers every feature (and not ``select``), else
        :class:`PooledGroups`.

    Raises:
        ConfigError: as :func:`assign_groups`, and when the features of a shared table are in different groups.
    """
    assigned = list(groups) if groups is not None else assign_groups(spec, list(vocab), family=family)
    table_of = {f: t for f, t in (tables or {}).items() if f in vocab}
    check_shared_groups(assigned, table_of)
    modules, features = {}, {}
    dev = torch.device(device) if device is not None else None
    for group, feats in assigned:
        chain = resolve_chain(group, sequence=False)
        state = Tables(group.name, feats, {f: int(vocab[f]) for f in feats}, group.dim or dim, prefix, suffix,
                       dict(init or {}), [], dict(context or {}), dev, {f: table_of[f] for f in feats if f in table_of})
        modules[group.name] = build_chain(chain, state, post=post)
        features[group.name] = feats
    if len(modules) == 1 and not select:
        return next(iter(modules.values()))
    return PooledGroups(modules, features)


def check_shared_groups(groups: Sequence[tuple[TableGroup, list[str]]], tables: Mapping[str, str]) -> None:
    """Refuse a shared table (several features naming it in ``tables``) whose features are in different groups.

    Raises:
        ConfigError: naming the table, its features and their groups.
    """
    where: dict[str, dict[str, list[str]]] = {}  # table -> group -> features
    for group, feats in groups:
        for f in feats:
            where.setdefault(tables.get(f, f), {}).setdefault(group.name, []).append(f)
    for table, by_group in where.items():
        if len(by_group) > 1:
            placed = "; ".join(f"group '{g}': {fs}" for g, fs in by_group.items())
            raise ConfigError(
                f"embedding: features {[f for fs in by_group.values() for f in fs]} share table '{table}' (the data's "
                f"`table: {table}`), but are in different groups ({placed}); features sharing a table look up the same "
                "rows, so list them in one group"
            )


# ---------------------------------------------------------------------------------- sequence modules
@torch.fx.wrap
def bag_stride(ids: list[Tensor], batch: int, bags_per_example: int | None) -> int:
    """Bags per field of a sequence lookup: the most ids of one field, or ``bags_per_example x batch``
    (refused when a field has more ids), at least 1.

    fx-wrapped with a TorchScript body: the counts are read from the batch, which fx tracing cannot do,
    so the TorchScript export records one call and the scripted program runs this per batch.
    """
    stride = 1
    for i in ids:
        stride = max(stride, i.numel())
    if bags_per_example is not None:
        bound = batch * bags_per_example
        if stride > bound:
            raise ValueError(f"{stride} ids of one field in a batch of {batch} examples: more than "
                             f"bags_per_example={bags_per_example} per example")
        stride = bound
    return stride


class SequenceLookup(nn.Module):
    """EC-compatible lookup of sequence fields through pooled modules: ``KJT -> dict[str, JaggedTensor]``.

    A field is a list of KJT keys that share one embedding (e.g. ``item`` = the behaviour history
    ``hist_item`` and the target ``target_item``). Every id of a field's keys becomes a bag of its own
    under the field's name; the field's group module (any chain) pools those one-id bags, and the rows
    are split back into JaggedTensors with the keys' lengths. Nothing is padded inside the model's
    jagged tensors; only the bags handed to the pooled module are padded with empty bags to
    ``bags_per_example x B`` per field, so that every rank's pooled lookup has the same batch size.
    Under ``torch.export`` the ids counts are data-dependent: see :meth:`_traced_stride`; a TorchScript
    export records one :func:`bag_stride` call, which the scripted program runs per batch.

    Args:
        modules: group name -> pooled module whose features are that group's field names.
        fields: field name -> the KJT keys it covers.
        bags_per_example: the most ids one example has over a field's keys (history length + 1);
            None = no padding (one process only).

    Shapes: B examples, N_f ids of field f in the batch, D_f its dim.
    """

    def __init__(self, modules: Mapping[str, nn.Module], group_fields: Mapping[str, Sequence[str]],
                 fields: Mapping[str, Sequence[str]], bags_per_example: int | None = None) -> None:
        super().__init__()
        self.groups = nn.ModuleDict(dict(modules))
        self.group_fields = {g: list(group_fields[g]) for g in modules}
        self.fields = {f: list(fields[f]) for fs in self.group_fields.values() for f in fs}
        self.bags_per_example = bags_per_example
        self.dims = {f: d for module in self.groups.values() for f, d in output_feature_dims(module)}

    def forward(self, features: KeyedJaggedTensor) -> dict[str, JaggedTensor]:
        jts = features.to_dict()
        out: dict[str, JaggedTensor] = {}
        for name, module in self.groups.items():
            fields = self.group_fields[name]
            ids = [torch.cat([jts[k].values() for k in self.fields[f]]).long() for f in fields]  # (N_f,) each
            if tracing():
                stride = self._traced_stride(features, fields, ids, jts)
            else:  # eager, and TorchScript: fx records one call, the scripted program sizes every batch
                stride = bag_stride(ids, features.stride(), self.bags_per_example)
            lengths = torch.cat([
                torch.cat([torch.ones_like(i, dtype=torch.int32), torch.zeros(stride - i.numel(), dtype=torch.int32, device=i.device)])
                for i in ids
            ])
            # length_per_key given: the KJT needs no device-to-host read of it (and a traced one keeps the sizes' symbols)
            bags = KeyedJaggedTensor(keys=fields, values=torch.cat(ids), lengths=lengths, stride=stride,
                                     length_per_key=[i.numel() for i in ids])
            pooled = module(bags).to_dict()  # field -> (stride, D_f)
            for f, n in zip(fields, ids):
                rows, start = pooled[f], 0
                for k in self.fields[f]:
                    jt = jts[k]
                    size = jt.values().numel()
                    out[k] = JaggedTensor(values=rows.narrow(0, start, size), lengths=jt.lengths())
                    start += size
        return out

    def _traced_stride(self, features: KeyedJaggedTensor, fields: list[str], ids: list[Tensor],
                       jts: Mapping[str, JaggedTensor]) -> int:
        """The bags per field while traced (torch.export): the ids counts are unknown there, so the eager
        ``max`` over them cannot be taken; the eager checks become runtime asserts of the program.

        With ``bags_per_example`` the stride is ``bags_per_example x B`` (asserted: no field has more ids).
        Without, the fields of a group are asserted parallel (key by key as many ids, as the sequence models
        require to concatenate them into tokens), and the first field's count is the stride.
        """
        if self.bags_per_example is not None:
            bound = features.stride() * self.bags_per_example
            for f, i in zip(fields, ids):
                torch._check(i.numel() <= bound, lambda f=f: f"field {f!r}: more than bags_per_example="
                             f"{self.bags_per_example} ids per example")
            return bound
        first = self.fields[fields[0]]
        for f in fields[1:]:
            if len(self.fields[f]) != len(first):
                raise ValueError(f"export of a sequence lookup without bags_per_example needs parallel fields: "
                                 f"{f!r} has keys {self.fields[f]}, {fields[0]!r} has {first}")
            for k, k0 in zip(self.fields[f], first):
                torch._check(jts[k].values().numel() == jts[k0].values().numel(),
                             lambda k=k, k0=k0: f"keys {k!r} and {k0!r} must hold as many ids (parallel fields)")
        stride = ids[0].numel()
        torch._check(stride >= 1, lambda: f"field {fields[0]!r} has no ids")
        return stride

    def aux_loss(self) -> Tensor | None:
        return sum_aux_losses(self.groups.values())


class RoleLookup(nn.Module):
    """The attention and representation lookups of sequence fields: ``KJT -> (attention, representation)``.

    Tied (no ``dare`` in any chain: ``representation is None``): both roles are the same dict, which is
    exactly the single-table model. DARE (Feng et al. 2024; recsys_emb/modules/dare.py): the fields
    whose chain has ``dare`` get a second set of tables for the representation role; the other fields'
    single tables serve both roles.
    """

    def __init__(self, attention: SequenceLookup, representation: SequenceLookup | None = None) -> None:
        super().__init__()
        self.attention = attention
        self.representation = representation

    @property
    def decoupled(self) -> bool:
        return self.representation is not None

    def field_dims(self, role: str) -> dict[str, int]:
        """Field -> dim of its rows in ``role`` (fields without ``dare`` serve both roles with one table)."""
        dims = dict(self.attention.dims)
        if role == "representation" and self.representation is not None:
            dims.update(self.representation.dims)
        return dims

    def forward(self, features: KeyedJaggedTensor) -> tuple[dict[str, JaggedTensor], dict[str, JaggedTensor]]:
        att = self.attention(features)
        if self.representation is None:
            return att, att
        return att, {**att, **self.representation(features)}

    def aux_loss(self) -> Tensor | None:
        return sum_aux_losses([self.attention, self.representation])


def build_sequence(
    groups: Sequence[tuple[TableGroup, list[str]]],
    vocab: Mapping[str, int],
    dim: int,
    fields: Mapping[str, Sequence[str]],
    *,
    bags_per_example: int | None,
    init: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> RoleLookup:
    """The sequence lookup of the groups over sequence fields (``fields``: field -> its KJT keys).

    A group whose chain has ``dare`` builds its chain once per role: attention tables ``att_*`` of
    ``dare.attention_dim`` (default: the group's dim) and representation tables ``rep_*``; the other
    groups build one set of tables serving both roles.
    """
    dev = torch.device(device) if device is not None else None
    att, rep, att_fields, rep_fields = {}, {}, {}, {}
    for group, feats in groups:
        chain = resolve_chain(group, sequence=True)
        gdim = group.dim or dim

        def make(role_dim: int, prefix: str, chain: Chain = chain, group: TableGroup = group, feats: list[str] = feats) -> nn.Module:
            return build_chain(chain, Tables(group.name, feats, {f: int(vocab[f]) for f in feats}, role_dim, prefix, "",
                                             dict(init or {}), [], dict(context or {}), dev))

        if chain.roles is None:
            att[group.name], att_fields[group.name] = make(gdim, ""), feats
        else:
            att[group.name] = make(chain.roles.attention_dim or gdim, ROLE_PREFIX["attention"])
            rep[group.name] = make(gdim, ROLE_PREFIX["representation"])
            att_fields[group.name] = rep_fields[group.name] = feats
    attention = SequenceLookup(att, att_fields, fields, bags_per_example)
    representation = SequenceLookup(rep, rep_fields, fields, bags_per_example) if rep else None
    return RoleLookup(attention, representation)


def uniform_init(bound: float | None) -> dict[str, float]:
    """Table init keyword arguments for uniform(-bound, bound) (``{}`` = TorchRec's default)."""
    return {} if bound is None else {"weight_init_min": -float(bound), "weight_init_max": float(bound)}


def build_embedding(
    chain: Sequence[Any], tables: Sequence[EmbeddingBagConfig], device: torch.device | str | None = None,
    *, group: str = "all", **context: Any,
) -> nn.Module:
    """The pooled module of one technique ``chain`` over a model's plain per-feature ``tables``.

    The library entry point for a ranker of one's own: ``tables`` give the features (in order), their
    rows, the dim, the init and the table-name prefix (``t_a`` for feature ``a``: prefix ``t_``);
    ``context`` the data facts some techniques need (``data``, ``counts``, ``items``).

    Example::

        tables = [EmbeddingBagConfig(name=f"t_{f}", embedding_dim=16, num_embeddings=1000, feature_names=[f]) for f in "abc"]
        module = build_embedding([{"unified": {"budget_fraction": 0.25, "probes": 2}}], tables)
        pooled = module(kjt)  # KeyedTensor, keys a, b, c; 16 wide each
    """
    features = [f for t in tables for f in t.feature_names]
    if any(len(t.feature_names) != 1 for t in tables):
        raise ValueError("build_embedding: every base table must hold exactly one feature")
    dims = {t.embedding_dim for t in tables}
    if len(dims) != 1:
        raise ValueError(f"build_embedding: the base tables must share one dim, got {sorted(dims)}")
    if any(t.pooling != PoolingType.SUM for t in tables):
        raise ValueError("build_embedding: the techniques pool with SUM; the base tables use "
                         f"{sorted({t.pooling.name for t in tables})}")
    prefixes = {t.name[: len(t.name) - len(t.feature_names[0])] if t.name.endswith(t.feature_names[0]) else None for t in tables}
    prefix = prefixes.pop() if len(prefixes) == 1 else None
    prefix = "" if prefix is None else prefix  # names that are not prefix + feature: plain tables get the feature's name
    first = tables[0]
    init = {k: getattr(first, k) for k in ("weight_init_min", "weight_init_max") if getattr(first, k) is not None}
    if first.init_fn is not None and not init:
        init = {"init_fn": first.init_fn}
    spec = EmbeddingSpec(groups=[TableGroup(name=group, chain=list(chain))])
    return build_pooled(spec, {f: int(t.num_embeddings) for f, t in zip(features, tables)}, dims.pop(), family="model",
                        prefix=prefix, init=init, context=context, device=device)
