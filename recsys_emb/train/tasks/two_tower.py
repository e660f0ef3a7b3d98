"""Two-tower task (``task: two_tower``): user and item towers over one TorchRec EBC, in-batch softmax.

Model: :class:`recsys_emb.models.two_tower.TwoTower` (Yi et al., RecSys 2019: in-batch sampled
softmax with logQ correction), trained as :class:`TwoTowerTrain` under ``DistributedModelParallel``
like every family. Data, evaluation and files are the graph task's (:mod:`.graph`): an
NGCF/LightGCN-format folder, full-ranking recall@K / NDCG@K with training (and validation) items
excluded, ``embeddings.pt`` with the final user and item embeddings for candidate retrieval.

- Tables: ``embedding:`` (features ``user`` and ``item``; plain = the two stock tables), with the
  training interactions per user / item as the techniques' ``counts``.
- Initial weights: tables normal(0, ``model.init_std``) and default ``nn.Linear`` towers, drawn from
  ``torch.manual_seed(train.seed)`` on one unsharded model and copied into every rank's shards.
- Batches: every training (user, item) pair once per epoch in an order fixed by ``(seed, epoch)``
  (:class:`recsys_emb.data.graphs.BPRSampler` without negatives); each global batch is split into
  equal parts, one per rank. The in-batch negatives of a row are the other positives of its RANK's
  part (no cross-rank gather), so N ranks train with ``batch_size / N`` candidates per softmax: set
  ``train.batch_size`` per rank accordingly.
- logQ correction: q_j = item j's share of the training pairs (a buffer set before sharding).

Deviation from the first version (``train_two_tower``, unsharded): tables used ``torch.optim.SparseAdam``
(moments of the rows in a batch only); under ``sharding: data_parallel`` (the default on CPU, where
FBGEMM has no fused Adam) they use dense Adam, whose moments decay for every row at every step.
Sharded tables train with FBGEMM's fused optimizers instead (``rowwise_adagrad`` on CPU).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recsys_emb.config.two_tower import TwoTowerExperimentConfig
from recsys_emb.data.graphs import BPRSampler, GraphDataset
from recsys_emb.models.two_tower import TwoTower, TwoTowerTrain
from recsys_emb.train.parallel import inner_model
from recsys_emb.train.tasks.graph import GraphTask, graph_context
from recsys_emb.train.trainer import eval_mode


def item_counts(graph: GraphDataset) -> torch.Tensor:
    """(I,) training interactions per item (the logQ correction's frequencies)."""
    return torch.bincount(torch.from_numpy(graph.train.indices.astype("int64")), minlength=graph.num_items)


def build_two_tower(cfg: TwoTowerExperimentConfig, graph: GraphDataset, device: torch.device | str | None = None) -> TwoTower:
    """The unsharded model with its init drawn from ``torch.manual_seed(cfg.train.seed)`` and the item frequencies set."""
    torch.manual_seed(cfg.train.seed)
    model = TwoTower(graph.num_users, graph.num_items, cfg.model, device, embedding=cfg.embedding,
                     context=graph_context(graph))
    model.set_item_frequency(item_counts(graph))
    return model


class TwoTowerTask(GraphTask):
    """The two-tower family on :class:`TwoTowerExperimentConfig` (see the module docstring)."""

    name = "two_tower"

    def __init__(self, cfg: TwoTowerExperimentConfig, graph: GraphDataset | None = None) -> None:
        super().__init__(cfg, graph)  # type: ignore[arg-type]

    def make_sampler(self) -> BPRSampler:
        assert self.graph is not None
        return BPRSampler(self.graph.train, self.graph.num_items, self.cfg.train.batch_size, self.cfg.train.seed,
                          negatives=False)

    def build_model(self) -> nn.Module:
        assert self.graph is not None
        model = TwoTower(self.graph.num_users, self.graph.num_items, self.cfg.model, device="meta",  # type: ignore[arg-type]
                         embedding=self.cfg.embedding, context=graph_context(self.graph))
        model.log_q = model.log_q.to(self.env.device)
        model.set_item_frequency(item_counts(self.graph))
        return TwoTowerTrain(model)

    def initial_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        reference = build_two_tower(self.cfg, self.graph, device="cpu")  # type: ignore[arg-type]
        return {f"model.{key}": value for key, value in reference.state_dict().items() if key != "log_q"}

    def embeddings(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        with eval_mode(model):
            tower = inner_model(model)
            users, items = tower.user_embeddings(), tower.item_embeddings()
        return users.detach(), items.detach()

    def finish(self, model: nn.Module, run_dir: Any, env: Any) -> dict[str, Any]:
        return {**super().finish(model, run_dir, env), "normalize": self.cfg.model.normalize}
