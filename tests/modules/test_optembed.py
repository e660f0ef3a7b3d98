"""OptEmbed module + evolution: binary-step gradient, reductions, masks, derived real tables."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_emb.modules.optembed import BinaryStep, OptEmbedEmbeddingBagCollection, OptEmbedSearchConfig
from recsys_emb.search.derive import compact_module, derive_tables, full_embedding_bytes
from recsys_emb.search.optembed import Evolution, candidate_cost

FEATURES = ["a", "b", "c"]
VOCAB = {"a": 40, "b": 24, "c": 12}
DIM = 8


def tables() -> list[EmbeddingBagConfig]:
    return [EmbeddingBagConfig(name=f"t_{f}", embedding_dim=DIM, num_embeddings=VOCAB[f], feature_names=[f]) for f in FEATURES]


def kjt(batch: int = 64, seed: int = 0) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, VOCAB[f], (batch,), generator=g) for f in FEATURES]
    return KeyedJaggedTensor.from_lengths_sync(FEATURES, torch.cat(ids), torch.ones(batch * len(FEATURES), dtype=torch.int64))


def slope_reference(x: float) -> float:
    """The paper's piecewise derivative of the binary step, written out case by case."""
    if abs(x) > 1.0:
        return 0.0
    if abs(x) > 0.4:
        return 0.4
    return 2.0 - 4.0 * abs(x)


def test_binary_step_forward_and_piecewise_gradient_table() -> None:
    points = [-3.0, -1.0, -0.7, -0.4, -0.25, 0.0, 0.1, 0.3999, 0.4, 0.4001, 0.99, 1.0, 1.01, 5.0]
    x = torch.tensor(points, dtype=torch.float64, requires_grad=True)
    y = BinaryStep.apply(x)
    assert y.tolist() == [1.0 if p > 0 else 0.0 for p in points]
    upstream = torch.linspace(0.5, 2.0, len(points), dtype=torch.float64)
    (y * upstream).sum().backward()
    expected = torch.tensor([slope_reference(p) for p in points], dtype=torch.float64) * upstream
    torch.testing.assert_close(x.grad, expected)


def _pair(**kwargs) -> tuple[OptEmbedEmbeddingBagCollection, EmbeddingBagCollection]:
    torch.manual_seed(0)
    m = OptEmbedEmbeddingBagCollection(tables(), **kwargs)
    plain = EmbeddingBagCollection(tables())
    plain.load_state_dict(m.ebc.state_dict())
    return m, plain


@pytest.mark.parametrize("mode", ["eval_supernet", "fixed_full_dims"])
def test_thresholds_at_minus_inf_and_full_dims_equal_plain_ebc(mode: str) -> None:
    m, plain = _pair(field_dims={f: DIM for f in FEATURES} if mode == "fixed_full_dims" else None)
    with torch.no_grad():
        m.threshold.fill_(-math.inf)
    if mode == "eval_supernet":
        m.eval()
    features = kjt()
    out, ref = m(features), plain(features)
    torch.testing.assert_close(out.values(), ref.values(), rtol=0, atol=0)
    g = torch.randn_like(ref.values())
    (out.values() * g).sum().backward()
    (ref.values() * g).sum().backward()
    for f in FEATURES:
        torch.testing.assert_close(m.ebc.embedding_bags[f"t_{f}"].weight.grad, plain.embedding_bags[f"t_{f}"].weight.grad, rtol=0, atol=0)


def test_row_mask_zeroes_rows_at_or_below_the_field_threshold_and_trains_it() -> None:
    m, plain = _pair(field_dims={f: DIM for f in FEATURES}, threshold_reg=0.1)
    norms = {f: m.table_weight(f).detach().abs().sum(1) for f in FEATURES}
    with torch.no_grad():
        for i, f in enumerate(FEATURES):
            m.threshold[i] = norms[f].median()
    features = kjt()
    out, ref = m(features).to_dict(), plain(features).to_dict()
    for i, f in enumerate(FEATURES):
        ids = features.to_dict()[f].values()
        keep = norms[f][ids] > m.threshold[i].detach()
        torch.testing.assert_close(out[f], ref[f] * keep.unsqueeze(1).float())
    loss = sum(v.sum() for v in out.values()) + m.aux_loss()
    torch.testing.assert_close(m.aux_loss(), 0.1 * torch.exp(-m.threshold).sum())
    loss.backward()
    assert m.threshold.grad is not None and (m.threshold.grad != 0).any()


def test_supernet_prefix_masks_are_prefixes_with_uniform_length() -> None:
    m = OptEmbedEmbeddingBagCollection(tables())
    m.train()
    torch.manual_seed(1)
    masks = m.dim_masks(6000, torch.device("cpu"))
    assert masks is not None
    for f, mask in masks.items():
        lengths = mask.sum(dim=1)  # (B,)
        # a prefix: exactly the first `length` dims are on
        assert torch.equal(mask, torch.arange(DIM).unsqueeze(0) < lengths.unsqueeze(1))
        counts = torch.bincount(lengths, minlength=DIM + 1)[1:].double()  # lengths 1..D
        expected = lengths.numel() / DIM
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 24.3  # chi-square, 7 degrees of freedom, p = 0.001
    m.eval()
    assert m.dim_masks(4, torch.device("cpu")) is None  # eval: full dims


def test_derived_model_equals_masked_model_and_has_real_smaller_tables() -> None:
    m, _ = _pair(field_dims={"a": 5, "b": 2, "c": 0})
    with torch.no_grad():
        m.threshold[0] = m.table_weight("a").detach().abs().sum(1).quantile(0.3)
        m.threshold[1] = -1.0
    m.eval()
    layout, weights = derive_tables(m)
    compact = compact_module(layout, weights)
    features = kjt(batch=128)
    torch.testing.assert_close(compact(features).values(), m(features).values(), rtol=0, atol=0)
    configs = {c.feature_names[0]: c for c in compact.ebc.embedding_bag_configs()}
    assert set(configs) == {"a@0", "b@0"}  # c has 0 dims: no table, zero output
    assert configs["a@0"].embedding_dim == 8 and configs["b@0"].embedding_dim == 4  # rounded up to 4
    assert configs["a@0"].num_embeddings == int(m.kept_rows("a").sum()) < VOCAB["a"]
    assert configs["b@0"].num_embeddings == VOCAB["b"]
    assert full_embedding_bytes(compact) < full_embedding_bytes(m)


def test_evolution_keeps_size_elites_and_a_non_decreasing_best() -> None:
    m = OptEmbedEmbeddingBagCollection(tables())
    sc = OptEmbedSearchConfig(generations=6, keep=3, mutations=4, crossovers=4, mutation_prob=0.3)
    weights = {"a": 3.0, "b": 1.0, "c": -0.5}

    def fitness(cand: tuple[int, ...]) -> float:  # a known landscape: best = (8, 8, 1)
        return sum(w * d for w, d in zip(weights.values(), cand))

    evo = Evolution(m, sc, fitness, seed=0)
    population = [evo.random_candidate() for _ in range(evo.population_size)]
    for _ in range(sc.generations):
        ranked = sorted(population, key=fitness, reverse=True)
        nxt = evo.step(population)
        assert len(nxt) == evo.population_size
        assert nxt[: sc.keep] == ranked[: sc.keep]  # elites carried over unchanged
        population = nxt
    best = [h["best"] for h in evo.history]
    assert best == sorted(best)
    assert best[-1] >= max(fitness(c) for c in population[: sc.keep])


def test_crossover_cuts_between_fields() -> None:
    m = OptEmbedEmbeddingBagCollection(tables())
    evo = Evolution(m, OptEmbedSearchConfig(), lambda c: 0.0, seed=0)
    a, b = (1, 1, 1), (8, 8, 8)
    children = {evo.crossover(a, b) for _ in range(200)}
    assert children == {(1, 8, 8), (1, 1, 8)}  # cut in [1, F-1]: both parents always contribute


def test_budget_is_respected() -> None:
    m = OptEmbedEmbeddingBagCollection(tables())
    with torch.no_grad():
        m.threshold.fill_(-1.0)  # keep all rows
    sc = OptEmbedSearchConfig(generations=3, keep=2, mutations=3, crossovers=3, budget=0.7)
    evo = Evolution(m, sc, lambda c: float(sum(c)), seed=random.Random(3).randint(0, 99))
    best, _ = evo.run(sc.generations, progress=False)
    assert candidate_cost(m, best, evo.kept) <= 0.7
    assert all(candidate_cost(m, c, evo.kept) <= 0.7 for c in evo.cache)
    # dims are stored rounded up to 4, so with D = 8 no candidate costs less than half the tables
    with pytest.raises(ValueError, match="below the smallest reachable cost 0.5"):
        Evolution(m, dataclasses.replace(sc, budget=0.4), lambda c: 0.0)


def test_candidate_cost_is_the_derived_bytes() -> None:
    """The budget counts what derive_tables stores (kept rows x dims rounded up to 4), not raw dims."""
    torch.manual_seed(0)
    m = OptEmbedEmbeddingBagCollection(tables())
    with torch.no_grad():
        m.threshold.fill_(float(m.table_weight(FEATURES[0]).abs().sum(dim=1).median()))  # prune some rows
    kept = {f: int(m.kept_rows(f).sum()) for f in FEATURES}
    for cand in [(1, 5, 8), (3, 1, 2), (DIM, 4, 7)]:
        m.set_field_dims(dict(zip(FEATURES, cand)))
        layout, _ = derive_tables(m)
        assert candidate_cost(m, cand, kept) == pytest.approx(layout.embedding_bytes() / full_embedding_bytes(m))
