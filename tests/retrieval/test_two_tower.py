"""Two-tower / MF model: MF reduction and the in-batch softmax loss against a reference (training through the
trainer: tests/train/tasks/test_two_tower.py)."""

from __future__ import annotations

import math

import torch

from recsys_emb.models.two_tower import TwoTower, TwoTowerConfig


def _tables(model: TwoTower) -> tuple[torch.Tensor, torch.Tensor]:
    bags = model.embedding.embedding_bags
    return bags["user"].weight.detach(), bags["item"].weight.detach()


def test_mf_reduction_scores_are_dot_products_of_table_rows():
    torch.manual_seed(0)
    model = TwoTower(7, 11, TwoTowerConfig(embedding_dim=8, normalize=False))
    u_w, i_w = _tables(model)
    users, items = torch.tensor([0, 3, 6, 3]), torch.tensor([10, 0, 5, 5])
    assert torch.allclose(model(users, items), (u_w[users] * i_w[items]).sum(1), atol=1e-6)
    assert torch.allclose(model.user_embeddings(), u_w) and torch.allclose(model.item_embeddings(), i_w)


def test_in_batch_softmax_loss_matches_reference():
    torch.manual_seed(1)
    cfg = TwoTowerConfig(embedding_dim=8, tower_layers=[12, 4], normalize=True, temperature=0.2)
    model = TwoTower(9, 13, cfg)
    counts = torch.randint(1, 20, (13,))
    model.set_item_frequency(counts)
    users, items = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([3, 7, 3, 12, 0])  # item 3 repeats
    loss = model.loss(users, items)
    with torch.no_grad():
        u = model.encode_users(users)
        it = model.encode_items(items)
        q = counts.float() / counts.sum()
        ref = 0.0
        for a in range(5):
            logits = []
            for b in range(5):
                if b != a and items[b] == items[a]:
                    continue  # accidental hit: not a negative
                logits.append(float(u[a] @ it[b]) / 0.2 - math.log(float(q[items[b]])))
            pos = float(u[a] @ it[a]) / 0.2 - math.log(float(q[items[a]]))
            ref += -(pos - math.log(sum(math.exp(x) for x in logits)))
        ref /= 5
    assert abs(float(loss.detach()) - ref) < 1e-4
