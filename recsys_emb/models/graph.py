"""Graph collaborative filtering: LightGCN and NGCF over TorchRec user/item tables.

Papers:
- NGCF: X. Wang, X. He, M. Wang, F. Feng, T.-S. Chua. "Neural Graph Collaborative Filtering",
  SIGIR 2019. Layer ``l``: ``side = P E``; ``sum = LeakyReLU(side W1 + b1)``;
  ``bi = LeakyReLU((E * side) W2 + b2)``; ``E' = dropout(sum + bi)``; the layer's output is
  ``E' / ||E'||`` (row-wise L2); final embedding = ``[E0, norm(E1), ..., norm(EL)]`` concatenated.
  That is the authors' reference code (``ngcf_layer_form="reference"``, with ``P = D~^-1 (A + I)``,
  adjacency ``row_self_loop``). The paper's equation 7, ``E' = LeakyReLU((L + I) E W1 + (L E * E) W2)``
  with ``L = D^-1/2 A D^-1/2``, is ``ngcf_layer_form="paper"`` (adjacency ``sym``).
- LightGCN: X. He, K. Deng, X. Wang, Y. Li, Y. Zhang, M. Wang. "LightGCN: Simplifying and Powering
  Graph Convolution Network for Recommendation", SIGIR 2020. ``E_{l+1} = P E_l`` with
  ``P = D^-1/2 A D^-1/2``; final embedding = mean of ``E_0..E_L``. With 0 layers it IS matrix
  factorisation (BPR-MF), which is how the MF baseline is built (``name: mf``).

Tables. Layer-0 user and item embeddings live in ONE stock weighted ``EmbeddingBagCollection`` with
two tables, ``user`` (features ``user_id``, ``item_nbrs``) and ``item`` (features ``item_id``,
``user_nbrs``). Three propagation modes compute ``P E``:

- ``full``: the table weights are read directly and ``P E`` is a sparse (CSR) matmul over the whole
  graph; only for an unsharded ``GraphCF`` used directly (examples, step timing): the trainer
  (``recsys-emb train``) always wraps the model in ``DistributedModelParallel``, whose tables are
  not plain weights.
- ``lookup`` (the default): ``E0`` comes from ONE call of the EBC on a KeyedJaggedTensor whose
  ``user_id``/``item_id`` bags hold each node itself (so the tables may be sharded or replicated by
  DMP), and every hop, the first included, is the CSR matmul of ``full`` on that ``(N, D)``
  activation. Its backward is the fast transposed pooling, and the table lookup only sends ``N`` ids.
- ``neighbor``: the first hop is ONE call of the EBC on a KeyedJaggedTensor whose bags are the
  neighbour lists (bag of user ``u`` in feature ``user_nbrs`` = its items, weights = ``P``'s
  entries; ``user_id``/``item_id`` bags hold each node itself, giving ``E0``), so stock TorchRec
  sharders can shard the tables (row-, table- or column-wise) and FBGEMM kernels do the pooling.
  Later hops operate on the (dense, activation-sized) output of the previous layer with the same
  weighted sum pooling (``F.embedding_bag``). Every rank pools ALL nodes (the graph's full batch):
  table memory is sharded, compute of hop 1 is not; see docs/techniques/graph_cf.md.
  On CPU the weighted-bag backward over all ``2|E|`` neighbour entries makes this ~3x slower per
  step than ``lookup`` (ML-1M LightGCN); what it buys is hop-1 pooling done by the table owners.
  All modes give the same numbers for the same weights (tested).

The ``embedding:`` spec (recsys_emb/modules/spec.py; features ``user`` and ``item``) may replace the
plain tables by any technique chain, e.g. ``unified`` item rows at half the bytes. A plain spec (no
groups, or plain chains only) is the weighted EBC above, unchanged. Otherwise the layer-0 tables are
the spec's module and ``E0`` is ONE call of it on an unweighted KJT (keys ``user``, ``item``: each bag
holds the node itself), then the hops as in ``lookup``; only ``lookup`` propagation serves them
(``neighbor`` pools plain weighted neighbour bags). A technique's ``aux_loss()`` joins the BPR loss.

Deviations: dropout of the adjacency ("node dropout") is available in two variants: ``edge``
(the reference code: every non-zero of ``P``, self-loops included, kept with prob ``1-p`` and
rescaled) and ``node`` (the paper: all messages sent by a dropped node). Biases of NGCF layers are
kept in the paper form as well (``LeakyReLU`` of ``lin1 + lin2``).

Shapes: U users, I items, N = U + I nodes, D embedding dim, D' output dim.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

from recsys_emb.config.embedding import EmbeddingSpec
from recsys_emb.data.graphs import ADJACENCY_KINDS, SYMMETRIC_KINDS, BPRBatch, NormalizedAdjacency
from recsys_emb.modules.spec import sum_aux_losses
from recsys_emb.models.id_tables import build_id_tables, chain_techniques, plain_spec

USER_TABLE, ITEM_TABLE = "user", "item"
PROPAGATION_MODES = ("lookup", "neighbor", "full")
FEATURES = ("user_id", "item_nbrs", "item_id", "user_nbrs")  # KJT key order = table order


@dataclass
class GraphModelConfig:
    """A graph CF model (YAML section ``model:``)."""

    name: Literal["lightgcn", "ngcf", "mf"] = "lightgcn"  # mf = LightGCN with 0 layers
    embedding_dim: int = 64  # layer-0 table dim (a multiple of 4 for sharded FBGEMM tables)
    num_layers: int = 3  # propagation layers (ignored by mf)
    layer_dims: list[int] | None = None  # NGCF output dim per layer (default: embedding_dim each)
    # lookup: E0 through the table EBC, hops as sparse matmuls (DMP-ready, the fast default); neighbor: hop 1
    # pooled over neighbour lists by the EBC (DMP-ready); full: sparse matmul on the raw table weights
    # (an unsharded GraphCF only, e.g. examples/graph_cf.py; `recsys-emb train` refuses it)
    propagation: Literal["lookup", "neighbor", "full"] = "lookup"
    adjacency: str | None = None  # None: sym (lightgcn/mf, NGCF paper form), row_self_loop (NGCF reference)
    ngcf_layer_form: Literal["reference", "paper"] = "reference"  # see module docstring
    message_dropout: list[float] = field(default_factory=lambda: [0.1])  # NGCF, per layer (last repeats)
    node_dropout: float = 0.0  # dropout on P's entries during training (0 = off)
    node_dropout_mode: Literal["edge", "node"] = "edge"  # reference code (entries) | paper (whole nodes)
    init: Literal["normal", "xavier"] | None = None  # None: normal(0.1) for lightgcn/mf, xavier for ngcf
    init_std: float = 0.1  # std of the normal init
    leaky_relu_slope: float = 0.2  # NGCF LeakyReLU slope (TensorFlow's default, used by the reference)
    l2: float = 1e-4  # BPR loss: weight of the L2 penalty on the batch embeddings (LightGCN 1e-4, NGCF 1e-5)
    l2_on: Literal["ego", "final"] = "ego"  # penalise layer-0 embeddings (LightGCN) or the final ones (NGCF reference)

    def __post_init__(self) -> None:
        if self.embedding_dim < 1 or self.num_layers < 0:
            raise ValueError("model.embedding_dim must be >= 1 and model.num_layers >= 0")
        if self.adjacency is not None and self.adjacency not in ADJACENCY_KINDS:
            raise ValueError(f"model.adjacency '{self.adjacency}' is not one of {list(ADJACENCY_KINDS)}")
        if not 0.0 <= self.node_dropout < 1.0 or any(not 0.0 <= p < 1.0 for p in self.message_dropout):
            raise ValueError("model.node_dropout and model.message_dropout must be in [0, 1)")
        if self.l2 < 0:
            raise ValueError(f"model.l2 must be >= 0, got {self.l2}")
        if self.l2_on not in ("ego", "final"):
            raise ValueError(f"model.l2_on must be 'ego' or 'final', got '{self.l2_on}'")
        if self.name == "mf":
            self.num_layers = 0

    @property
    def adjacency_kind(self) -> str:
        if self.adjacency is not None:
            return self.adjacency
        return "row_self_loop" if self.name == "ngcf" and self.ngcf_layer_form == "reference" else "sym"

    def ngcf_dims(self) -> list[int]:
        dims = self.layer_dims if self.layer_dims is not None else [self.embedding_dim] * self.num_layers
        if len(dims) != self.num_layers:
            raise ValueError(f"model.layer_dims has {len(dims)} entries for num_layers={self.num_layers}")
        return list(dims)


class GraphEmbeddings(NamedTuple):
    """Output of a graph model: final (N, D') and layer-0 (N, D) embeddings of all nodes, users first."""

    final: torch.Tensor
    ego: torch.Tensor


def table_init_fn(cfg: GraphModelConfig) -> Callable[[torch.Tensor], Any]:
    """The papers' table init: normal(0, ``init_std``) for LightGCN / MF, Xavier uniform for NGCF."""
    init = cfg.init or ("xavier" if cfg.name == "ngcf" else "normal")
    return functools.partial(nn.init.normal_, std=cfg.init_std) if init == "normal" else nn.init.xavier_uniform_


def graph_tables(num_users: int, num_items: int, cfg: GraphModelConfig) -> list[EmbeddingBagConfig]:
    """The two stock tables (init per paper: normal(std) for LightGCN, Xavier uniform for NGCF)."""
    init_fn = table_init_fn(cfg)
    return [
        EmbeddingBagConfig(name=USER_TABLE, embedding_dim=cfg.embedding_dim, num_embeddings=num_users,
                           feature_names=["user_id", "item_nbrs"], init_fn=init_fn),
        EmbeddingBagConfig(name=ITEM_TABLE, embedding_dim=cfg.embedding_dim, num_embeddings=num_items,
                           feature_names=["item_id", "user_nbrs"], init_fn=init_fn),
    ]


def check_propagation(spec: EmbeddingSpec, propagation: str) -> None:
    """Refuse a technique chain with a propagation mode that needs the plain weighted tables.

    Raises:
        ValueError: ``neighbor`` (hop 1 pools plain weighted neighbour bags) or ``full`` (reads the raw
            table weights) with any non-plain chain entry; names the group and the technique.
    """
    techniques = chain_techniques(spec)
    if propagation == "lookup" or not techniques:
        return
    group, technique = techniques[0]
    why = ("pools hop 1 over weighted neighbour bags of the plain user/item tables" if propagation == "neighbor"
           else "reads the plain table weights directly")
    raise ValueError(
        f"model.propagation: {propagation} {why}, but embedding group '{group}' uses technique '{technique}'; "
        "use model.propagation: lookup (the default: E0 by one lookup through any technique chain, then the same hops)"
    )


class GraphPropagation(nn.Module):
    """``P @ E`` for the normalised adjacency ``P`` (buffers), in ``full``, ``lookup`` or ``neighbor`` mode.

    Args:
        adj: the normalised adjacency (off-diagonal CSR + self-loop weights).
        mode: ``full`` (sparse matmul on the raw weights), ``lookup`` (E0 through the EBC, then sparse
            matmul) or ``neighbor`` (EBC weighted sum pooling over neighbour lists for hop 1).
    """

    def __init__(self, adj: NormalizedAdjacency, mode: str = "full") -> None:
        super().__init__()
        if mode not in PROPAGATION_MODES:
            raise ValueError(f"propagation mode must be one of {list(PROPAGATION_MODES)}, got '{mode}'")
        self.mode = mode
        self.num_users, self.num_items = adj.num_users, adj.num_items
        self.register_buffer("indptr", adj.indptr.clone(), persistent=False)
        self.register_buffer("indices", adj.indices.clone(), persistent=False)
        self.register_buffer("values", adj.values.clone(), persistent=False)
        self.register_buffer("diag", adj.diag.clone(), persistent=False)
        # P^T in CSR for the backward pass; for the symmetric kinds P^T's CSR is P's own CSR.
        self.symmetric = adj.kind in SYMMETRIC_KINDS
        if self.symmetric:
            perm, t_indptr, t_indices = None, adj.indptr.clone(), adj.indices.clone()
        else:
            perm = torch.sort(adj.indices, stable=True).indices  # entries grouped by column
            t_indptr = torch.zeros(adj.num_nodes + 1, dtype=torch.int64)
            t_indptr[1:] = torch.cumsum(torch.bincount(adj.indices, minlength=adj.num_nodes), 0)
            t_indices = adj.row_ids()[perm]
        self.register_buffer("t_perm", perm, persistent=False)
        self.register_buffer("t_indptr", t_indptr, persistent=False)
        self.register_buffer("t_indices", t_indices, persistent=False)
        self.register_buffer("t_values", self.transposed_values(self.values), persistent=False)
        self.has_diag = adj.has_diag()

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_items

    def dropped(self, p: float, how: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, diag) with dropout ``p`` applied (``edge``: per entry; ``node``: per sending node)."""
        if p <= 0.0:
            return self.values, self.diag
        keep = 1.0 - p
        if how == "edge":
            mask_v = torch.rand(self.values.shape, device=self.values.device) < keep
            mask_d = torch.rand(self.diag.shape, device=self.diag.device) < keep
        else:
            node_keep = torch.rand(self.num_nodes, device=self.values.device) < keep
            mask_v, mask_d = node_keep[self.indices], node_keep
        return self.values * mask_v / keep, self.diag * mask_d / keep

    def transposed_values(self, values: torch.Tensor) -> torch.Tensor:
        """Entries of ``P^T``'s CSR (``t_indptr``/``t_indices``) from entries of ``P``'s CSR."""
        return values if self.t_perm is None else values[self.t_perm]

    def hop(self, x: torch.Tensor, values: torch.Tensor | None = None, diag: torch.Tensor | None = None) -> torch.Tensor:
        """``P x`` for a dense (N, D) ``x`` -> (N, D), differentiable w.r.t. ``x``."""
        values = self.values if values is None else values
        diag = self.diag if diag is None else diag
        t_values = self.t_values if values is self.values else self.transposed_values(values)
        out = _CSRMatmul.apply(x, self.indptr, self.indices, values, self.t_indptr, self.t_indices, t_values)  # (N, D)
        if self.has_diag:
            out = out + diag.unsqueeze(1) * x
        return out

    def neighbor_kjt(self, values: torch.Tensor | None = None) -> KeyedJaggedTensor:
        """The hop-1 input: features ``user_id, item_nbrs, item_id, user_nbrs`` with stride max(U, I).

        ``user_nbrs`` bag ``u`` = items adjacent to user ``u`` (item-table ids) weighted by ``P[u, U+i]``;
        ``item_nbrs`` bag ``i`` = users adjacent to item ``i`` weighted by ``P[U+i, u]``; the ``*_id``
        bags hold the node itself with weight 1. Bags past U (or I) are empty.
        """
        values = self.values if values is None else values
        U, I = self.num_users, self.num_items
        B = max(U, I)
        dev = self.indptr.device
        split = int(self.indptr[U])  # user rows' entries come first
        deg = self.indptr.diff()
        pad_u = torch.zeros(B - U, dtype=torch.int64, device=dev)
        pad_i = torch.zeros(B - I, dtype=torch.int64, device=dev)
        lengths = torch.cat([
            torch.ones(U, dtype=torch.int64, device=dev), pad_u,  # user_id
            deg[U:], pad_i,  # item_nbrs (bags = items, ids = users)
            torch.ones(I, dtype=torch.int64, device=dev), pad_i,  # item_id
            deg[:U], pad_u,  # user_nbrs (bags = users, ids = items)
        ])
        ids = torch.cat([
            torch.arange(U, device=dev), self.indices[split:],
            torch.arange(I, device=dev), self.indices[:split] - U,
        ])
        weights = torch.cat([
            torch.ones(U, device=dev), values[split:], torch.ones(I, device=dev), values[:split],
        ])
        return KeyedJaggedTensor(keys=list(FEATURES), values=ids, lengths=lengths, weights=weights, stride=B)

    def identity_kjt(self) -> KeyedJaggedTensor:
        """The ``lookup`` input: ``user_id`` bag ``u`` = [u], ``item_id`` bag ``i`` = [i] (weight 1), the
        neighbour features empty; stride max(U, I) (bags past U or I are empty)."""
        U, I = self.num_users, self.num_items
        B = max(U, I)
        dev = self.indptr.device
        one, zero = torch.ones(1, dtype=torch.int64, device=dev), torch.zeros(1, dtype=torch.int64, device=dev)
        lengths = torch.cat([  # feature order: user_id, item_nbrs, item_id, user_nbrs
            one.expand(U), zero.expand(B - U), zero.expand(B), one.expand(I), zero.expand(B - I), zero.expand(B),
        ])
        ids = torch.cat([torch.arange(U, device=dev), torch.arange(I, device=dev)])
        return KeyedJaggedTensor(keys=list(FEATURES), values=ids, lengths=lengths,
                                 weights=torch.ones(U + I, device=dev), stride=B)

    def node_kjt(self) -> KeyedJaggedTensor:
        """The input of spec-built tables: keys ``user``, ``item``, unweighted; ``user`` bag ``u`` = [u],
        ``item`` bag ``i`` = [i]; stride max(U, I) (bags past U or I are empty)."""
        U, I = self.num_users, self.num_items
        B = max(U, I)
        dev = self.indptr.device
        one, zero = torch.ones(1, dtype=torch.int64, device=dev), torch.zeros(1, dtype=torch.int64, device=dev)
        lengths = torch.cat([one.expand(U), zero.expand(B - U), one.expand(I), zero.expand(B - I)])
        ids = torch.cat([torch.arange(U, device=dev), torch.arange(I, device=dev)])
        return KeyedJaggedTensor(keys=["user", "item"], values=ids, lengths=lengths, stride=B)

    def spec_ego(self, tables: nn.Module) -> torch.Tensor:
        """E0 (N, D) from spec-built tables (any technique chain): one call on :meth:`node_kjt`, users first."""
        pooled = tables(self.node_kjt()).to_dict()  # user, item -> (max(U, I), D)
        return torch.cat([pooled["user"][: self.num_users], pooled["item"][: self.num_items]])

    def ego(self, tables: nn.Module) -> torch.Tensor:
        """E0 (N, D): the layer-0 rows of all nodes, users first (raw weights in ``full`` mode, else a lookup)."""
        U, I = self.num_users, self.num_items
        if self.mode == "full":
            weights = tables.embedding_bags
            return torch.cat([weights[USER_TABLE].weight, weights[ITEM_TABLE].weight])
        pooled = tables(self.identity_kjt()).to_dict()
        return torch.cat([pooled["user_id"][:U], pooled["item_id"][:I]])

    def first_hop(self, tables: nn.Module, values: torch.Tensor | None = None,
                  diag: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(E0, P E0), each (N, D), from the tables (an unsharded or sharded weighted EBC)."""
        U, I = self.num_users, self.num_items
        if self.mode in ("full", "lookup"):
            e0 = self.ego(tables)  # (N, D)
            return e0, self.hop(e0, values, diag)
        pooled = tables(self.neighbor_kjt(values)).to_dict()
        e0 = torch.cat([pooled["user_id"][:U], pooled["item_id"][:I]])  # (N, D)
        pe0 = torch.cat([pooled["user_nbrs"][:U], pooled["item_nbrs"][:I]])  # (N, D)
        if self.has_diag:
            pe0 = pe0 + (self.diag if diag is None else diag).unsqueeze(1) * e0
        return e0, pe0


def csr_matmul(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``P x`` for CSR ``P`` (rows = output rows): a weighted sum-pooling over the rows' column lists.

    PyTorch's fbgemm-backed CPU ``embedding_bag`` kernel runs this about 3x faster than
    ``torch.sparse.mm`` on a CSR tensor here; ``(R + 1,), (nnz,), (nnz,), (C, D) -> (R, D)``.
    """
    return F.embedding_bag(indices, x, indptr, mode="sum", per_sample_weights=values, include_last_offset=True)


class _CSRMatmul(torch.autograd.Function):
    """``y = P x`` whose backward ``P^T g`` is the same pooling over the transposed lists (torch's own
    backward of both ``sparse.mm`` and ``embedding_bag`` is ~20x slower than the forward here)."""

    @staticmethod
    def forward(ctx, x, indptr, indices, values, t_indptr, t_indices, t_values):  # type: ignore[override]
        ctx.save_for_backward(t_indptr, t_indices, t_values)
        return csr_matmul(indptr, indices, values, x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        t_indptr, t_indices, t_values = ctx.saved_tensors
        return csr_matmul(t_indptr, t_indices, t_values, grad.contiguous()), None, None, None, None, None, None


class GraphCF(nn.Module):
    """LightGCN / NGCF / MF over a fixed graph; ``forward()`` embeds every node.

    Args:
        cfg: the model config.
        adj: the normalised adjacency of the training graph (kind ``cfg.adjacency_kind``).
        device: where tables and buffers live (``meta`` is allowed for DMP).
        embedding: the ``embedding:`` spec over the features ``user`` and ``item`` (None or plain: the
            weighted EBC of :func:`graph_tables`; else the spec's tables, ``lookup`` propagation only).
        context: data facts for the techniques, e.g. ``{"counts": {"user": (U,), "item": (I,)}}``
            training interactions per id (``dnis: {frequency: data}``).

    Example::

        graph = graph_from_interactions(users, items, num_users=3, num_items=4)
        cfg = GraphModelConfig(name="lightgcn", embedding_dim=8, num_layers=2)
        model = GraphCF(cfg, normalized_adjacency(graph, cfg.adjacency_kind))
        user_emb, item_emb = model.user_item_embeddings()  # (3, 8), (4, 8)
    """

    def __init__(self, cfg: GraphModelConfig, adj: NormalizedAdjacency, device: torch.device | str | None = None,
                 embedding: EmbeddingSpec | None = None, context: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if adj.kind != cfg.adjacency_kind:
            raise ValueError(f"adjacency kind '{adj.kind}' does not match the config's '{cfg.adjacency_kind}'")
        self.cfg = cfg
        self.num_users, self.num_items = adj.num_users, adj.num_items
        spec = embedding if embedding is not None else EmbeddingSpec()
        self.plain = plain_spec(spec, cfg.embedding_dim, family=cfg.name)
        if self.plain:
            self.tables = EmbeddingBagCollection(tables=graph_tables(adj.num_users, adj.num_items, cfg),
                                                 is_weighted=True, device=torch.device(device) if device else None)
        else:
            check_propagation(spec, cfg.propagation)
            self.tables = build_id_tables(spec, {"user": adj.num_users, "item": adj.num_items}, cfg.embedding_dim,
                                          family=cfg.name, init={"init_fn": table_init_fn(cfg)}, context=context,
                                          device=device)
        self.propagation = GraphPropagation(adj, cfg.propagation)
        if device is not None and torch.device(device).type != "meta":
            self.propagation.to(device)
        self.ngcf_layers = nn.ModuleList()
        self.dropouts = nn.ModuleList()
        if cfg.name == "ngcf":
            dims = [cfg.embedding_dim, *cfg.ngcf_dims()]
            for k in range(cfg.num_layers):
                self.ngcf_layers.append(NGCFLayer(dims[k], dims[k + 1], cfg.leaky_relu_slope, cfg.ngcf_layer_form, device))
                p = cfg.message_dropout[min(k, len(cfg.message_dropout) - 1)] if cfg.message_dropout else 0.0
                self.dropouts.append(nn.Dropout(p))

    @property
    def output_dim(self) -> int:
        if self.cfg.name == "ngcf":
            return self.cfg.embedding_dim + sum(self.cfg.ngcf_dims())
        return self.cfg.embedding_dim

    def forward(self) -> GraphEmbeddings:
        prop = self.propagation
        if self.training and self.cfg.node_dropout > 0:
            values, diag = prop.dropped(self.cfg.node_dropout, self.cfg.node_dropout_mode)
        else:
            values, diag = prop.values, prop.diag
        if not self.plain:  # spec-built tables: E0 by one lookup, every hop a sparse matmul
            e0 = prop.spec_ego(self.tables)  # (N, D)
            if self.cfg.num_layers == 0:
                return GraphEmbeddings(e0, e0)
            side = prop.hop(e0, values, diag)  # (N, D)
        elif self.cfg.num_layers == 0:  # MF: no propagation at all
            e0 = prop.first_hop(self.tables, values, diag)[0] if prop.mode == "neighbor" else prop.ego(self.tables)
            return GraphEmbeddings(e0, e0)
        else:
            e0, side = prop.first_hop(self.tables, values, diag)  # (N, D) each
        if self.cfg.name == "ngcf":
            return GraphEmbeddings(self._ngcf(e0, side, values, diag), e0)
        layers = [e0, side]
        for _ in range(self.cfg.num_layers - 1):
            layers.append(prop.hop(layers[-1], values, diag))
        return GraphEmbeddings(torch.stack(layers).mean(0), e0)  # (N, D)

    def _ngcf(self, e0: torch.Tensor, side: torch.Tensor, values: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
        outs = [e0]
        ego = e0
        for k, (layer, drop) in enumerate(zip(self.ngcf_layers, self.dropouts)):
            if k > 0:
                side = self.propagation.hop(ego, values, diag)  # (N, D_k)
            ego = drop(layer(ego, side))  # (N, D_{k+1})
            outs.append(F.normalize(ego, p=2, dim=1))
        return torch.cat(outs, dim=1)  # (N, D')

    def aux_loss(self) -> torch.Tensor | None:
        """The embedding technique's auxiliary loss (scalar; e.g. OptEmbed's threshold regulariser), or None."""
        return sum_aux_losses([self.tables])

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) -> users (U, D), items (I, D)."""
        return x[: self.num_users], x[self.num_users :]

    @torch.no_grad()
    def user_item_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The trained final embeddings (eval mode, no dropout): users (U, D'), items (I, D').

        Score of (u, i) = ``users[u] @ items[i]``; use these for retrieval.
        """
        was_training = self.training
        self.eval()
        try:
            users, items = self.split(self().final)
        finally:
            self.train(was_training)
        return users.detach().clone(), items.detach().clone()


class NGCFLayer(nn.Module):
    """One NGCF embedding-propagation layer (W1 on the sum message, W2 on the bi-interaction)."""

    def __init__(self, d_in: int, d_out: int, slope: float, form: str, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_in, d_out, device=device)
        self.w2 = nn.Linear(d_in, d_out, device=device)
        self.slope, self.form = slope, form
        if torch.device(device or "cpu").type != "meta":
            self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.w1, self.w2):  # Xavier on weights and on (1, d_out) biases, as the reference code
            nn.init.xavier_uniform_(lin.weight)
            bound = (6.0 / (1 + lin.out_features)) ** 0.5
            nn.init.uniform_(lin.bias, -bound, bound)

    def forward(self, ego: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """``ego`` = E_l (N, D), ``side`` = P E_l (N, D) -> E_{l+1} before dropout (N, D_out)."""
        bi = ego * side  # (N, D)
        if self.form == "paper":
            return F.leaky_relu(self.w1(side + ego) + self.w2(bi), self.slope)
        return F.leaky_relu(self.w1(side), self.slope) + F.leaky_relu(self.w2(bi), self.slope)


class GraphBPRTrain(nn.Module):
    """BPR loss with L2 on the batch embeddings; ``forward(batch: BPRBatch) -> (loss, (bpr, reg))``.

    ``model`` is a :class:`GraphCF` (its ``forward()`` embeds every node: the whole graph is propagated
    at every step, as both papers do); the batch only picks the rows the loss reads. Wrap THIS module in
    ``DistributedModelParallel`` (``recsys-emb train`` does); the graph model is at ``self.model``.

    ``bpr = mean(softplus(s_neg - s_pos))`` with ``s = <final user, final item>``;
    ``reg = l2 * 0.5 * (|u|^2 + |p|^2 + |n|^2) / B`` summed over the batch rows of the layer-0
    (``l2_on="ego"``, LightGCN's code) or final (``"final"``, NGCF's reference code) embeddings;
    ``aux`` = the embedding technique's ``aux_loss()`` (0 when it has none).

    Example::

        train = GraphBPRTrain(model, l2=1e-4, l2_on="ego")
        loss, (bpr, reg) = train(BPRBatch(users, pos, neg))
    """

    def __init__(self, model: nn.Module, l2: float, l2_on: str = "ego") -> None:
        super().__init__()
        if l2_on not in ("ego", "final"):
            raise ValueError(f"l2_on must be 'ego' or 'final', got '{l2_on}'")
        self.model, self.l2, self.l2_on = model, l2, l2_on
        self.num_users = model.num_users

    def forward(self, batch: BPRBatch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Args:
        batch: (B,) user ids, positive and negative item ids (item-table ids, not node ids).

        Returns:
            ``(loss, (bpr.detach(), reg.detach()))``, scalars; ``loss = bpr + reg + aux``.
        """
        users, pos, neg = batch.users, batch.pos, batch.neg
        out = self.model()
        U = self.num_users
        final_u, final_p, final_n = out.final[users], out.final[U + pos], out.final[U + neg]  # (B, D') each
        bpr = F.softplus((final_u * final_n).sum(1) - (final_u * final_p).sum(1)).mean()
        if self.l2_on == "final":
            ru, rp, rn = final_u, final_p, final_n
        else:
            ru, rp, rn = out.ego[users], out.ego[U + pos], out.ego[U + neg]  # (B, D) each
        reg = self.l2 * 0.5 * (ru.pow(2).sum() + rp.pow(2).sum() + rn.pow(2).sum()) / users.numel()
        loss = bpr + reg
        aux = sum_aux_losses([self.model])  # after the forward: a technique may use what it just stored
        return (loss if aux is None else loss + aux), (bpr.detach(), reg.detach())
