"""Two-tower retrieval model (matrix factorisation when the towers are empty) with in-batch softmax.

Shape glossary: B batch of (user, positive item) pairs, D embedding dim, U users, N items.

User and item ids are looked up in one stock ``torchrec.EmbeddingBagCollection`` with two tables
(``user`` and ``item``, one id per bag), so the big parameters are ordinary TorchRec tables that a
planner could shard. An optional MLP per tower maps the table rows to the final embedding; with
``tower_layers: []`` the score is the plain dot product of the two rows (matrix factorisation).
The ``embedding:`` spec (recsys_emb/modules/spec.py; features ``user`` and ``item``) may build the
tables through any technique chain instead (e.g. ``unified`` item rows); a plain spec is exactly the
stock EBC, and a technique's ``aux_loss()`` joins the loss.

Loss: in-batch sampled softmax (Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large
Corpus Item Recommendations", RecSys 2019): for each user in the batch the other positives are the
negatives, ``logits = u @ i.T / temperature`` (B, B), cross entropy with the diagonal as the target.

* ``logq_correction``: subtract ``log q_j`` from column j, q_j the probability that item j appears
  in a batch (its share of training interactions), as in Yi et al., so popular items are not
  over-penalised for being frequent negatives.
* Accidental hits (the same item as another row's positive) are masked out of that row's negatives.
* ``normalize``: L2-normalise both towers (cosine similarity); the exported embeddings are the
  normalised ones, so inner-product retrieval over them is exact cosine retrieval.

Training: ``task: two_tower`` (:mod:`recsys_emb.train.tasks.two_tower`) trains :class:`TwoTowerTrain`
through the one trainer, under ``DistributedModelParallel`` like every family.

Reduction: with ``tower_layers: []``, ``normalize: false`` the model is exactly MF, ``score(u, i) =
<E_user[u], E_item[i]>`` (tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_emb.config.embedding import EmbeddingSpec
from recsys_emb.modules.spec import sum_aux_losses
from recsys_emb.models.id_tables import build_id_tables, plain_spec


@dataclass
class TwoTowerConfig:
    """Options of the two-tower model (the ``model:`` section of a ``task: two_tower`` experiment)."""

    name: str = "two_tower"  # a label (metrics.json); with tower_layers: [] and normalize: false this is MF
    embedding_dim: int = 64  # table width D (a multiple of 4 for FBGEMM)
    tower_layers: list[int] = field(default_factory=list)  # MLP widths per tower; [] = matrix factorisation
    normalize: bool = True  # L2-normalise both towers (cosine scores)
    temperature: float = 0.1  # softmax temperature
    logq_correction: bool = True  # subtract log item frequency from in-batch logits
    init_std: float = 0.1  # N(0, init_std) table init
    weight_decay: float = 0.0  # L2 on the rows looked up in a batch (added to the loss)

    def __post_init__(self) -> None:
        if self.embedding_dim < 1 or self.temperature <= 0 or self.init_std <= 0 or self.weight_decay < 0:
            raise ValueError("model: embedding_dim >= 1, temperature > 0, init_std > 0, weight_decay >= 0 required")
        if any(w < 1 for w in self.tower_layers):
            raise ValueError(f"model.tower_layers must be positive widths, got {self.tower_layers}")


def _tower(dim: int, layers: list[int]) -> nn.Module:
    mods: list[nn.Module] = []
    width = dim
    for i, out in enumerate(layers):
        mods.append(nn.Linear(width, out))
        if i < len(layers) - 1:
            mods.append(nn.ReLU())
        width = out
    return nn.Sequential(*mods)


def _one_hot_lengths(ids: Tensor, first: bool) -> Tensor:
    """KJT lengths for keys ``[user, item]`` with one id per bag under one key and empty bags under the other."""
    ones, zeros = (torch.full((ids.numel(),), v, dtype=torch.int32, device=ids.device) for v in (1, 0))
    return torch.cat([ones, zeros] if first else [zeros, ones])


class TwoTower(nn.Module):
    """User tower x item tower over one ``EmbeddingBagCollection`` with tables ``user`` and ``item``.

    Args:
        num_users: U.
        num_items: N.
        config: model options.
        device: table device (``meta`` for DMP).
        embedding: the ``embedding:`` spec over the features ``user`` and ``item`` (None or plain: the
            stock EBC with tables ``user`` and ``item``).
        context: data facts for the techniques, e.g. ``{"counts": {"user": (U,), "item": (N,)}}``
            training interactions per id (``dnis: {frequency: data}``).

    Example::

        model = TwoTower(100, 500, TwoTowerConfig(embedding_dim=16))
        loss = model.loss(torch.tensor([0, 1, 2]), torch.tensor([10, 11, 12]))
        users = model.user_embeddings()  # (100, 16)
    """

    def __init__(self, num_users: int, num_items: int, config: TwoTowerConfig, device: torch.device | str | None = None,
                 embedding: EmbeddingSpec | None = None, context: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.num_users, self.num_items = num_users, num_items
        spec = embedding if embedding is not None else EmbeddingSpec()
        if plain_spec(spec, config.embedding_dim, family="two_tower"):
            spec = EmbeddingSpec()  # one plain group: the stock EBC, tables `user` and `item` (SUM pooling)
        self.embedding = build_id_tables(spec, {"user": num_users, "item": num_items}, config.embedding_dim,
                                         family="two_tower", init={"init_fn": partial(nn.init.normal_, std=config.init_std)},
                                         context=context, device=device)
        self.user_tower = _tower(config.embedding_dim, list(config.tower_layers))
        self.item_tower = _tower(config.embedding_dim, list(config.tower_layers))
        # log item frequency; a buffer is never built on meta (DMP would zero it), so it starts on the CPU there
        buffer_device = None if device is None or torch.device(device).type == "meta" else device
        self.register_buffer("log_q", torch.zeros(num_items, device=buffer_device), persistent=True)

    @property
    def output_dim(self) -> int:
        return self.config.tower_layers[-1] if self.config.tower_layers else self.config.embedding_dim

    def set_item_frequency(self, counts: Tensor) -> None:
        """Set q_j from training interaction counts (N,) for the logQ correction."""
        q = counts.float().clamp_min(1.0) / counts.float().sum().clamp_min(1.0)
        self.log_q.copy_(q.log())

    def _lookup(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """Table rows of (B,) users and (B,) items in one EBC call: ``(B, D), (B, D)``."""
        b = users.numel()
        if items.numel() != b:
            raise ValueError(f"users and items must have the same length, got {b} and {items.numel()}")
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["user", "item"],
            values=torch.cat([users.reshape(-1), items.reshape(-1)]).long(),
            lengths=torch.ones(2 * b, dtype=torch.int32, device=users.device),
        )
        kt = self.embedding(kjt).to_dict()
        return kt["user"], kt["item"]

    def _finish(self, x: Tensor, tower: nn.Module) -> Tensor:
        x = tower(x)
        return F.normalize(x, dim=-1) if self.config.normalize else x

    def encode_users(self, users: Tensor, raw: bool = False) -> Tensor:
        """(B,) user ids -> (B, D_out) user embeddings (``raw``: table rows before the tower)."""
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=["user", "item"], values=users.reshape(-1).long(),
                                                  lengths=_one_hot_lengths(users, first=True))
        rows = self.embedding(kjt)["user"]
        return rows if raw else self._finish(rows, self.user_tower)

    def encode_items(self, items: Tensor, raw: bool = False) -> Tensor:
        """(B,) item ids -> (B, D_out) item embeddings (``raw``: table rows before the tower)."""
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=["user", "item"], values=items.reshape(-1).long(),
                                                  lengths=_one_hot_lengths(items, first=False))
        rows = self.embedding(kjt)["item"]
        return rows if raw else self._finish(rows, self.item_tower)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """(B,) users, (B,) items -> (B,) scores <user_emb, item_emb> (no temperature)."""
        u, i = self._lookup(users, items)
        return (self._finish(u, self.user_tower) * self._finish(i, self.item_tower)).sum(-1)

    def loss(self, users: Tensor, items: Tensor) -> Tensor:
        """In-batch softmax loss of (B,) positive pairs (mean over the batch), plus the embedding's ``aux_loss()``."""
        u_raw, i_raw = self._lookup(users, items)
        u, i = self._finish(u_raw, self.user_tower), self._finish(i_raw, self.item_tower)
        logits = u @ i.T / self.config.temperature  # (B, B)
        if self.config.logq_correction:
            logits = logits - self.log_q[items].unsqueeze(0)
        same = items.unsqueeze(0) == items.unsqueeze(1)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))  # accidental hits are not negatives
        target = torch.arange(users.numel(), device=users.device)
        loss = F.cross_entropy(logits, target)
        if self.config.weight_decay:
            loss = loss + self.config.weight_decay * (u_raw.pow(2).sum(-1) + i_raw.pow(2).sum(-1)).mean()
        aux = sum_aux_losses([self.embedding])  # a technique's regulariser (e.g. OptEmbed's thresholds)
        return loss if aux is None else loss + aux

    @torch.no_grad()
    def user_embeddings(self, batch_size: int = 65536) -> Tensor:
        """(U, D_out) embeddings of every user."""
        ids = torch.arange(self.num_users, device=self.log_q.device)
        return torch.cat([self.encode_users(ids[s : s + batch_size]) for s in range(0, self.num_users, batch_size)])

    @torch.no_grad()
    def item_embeddings(self, batch_size: int = 65536) -> Tensor:
        """(N, D_out) embeddings of every item."""
        ids = torch.arange(self.num_items, device=self.log_q.device)
        return torch.cat([self.encode_items(ids[s : s + batch_size]) for s in range(0, self.num_items, batch_size)])


class TwoTowerTrain(nn.Module):
    """The training module of ``task: two_tower``: ``forward(batch) -> (loss, ())``, the in-batch softmax
    loss of the batch's ``(users, pos)`` pairs (:meth:`TwoTower.loss`); the model is at ``self.model``."""

    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch) -> tuple[Tensor, tuple[()]]:  # noqa: ANN001 - a BPRBatch (negatives unused)
        return self.model.loss(batch.users, batch.pos), ()
