"""CTRTrain loss, auxiliary losses, gradient flow, and a small overfit check."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchrec.datasets.utils import Batch

from recsys_emb.config.model import MODEL_NAMES, DCNv2Config, DeepFMConfig, DLRMConfig, ModelConfig
from recsys_emb.models import CTRTrain, auxiliary_loss, build_model, split_named_parameters

NUM_DENSE = 4


def small_config(name: str, first_order_dim: int = 4) -> ModelConfig:
    return ModelConfig(
        name=name,
        first_order_dim=first_order_dim,
        dlrm=DLRMConfig(dense_arch_layer_sizes=[8], over_arch_layer_sizes=[16]),
        dcnv2=DCNv2Config(num_cross_layers=2, deep_layer_sizes=[16]),
        deepfm=DeepFMConfig(deep_layer_sizes=[16], dropout=0.0),
    )


def make_batch(helpers, batch: int, label_feature: int | None = None) -> Batch:  # noqa: ANN001
    ids = helpers.random_ids(batch)
    if label_feature is None:
        labels = torch.randint(0, 2, (batch,)).float()
    else:  # label = parity of one feature's id
        labels = (ids[:, label_feature] % 2 == 0).float()
    return Batch(dense_features=torch.randn(batch, NUM_DENSE), sparse_features=helpers.one_hot_kjt(ids), labels=labels)


def manual_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits.double())
    return -(labels * torch.log(p) + (1 - labels) * torch.log(1 - p)).mean()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_loss_is_bce_and_outputs_are_detached(helpers, name: str) -> None:  # noqa: ANN001
    train = CTRTrain(build_model(small_config(name), None, helpers.small_tables(), NUM_DENSE))
    batch = make_batch(helpers, 9)
    loss, (loss_d, logits, labels) = train(batch)
    assert loss.shape == () and loss.requires_grad
    assert not (loss_d.requires_grad or logits.requires_grad or labels.requires_grad)
    assert logits.shape == (9,) and torch.equal(labels, batch.labels)
    torch.testing.assert_close(loss.double(), manual_bce(logits, labels))
    assert auxiliary_loss(train.model) is None


def test_aux_loss_is_added_and_trained(helpers) -> None:  # noqa: ANN001
    stub = helpers.StubEmbedding([8, 8, 8], aux=0.3)  # aux_loss() = 2 * aux_weight = 0.6
    model = build_model(small_config("dcnv2"), stub, helpers.small_tables(), NUM_DENSE)
    train = CTRTrain(model)
    loss, (_, logits, labels) = train(make_batch(helpers, 5))
    torch.testing.assert_close(loss.double(), manual_bce(logits, labels) + 0.6)
    loss.backward()
    torch.testing.assert_close(stub.aux_weight.grad, torch.tensor(2.0))


def test_aux_loss_found_on_embedding_of_plain_module(helpers) -> None:  # noqa: ANN001
    class Plain(nn.Module):  # not a CTRModel: no aux_loss of its own
        def __init__(self) -> None:
            super().__init__()
            self.embedding = helpers.StubEmbedding([2, 2, 2], aux=1.5)

        def forward(self, dense: torch.Tensor, kjt: object) -> torch.Tensor:
            return self.embedding(kjt).values().sum(dim=1)

    model = Plain()
    torch.testing.assert_close(auxiliary_loss(model), torch.tensor(3.0))
    loss, (_, logits, labels) = CTRTrain(model)(make_batch(helpers, 4))
    torch.testing.assert_close(loss.double(), manual_bce(logits, labels) + 3.0)


def test_deepfm_sums_aux_of_both_embedding_modules(helpers) -> None:  # noqa: ANN001
    model = build_model(small_config("deepfm"), helpers.StubEmbedding([8, 8, 8], aux=0.5), helpers.small_tables(), 4)
    model.first_order = helpers.StubEmbedding([4, 4, 4], aux=0.25)
    torch.testing.assert_close(auxiliary_loss(model), torch.tensor(1.5))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradients_reach_tables_and_dense_params(helpers, name: str) -> None:  # noqa: ANN001
    model = build_model(small_config(name), None, helpers.small_tables(), NUM_DENSE)
    batch = make_batch(helpers, 16)
    # all-positive labels: dloss/dlogit = (sigmoid(logit) - 1) / B < 0 for every example, so no per-row
    # cancellation can zero a used row's gradient (it could with zero-initialised LR weights otherwise)
    batch = Batch(batch.dense_features, batch.sparse_features, torch.ones(16))
    loss, _ = CTRTrain(model)(batch)
    loss.backward()
    tables, dense = split_named_parameters(model)
    ids = batch.sparse_features.to_dict()
    for pname, param in tables.items():
        feature = pname.split(".")[2].removeprefix("t_").removesuffix("_first_order")
        used = torch.unique(ids[feature].values())
        unused = torch.ones(param.shape[0], dtype=torch.bool)
        unused[used] = False
        assert param.grad is not None, pname
        assert (param.grad[used].abs().sum(dim=1) > 0).all(), pname
        assert (param.grad[unused] == 0).all(), pname
    for pname, param in dense.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_overfits_label_driven_by_one_feature(helpers, name: str) -> None:  # noqa: ANN001
    train = CTRTrain(build_model(small_config(name), None, helpers.small_tables(), NUM_DENSE))
    batch = make_batch(helpers, 64, label_feature=0)
    assert 0 < batch.labels.sum() < 64
    optimizer = torch.optim.Adam(train.parameters(), lr=0.05)
    first = None
    for _ in range(50):  # the deep models fit in ~20 steps; LR (zero init) needs ~35
        loss, _ = train(batch)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = train(batch)[0].item()
    assert final < 0.25 * first, (first, final)


def test_first_order_width_four_trains_like_width_one(helpers) -> None:  # noqa: ANN001
    # The documented claim: zero-initialised rows of width 4 read as their mean stay equal across columns,
    # and under Adam they follow the width-1 model.
    torch.manual_seed(3)
    batch = make_batch(helpers, 32, label_feature=1)
    results = []
    for width in (1, 4):
        model = build_model(small_config("lr", first_order_dim=width), None, helpers.small_tables(), NUM_DENSE)
        train = CTRTrain(model)
        optimizer = torch.optim.Adam(train.parameters(), lr=0.05, eps=1e-12)
        for _ in range(20):
            loss, _ = train(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        for table in model.embedding.parameters():
            assert torch.equal(table, table[:, :1].expand_as(table))
        results.append(train(batch)[1][1])
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)
