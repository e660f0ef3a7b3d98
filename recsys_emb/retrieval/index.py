"""Maximum-inner-product item indexes: an exact torch reference and FAISS (flat, IVF-Flat, HNSW).

Shape glossary: N items in the index, D embedding dim, B queries, k results per query.

All indexes share one interface (:class:`ItemIndex`):

* ``search(queries (B, D), k, exclude=None) -> SearchResult(scores (B, k), ids (B, k))``. Ids are
  the *global* item ids given at build time (``item_ids``; default ``0..N-1``), best first. When a
  query has fewer than ``k`` admissible items (``k`` larger than the catalogue minus the excluded
  items, or an approximate index that found fewer) the row is padded with id ``-1`` and score
  ``-inf``.
* ``exclude``: per-query item ids that must not be returned (a user's already-seen items), as a
  :class:`Csr` ``(offsets (B + 1,), ids)`` of global ids or a list of B id tensors. Ids not in the index are
  ignored, so one exclusion list works for sub-indexes over part of the catalogue.
* Queries are processed in batches of ``config.query_batch_size`` (tqdm bar when
  ``config.show_progress``).
* ``save(path)`` writes one file atomically: a ``torch.save`` dict of tensors, strings and numbers
  only (FAISS indexes serialised to a uint8 tensor with ``faiss.serialize_index``), read back with
  ``torch.load(weights_only=True)`` by :func:`load_index` (no pickle of arbitrary objects).

Kinds:

* ``exact``: the reference. Chunked matmul over item blocks of ``config.chunk_size`` with a running
  ``torch.topk`` merge, so memory is ``O(B * (chunk_size + k))`` whatever N is. Excluded items get
  score ``-inf`` before the top-k.
* ``flat``: ``faiss.IndexFlatIP``, exact (the FAISS twin of ``exact``; equal up to float rounding).
* ``ivf_flat``: ``faiss.IndexIVFFlat`` with an inner-product coarse quantizer; ``nlist`` lists
  (``0``: ``4 * sqrt(N)``, capped so each list gets >= 39 training points; an explicit ``nlist`` is
  capped at N), ``nprobe`` probed. With ``mips_transform: augment`` (see ``hnsw``) the lists are
  built over the augmented items instead: an L2 coarse quantizer (``IndexFlatL2``, k-means in L2) and
  ``IndexIVFFlat(..., METRIC_L2)`` in D + 1 dims, queries padded with 0, scores recovered as for
  HNSW. An inner-product quantizer over vectors of very different norms assigns queries to the lists
  whose centroids have large norms rather than the lists holding their best items.
* ``hnsw``: ``faiss.IndexHNSWFlat(D, M, METRIC_INNER_PRODUCT)``; ``efSearch`` is raised to the
  number of results requested when it is smaller (``ef_search_floor: false`` keeps it as given: FAISS
  then searches with a smaller candidate list, faster and less exact, and a row may come back with
  fewer than k results, padded as above). Inner product is not a metric, and an HNSW graph
  built with it on vectors of very different norms (LightGCN/BPR embeddings) navigates poorly.
  ``mips_transform: augment`` applies the MIPS-to-nearest-neighbour reduction of Bachrach et al.
  (RecSys 2014, "Speeding up the Xbox recommender system using a Euclidean transformation for
  inner-product spaces"): items ``x -> [x, sqrt(M^2 - |x|^2)]`` with ``M`` the largest item norm,
  queries ``q -> [q, 0]``, and an L2 HNSW graph (``METRIC_L2``, D + 1 dims). Then
  ``|q' - x'|^2 = |q|^2 + M^2 - 2 q.x``, so the L2 order is the inner-product order, and the
  returned score is recovered as ``q.x = (|q|^2 + M^2 - |q' - x'|^2) / 2`` (float rounding of the
  order of ``1e-6 M^2``). For L2-normalised items the extra coordinate is 0 and nothing changes.
  The same transform applies to ``ivf_flat`` (above); ``flat`` ignores it (it is exact anyway).

FAISS cannot exclude a different id set per query in one batched call, so FAISS indexes over-fetch:
queries are sorted by exclusion-list length, each batch asks for ``k + max excluded in the batch``
results, drops the excluded ones and keeps the first ``k`` (sorting keeps the over-fetch close to
each query's own need). FAISS is imported lazily: the ``exact`` kind works without it.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from recsys_emb.console import tqdm

from recsys_emb.utils import atomic_write_bytes

INDEX_KINDS = ("exact", "flat", "ivf_flat", "hnsw")
MIPS_TRANSFORMS = ("none", "augment")
_FORMAT = "recsys_emb.item_index"
_FORMAT_VERSION = 1



@dataclass
class IndexConfig:
    """Options of an item index (the YAML ``index:`` section)."""

    kind: str = "exact"  # exact | flat | ivf_flat | hnsw
    query_batch_size: int = 1024  # queries per search batch
    chunk_size: int = 16384  # exact: items per matmul block
    nlist: int = 0  # ivf_flat: number of inverted lists (0 = 4 * sqrt(N), capped at N // 39)
    nprobe: int = 16  # ivf_flat: lists probed per query
    hnsw_m: int = 32  # hnsw: graph degree M
    ef_construction: int = 200  # hnsw: efConstruction
    ef_search: int = 128  # hnsw: efSearch (raised to the number of results when smaller, unless ef_search_floor false)
    ef_search_floor: bool = True  # hnsw: raise efSearch to the results fetched (K + exclusions); false: as given
    mips_transform: str = "none"  # hnsw, ivf_flat: none (inner product) | augment (L2 graph / L2 lists on [x, sqrt(M^2-|x|^2)])
    threads: int = 0  # FAISS OpenMP threads (0 = FAISS default)
    seed: int = 0  # ivf_flat: k-means seed of the coarse quantizer
    show_progress: bool = False  # tqdm bar over query batches

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index.kind {self.kind!r} is not one of {list(INDEX_KINDS)}")
        for name in ("query_batch_size", "chunk_size", "nprobe", "hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise ValueError(f"index.{name} must be >= 1, got {getattr(self, name)}")
        if self.nlist < 0 or self.threads < 0:
            raise ValueError("index.nlist and index.threads must be >= 0")
        if self.mips_transform not in MIPS_TRANSFORMS:
            raise ValueError(f"index.mips_transform {self.mips_transform!r} is not one of {list(MIPS_TRANSFORMS)}")


class SearchResult(NamedTuple):
    """``scores`` (B, k) float32 inner products and ``ids`` (B, k) int64 global ids, best first; padding -inf / -1."""

    scores: Tensor
    ids: Tensor


class Csr(NamedTuple):
    """Per-query id lists in CSR form: query ``q`` owns ``ids[offsets[q]:offsets[q + 1]]``."""

    offsets: Tensor  # (B + 1,) int64
    ids: Tensor  # (nnz,) int64


Exclude = Csr | Sequence[Tensor] | None


def exclude_to_csr(exclude: Exclude, num_queries: int) -> Csr:
    """Normalise ``exclude`` (a :class:`Csr`, a list of B id tensors, or None) to a :class:`Csr`."""
    if exclude is None:
        return Csr(torch.zeros(num_queries + 1, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    if isinstance(exclude, Csr):
        if exclude.offsets.numel() != num_queries + 1:
            raise ValueError(f"exclude offsets have {exclude.offsets.numel()} entries for {num_queries} queries")
        return Csr(exclude.offsets.long(), exclude.ids.long())
    lists = list(exclude)
    if len(lists) != num_queries:
        raise ValueError(f"exclude has {len(lists)} lists for {num_queries} queries")
    lengths = torch.tensor([int(x.numel()) for x in lists], dtype=torch.long)
    offsets = torch.zeros(num_queries + 1, dtype=torch.long)
    torch.cumsum(lengths, 0, out=offsets[1:])
    ids = torch.cat([x.reshape(-1).long() for x in lists]) if lists else torch.zeros(0, dtype=torch.long)
    return Csr(offsets, ids)


def _pad(result: SearchResult, k: int) -> SearchResult:
    b, have = result.ids.shape
    if have >= k:
        return result
    scores = torch.full((b, k), float("-inf"), dtype=torch.float32)
    ids = torch.full((b, k), -1, dtype=torch.long)
    scores[:, :have] = result.scores
    ids[:, :have] = result.ids
    return SearchResult(scores, ids)


class ItemIndex:
    """Base class: id mapping, batching, exclusion plumbing, save/load. Subclasses implement ``_search_local``.

    Args:
        embeddings: (N, D) item embeddings (copied to float32 CPU).
        item_ids: (N,) global id of each row (distinct, >= 0); default ``arange(N)``.
        config: index options.
    """

    kind: str = ""

    def __init__(self, embeddings: Tensor, item_ids: Tensor | None, config: IndexConfig) -> None:
        if embeddings.dim() != 2:
            raise ValueError(f"item embeddings must be (N, D), got shape {tuple(embeddings.shape)}")
        n = embeddings.shape[0]
        item_ids = torch.arange(n) if item_ids is None else item_ids.reshape(-1).long().cpu()
        if item_ids.numel() != n:
            raise ValueError(f"item_ids has {item_ids.numel()} entries for {n} embeddings")
        if n and int(item_ids.min()) < 0:
            raise ValueError("item_ids must be >= 0")
        if torch.unique(item_ids).numel() != n:
            raise ValueError("item_ids must be distinct")
        self.config = config
        self.num_items = n
        self.dim = int(embeddings.shape[1])
        self.item_ids = item_ids
        self._max_id = int(item_ids.max()) if n else -1
        self._local = torch.full((self._max_id + 2,), -1, dtype=torch.long)  # global id -> row (-1: absent)
        self._local[item_ids] = torch.arange(n)

    # -- global <-> local ids -------------------------------------------------------------------
    def to_local(self, ids: Tensor) -> Tensor:
        """Global ids -> rows of this index (-1 for ids not in it)."""
        ids = ids.long()
        inside = (ids >= 0) & (ids <= self._max_id)
        out = torch.full_like(ids, -1)
        out[inside] = self._local[ids[inside]]
        return out

    def to_global(self, local: Tensor) -> Tensor:
        out = torch.full_like(local, -1)
        ok = local >= 0
        out[ok] = self.item_ids[local[ok]]
        return out

    # -- search -----------------------------------------------------------------------------------
    def search(self, queries: Tensor, k: int, exclude: Exclude = None) -> SearchResult:
        """Top-``k`` items by inner product for each query, excluding ``exclude``; see the module doc."""
        if queries.dim() != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (B, {self.dim}), got shape {tuple(queries.shape)}")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        b = queries.shape[0]
        queries = queries.detach().to("cpu", torch.float32).contiguous()
        offsets, ids = exclude_to_csr(exclude, b)
        lengths = offsets[1:] - offsets[:-1]
        rows = torch.repeat_interleave(torch.arange(b), lengths)
        local = self.to_local(ids)
        keep = local >= 0
        rows, local = rows[keep], local[keep]  # exclusions that concern this index, by query
        out_scores = torch.full((b, k), float("-inf"), dtype=torch.float32)
        out_ids = torch.full((b, k), -1, dtype=torch.long)
        if b == 0 or k == 0 or self.num_items == 0:
            return SearchResult(out_scores, out_ids)
        n_excl = torch.bincount(rows, minlength=b)
        order = torch.argsort(n_excl, stable=True)  # batch queries with similar exclusion counts together
        rank = torch.empty_like(order)
        rank[order] = torch.arange(b)
        # exclusions grouped in batch order: sort (rank of query, local id)
        perm = torch.argsort(rank[rows] * (self.num_items + 1) + local)
        ex_rows, ex_local = rank[rows][perm], local[perm]
        ex_offsets = torch.zeros(b + 1, dtype=torch.long)
        torch.cumsum(torch.bincount(ex_rows, minlength=b), 0, out=ex_offsets[1:])
        bs = self.config.query_batch_size
        starts = range(0, b, bs)
        bar = tqdm(starts, desc=f"search[{self.kind}]", unit="batch", disable=not self.config.show_progress, leave=False)
        for s in bar:
            e = min(s + bs, b)
            sel = order[s:e]
            lo, hi = int(ex_offsets[s]), int(ex_offsets[e])
            batch_rows = ex_rows[lo:hi] - s
            res = self._search_local(queries[sel], k, batch_rows, ex_local[lo:hi])
            res = _pad(res, k)
            out_scores[sel] = res.scores[:, :k]
            out_ids[sel] = self.to_global(res.ids[:, :k])
        return SearchResult(out_scores, out_ids)

    def _search_local(self, q: Tensor, k: int, ex_rows: Tensor, ex_local: Tensor) -> SearchResult:
        """Top-k of ``q`` (b, D) over local rows, excluding pairs ``(ex_rows[i], ex_local[i])``; ids are local."""
        raise NotImplementedError

    # -- persistence ------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        """Write the index to one file atomically (see :func:`load_index`)."""
        state = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "kind": self.kind,
            "config": json.dumps(asdict(self.config)),
            "dim": self.dim,
            "item_ids": self.item_ids.clone(),
            **self._state(),
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(path, buf.getvalue())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, num_items={self.num_items}, dim={self.dim})"


class ExactIndex(ItemIndex):
    """Exact maximum inner product search in torch: the reference every other kind is checked against."""

    kind = "exact"

    def __init__(self, embeddings: Tensor, item_ids: Tensor | None = None, config: IndexConfig | None = None) -> None:
        super().__init__(embeddings, item_ids, config or IndexConfig(kind="exact"))
        self.embeddings = embeddings.detach().to("cpu", torch.float32).contiguous()  # (N, D)

    def _search_local(self, q: Tensor, k: int, ex_rows: Tensor, ex_local: Tensor) -> SearchResult:
        b = q.shape[0]
        best_s = torch.empty((b, 0), dtype=torch.float32)
        best_i = torch.empty((b, 0), dtype=torch.long)
        chunk = self.config.chunk_size
        for start in range(0, self.num_items, chunk):
            end = min(start + chunk, self.num_items)
            s = q @ self.embeddings[start:end].T  # (b, n_chunk)
            m = (ex_local >= start) & (ex_local < end)
            s[ex_rows[m], ex_local[m] - start] = float("-inf")
            cand_s = torch.cat([best_s, s], 1)  # (b, k + n_chunk)
            cand_i = torch.cat([best_i, torch.arange(start, end).expand(b, -1)], 1)
            top_s, pos = torch.topk(cand_s, min(k, cand_s.shape[1]), dim=1)
            best_s, best_i = top_s, torch.gather(cand_i, 1, pos)
        best_i = torch.where(torch.isneginf(best_s), torch.full_like(best_i, -1), best_i)
        return SearchResult(best_s, best_i)

    def _state(self) -> dict[str, Any]:
        return {"embeddings": self.embeddings.clone()}


def _faiss() -> Any:
    import faiss  # noqa: PLC0415  (lazy: the exact index works without faiss)

    return faiss


class FaissIndex(ItemIndex):
    """FAISS inner-product index (``flat``, ``ivf_flat`` or ``hnsw``; the last two optionally over the
    augmented items, ``mips_transform: augment``) behind the :class:`ItemIndex` interface."""

    def __init__(
        self,
        embeddings: Tensor,
        item_ids: Tensor | None = None,
        config: IndexConfig | None = None,
        *,
        _faiss_index: Any = None,
        _max_norm: float = 0.0,
    ) -> None:
        config = config or IndexConfig(kind="flat")
        if config.kind == "exact":
            raise ValueError("FaissIndex needs kind flat, ivf_flat or hnsw (use ExactIndex for 'exact')")
        super().__init__(embeddings, item_ids, config)
        self.kind = config.kind
        faiss = _faiss()
        if config.threads:
            faiss.omp_set_num_threads(config.threads)
        # augment: an L2 HNSW graph / L2 IVF lists over [x, sqrt(M^2 - |x|^2)] (see the module docstring)
        self.augmented = config.kind in ("hnsw", "ivf_flat") and config.mips_transform == "augment"
        self.max_norm = float(_max_norm)
        if _faiss_index is not None:
            self.index = _faiss_index
            return
        x = embeddings.detach().to("cpu", torch.float32).contiguous().numpy()
        if self.augmented:
            x, self.max_norm = augment_items(x)
        n, d = x.shape
        if config.kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif config.kind == "ivf_flat":
            nlist = config.nlist or int(round(4 * math.sqrt(max(n, 1))))
            nlist = max(1, min(nlist, n // 39 if config.nlist == 0 else n))
            if self.augmented:
                quantizer = faiss.IndexFlatL2(d)
                index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
            else:
                quantizer = faiss.IndexFlatIP(d)
                index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = config.seed
            if n:
                index.train(x)
            index.nprobe = min(config.nprobe, nlist)
        else:  # hnsw
            metric = faiss.METRIC_L2 if self.augmented else faiss.METRIC_INNER_PRODUCT
            index = faiss.IndexHNSWFlat(d, config.hnsw_m, metric)
            index.hnsw.efConstruction = config.ef_construction
            index.hnsw.efSearch = config.ef_search
        if n:
            index.add(x)
        self.index = index

    @property
    def nlist(self) -> int | None:
        return int(self.index.nlist) if self.kind == "ivf_flat" else None

    def _search_local(self, q: Tensor, k: int, ex_rows: Tensor, ex_local: Tensor) -> SearchResult:
        b = q.shape[0]
        max_ex = int(torch.bincount(ex_rows, minlength=b).max()) if ex_rows.numel() else 0
        k_fetch = min(k + max_ex, self.num_items)
        if self.kind == "hnsw":
            floor = k_fetch if self.config.ef_search_floor else 0  # FAISS accepts efSearch < k (short rows: -1)
            self.index.hnsw.efSearch = max(self.config.ef_search, floor)
        if self.augmented:
            qn = q.numpy()
            dist, lab = self.index.search(np.ascontiguousarray(np.pad(qn, ((0, 0), (0, 1)))), k_fetch)
            q_sq = (q.double() ** 2).sum(1, keepdim=True)  # (b, 1)
            scores = ((q_sq + self.max_norm**2 - torch.from_numpy(dist).double()) / 2).float()
            scores[torch.from_numpy(lab) < 0] = float("-inf")
        else:
            dist, lab = self.index.search(q.numpy(), k_fetch)
            scores = torch.from_numpy(dist).float()  # (b, k_fetch)
        labels = torch.from_numpy(lab).long()
        valid = labels >= 0
        if ex_rows.numel():
            width = self.num_items + 1
            row_ids = torch.arange(b).unsqueeze(1).expand_as(labels)
            excluded = torch.isin(row_ids * width + labels, ex_rows * width + ex_local)
            valid &= ~excluded
        # keep the first k valid entries of each row, in FAISS's (descending) order
        pos = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)[:, :k]
        scores, labels, valid = (torch.gather(t, 1, pos) for t in (scores, labels, valid))
        scores = torch.where(valid, scores, torch.full_like(scores, float("-inf")))
        labels = torch.where(valid, labels, torch.full_like(labels, -1))
        return SearchResult(scores, labels)

    def _state(self) -> dict[str, Any]:
        faiss = _faiss()
        return {"faiss": torch.from_numpy(np.asarray(faiss.serialize_index(self.index)).copy()),
                "max_norm": self.max_norm}


def augment_items(x: np.ndarray) -> tuple[np.ndarray, float]:
    """``(N, D) -> (N, D + 1)`` rows ``[x, sqrt(M^2 - |x|^2)]`` with ``M = max |x|``; returns ``(rows, M)``."""
    x64 = x.astype(np.float64)
    sq = (x64 * x64).sum(1)
    max_sq = float(sq.max()) if len(sq) else 0.0
    extra = np.sqrt(np.maximum(max_sq - sq, 0.0))
    return np.ascontiguousarray(np.concatenate([x64, extra[:, None]], 1).astype(np.float32)), float(np.sqrt(max_sq))


def build_index(embeddings: Tensor, config: IndexConfig | None = None, item_ids: Tensor | None = None) -> ItemIndex:
    """Build the index named by ``config.kind`` over ``embeddings`` (rows = ``item_ids``)."""
    config = config or IndexConfig()
    if config.kind == "exact":
        return ExactIndex(embeddings, item_ids, config)
    return FaissIndex(embeddings, item_ids, config)


def load_index(path: str | Path) -> ItemIndex:
    """Read an index written by :meth:`ItemIndex.save` (``torch.load(weights_only=True)``)."""
    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a recsys_emb item index file")
    if state.get("version") != _FORMAT_VERSION:
        raise ValueError(f"{path}: index format version {state.get('version')} is not supported (expected {_FORMAT_VERSION})")
    config = IndexConfig(**{"mips_transform": "none", **json.loads(state["config"])})
    item_ids = state["item_ids"]
    if state["kind"] == "exact":
        return ExactIndex(state["embeddings"], item_ids, config)
    faiss = _faiss()
    index = faiss.deserialize_index(state["faiss"].numpy())
    # FaissIndex keeps no raw embeddings; the base class needs only N and D
    placeholder = torch.empty((int(item_ids.numel()), int(state["dim"])))
    return FaissIndex(placeholder, item_ids, config, _faiss_index=index, _max_norm=float(state.get("max_norm", 0.0)))
