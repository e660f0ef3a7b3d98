"""Each model and block against an independent reference computed here from the same weights."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_emb.config.model import DCNv2Config, DeepFMConfig, DLRMConfig, ModelConfig
from recsys_emb.models import DLRM, CrossNet, DCNv2, DeepFM, FactorizationMachine, LogisticRegression, build_model

NUM_DENSE = 4


def manual_mlp(mlp: nn.Module, x: Tensor) -> Tensor:
    """ReLU MLP recomputed from the Linear weights of ``mlp`` (no dropout / batch norm in these tests)."""
    for layer in mlp.modules():
        if isinstance(layer, nn.Linear):
            x = torch.relu(x @ layer.weight.T + layer.bias)
    return x


def lookup(model: nn.Module, attr: str, ids: Tensor, features: list[str], suffix: str = "") -> list[Tensor]:
    """Per-feature rows of the model's EBC tables, indexed directly (one id per bag)."""
    ebc = getattr(model, attr)
    return [ebc.embedding_bags[f"t_{f}{suffix}"].weight[ids[:, i]] for i, f in enumerate(features)]


def randomise_(model: nn.Module) -> None:
    """Overwrite all parameters (incl. zero-initialised ones) with random values."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)


def test_dot_interaction_matches_pair_loop(helpers) -> None:  # noqa: ANN001
    config = ModelConfig(name="dlrm", dlrm=DLRMConfig(dense_arch_layer_sizes=[6], over_arch_layer_sizes=[10]))
    model = build_model(config, None, helpers.small_tables(), NUM_DENSE)
    assert isinstance(model, DLRM)
    ids, dense = helpers.random_ids(5), torch.randn(5, NUM_DENSE)
    dense_out = manual_mlp(model.dense_arch, dense)  # (B, D)
    vectors = [dense_out, *lookup(model, "embedding", ids, helpers.FEATURES)]
    pairs = [
        (vectors[i] * vectors[j]).sum(dim=1) for i in range(len(vectors)) for j in range(i + 1, len(vectors))
    ]
    expected_pairs = torch.stack(pairs, dim=1)  # (B, 6)
    torch.testing.assert_close(model.interaction(torch.stack(vectors, dim=1)), expected_pairs)

    top_in = torch.cat([dense_out, expected_pairs], dim=1)
    hidden = manual_mlp(model.over_arch.mlp, top_in)
    expected = (hidden @ model.over_arch.head.weight.T + model.over_arch.head.bias).squeeze(1)
    torch.testing.assert_close(model(dense, helpers.one_hot_kjt(ids)), expected)


@pytest.mark.parametrize("low_rank_dim", [None, 2])
def test_cross_layers_match_formula(low_rank_dim: int | None) -> None:
    torch.manual_seed(1)
    cross = CrossNet(6, num_layers=3, low_rank_dim=low_rank_dim)
    x0 = torch.randn(4, 6)
    x = x0
    for layer in range(3):
        if low_rank_dim is None:
            weight, bias = cross.full[layer].weight, cross.full[layer].bias
        else:  # W = U V^T with U = up.weight (d, r), V^T = down.weight (r, d)
            weight, bias = cross.up[layer].weight @ cross.down[layer].weight, cross.up[layer].bias
            assert weight.shape == (6, 6)
        x = x0 * (x @ weight.T + bias) + x
    torch.testing.assert_close(cross(x0), x)
    assert torch.equal(CrossNet(6, num_layers=0)(x0), x0)


@pytest.mark.parametrize("structure", ["stacked", "parallel"])
def test_dcnv2_forward_matches_manual(helpers, structure: str) -> None:  # noqa: ANN001
    config = ModelConfig(name="dcnv2", dcnv2=DCNv2Config(num_cross_layers=2, deep_layer_sizes=[7], structure=structure))
    model = build_model(config, None, helpers.small_tables(dims=(8, 4, 12)), NUM_DENSE)
    assert isinstance(model, DCNv2)
    ids, dense = helpers.random_ids(6), torch.randn(6, NUM_DENSE)
    x0 = torch.cat([dense, *lookup(model, "embedding", ids, helpers.FEATURES)], dim=1)  # (B, 28)
    x = x0
    for linear in model.cross.full:
        x = x0 * linear(x) + x
    if structure == "stacked":
        out = manual_mlp(model.deep, x)
    else:
        out = torch.cat([x, manual_mlp(model.deep, x0)], dim=1)
    expected = (out @ model.head.weight.T + model.head.bias).squeeze(1)
    torch.testing.assert_close(model(dense, helpers.one_hot_kjt(ids)), expected)


def test_fm_identity_matches_double_loop() -> None:
    torch.manual_seed(2)
    fields = torch.randn(5, 6, 3, dtype=torch.float64)
    expected = torch.zeros(5, dtype=torch.float64)
    for i in range(6):
        for j in range(i + 1, 6):
            expected += (fields[:, i] * fields[:, j]).sum(dim=1)
    torch.testing.assert_close(FactorizationMachine()(fields), expected)


def test_deepfm_forward_matches_manual(helpers) -> None:  # noqa: ANN001
    config = ModelConfig(name="deepfm", deepfm=DeepFMConfig(deep_layer_sizes=[9, 5], dropout=0.0))
    model = build_model(config, None, helpers.small_tables(), NUM_DENSE)
    assert isinstance(model, DeepFM)
    randomise_(model)
    ids, dense = helpers.random_ids(6), torch.randn(6, NUM_DENSE)

    first = dense @ model.dense_linear.weight + model.dense_linear.bias
    for rows in lookup(model, "first_order", ids, helpers.FEATURES, suffix="_first_order"):
        first = first + rows.mean(dim=1)  # (B,)
    fields = [dense @ model.dense_field.weight.T, *lookup(model, "embedding", ids, helpers.FEATURES)]
    second = sum((fields[i] * fields[j]).sum(dim=1) for i in range(4) for j in range(i + 1, 4))
    hidden = manual_mlp(model.deep, torch.cat(fields, dim=1))
    deep = (hidden @ model.deep_head.weight.T + model.deep_head.bias).squeeze(1)
    torch.testing.assert_close(model(dense, helpers.one_hot_kjt(ids)), first + second + deep)


def test_lr_matches_manual_sum_over_bags(helpers) -> None:  # noqa: ANN001
    model = build_model(ModelConfig(name="lr"), None, helpers.small_tables(), NUM_DENSE)
    assert isinstance(model, LogisticRegression)
    randomise_(model)
    # multi-hot bags, one of them empty: f0 = [[1, 3], [], [10]], f1 = [[0], [6, 6], [2]], f2 = [[4], [0], []]
    bags = {"f0": [[1, 3], [], [10]], "f1": [[0], [6, 6], [2]], "f2": [[4], [0], []]}
    values = torch.tensor([i for f in helpers.FEATURES for bag in bags[f] for i in bag])
    lengths = torch.tensor([len(bag) for f in helpers.FEATURES for bag in bags[f]])
    kjt = KeyedJaggedTensor.from_lengths_sync(helpers.FEATURES, values, lengths)
    dense = torch.randn(3, NUM_DENSE)

    expected = dense @ model.dense_linear.weight + model.dense_linear.bias
    for f in helpers.FEATURES:
        table = model.embedding.embedding_bags[f"t_{f}_first_order"].weight
        for b, bag in enumerate(bags[f]):
            for i in bag:
                expected[b] = expected[b] + table[i].mean()
    torch.testing.assert_close(model(dense, kjt), expected)


def test_lr_width_one_equals_width_four_with_equal_columns(helpers) -> None:  # noqa: ANN001
    narrow = build_model(ModelConfig(name="lr", first_order_dim=1), None, helpers.small_tables(), NUM_DENSE)
    wide = build_model(ModelConfig(name="lr", first_order_dim=4), None, helpers.small_tables(), NUM_DENSE)
    randomise_(narrow)
    with torch.no_grad():
        for (name, p_narrow), (_, p_wide) in zip(narrow.named_parameters(), wide.named_parameters(), strict=True):
            p_wide.copy_(p_narrow.expand_as(p_wide) if "embedding" in name else p_narrow)
    ids, dense = helpers.random_ids(5), torch.randn(5, NUM_DENSE)
    torch.testing.assert_close(wide(dense, helpers.one_hot_kjt(ids)), narrow(dense, helpers.one_hot_kjt(ids)))
