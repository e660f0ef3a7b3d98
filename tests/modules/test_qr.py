"""Quotient-remainder embeddings: reduction to the plain EBC, id arithmetic against numpy, budgets, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

from recsys_emb.config.embedding import EmbeddingSpec, TableGroup
from recsys_emb.config.io import ConfigError
from recsys_emb.modules.qr import (
    QREmbeddingBagCollection,
    QuotientRemainder,
    collisions_for_budget,
    fewest_rows,
    largest_collisions,
    qr_rows,
)
from recsys_emb.modules.spec import build_embedding, build_pooled

VOCAB = {"a": 23, "b": 5, "c": 40}
DIM = 8


def plain_tables(dim: int = DIM, init: dict | None = None) -> list[EmbeddingBagConfig]:
    return [EmbeddingBagConfig(name=f"t_{f}", embedding_dim=dim, num_embeddings=v, feature_names=[f], **(init or {}))
            for f, v in VOCAB.items()]


def bags(batch: int = 9, seed: int = 0, max_len: int = 3, keys: list[str] | None = None) -> KeyedJaggedTensor:
    """Random bags of 0..max_len ids (empty and multi-id bags), every key its own vocabulary."""
    keys = keys or list(VOCAB)
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_len + 1, (len(keys) * batch,), generator=g)
    lengths[0], lengths[1] = 0, max_len  # at least one empty and one full bag
    values = torch.cat([torch.randint(0, VOCAB[k], (int(lengths[i * batch:(i + 1) * batch].sum()),), generator=g)
                        for i, k in enumerate(keys)])
    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths, stride=batch)


def weight(module: torch.nn.Module, table: str) -> torch.Tensor:
    (w,) = [p for n, p in module.named_parameters() if n.endswith(f"embedding_bags.{table}.weight")]
    return w


# ------------------------------------------------------------------------------------------- reduction
@pytest.mark.parametrize("operation,identity", [("mult", 1.0), ("add", 0.0)])
def test_collision_free_qr_equals_the_plain_ebc(operation: str, identity: float) -> None:
    """m >= V: one quotient row (set to the identity), remainder table = the plain rows -> the plain output,
    on several features, empty bags and bags of up to 3 ids (mult: id_slots 3 composes per id)."""
    collisions = [VOCAB["a"], VOCAB["b"] + 4, 2 * VOCAB["c"]]  # m = V, m > V, m = 2V
    qr = build_embedding([{"qr": {"collisions": collisions, "operation": operation, "id_slots": 3}}], plain_tables())
    assert [(c.name, c.num_embeddings) for c in qr.embedding_bag_configs()] == [
        ("t_a_q", 1), ("t_b_q", 1), ("t_c_q", 1), ("t_a_r", 23), ("t_b_r", 5), ("t_c_r", 40)]
    plain = EmbeddingBagCollection(plain_tables())
    with torch.no_grad():
        for f in VOCAB:
            weight(plain, f"t_{f}").copy_(torch.randn(VOCAB[f], DIM))
            weight(qr, f"t_{f}_q").fill_(identity)
            weight(qr, f"t_{f}_r").copy_(weight(plain, f"t_{f}"))
    for seed in range(3):
        kjt = bags(seed=seed)
        out, ref = qr(kjt), plain(kjt)
        assert out.keys() == ref.keys() == list(VOCAB)
        torch.testing.assert_close(out.values(), ref.values(), rtol=0, atol=1e-6)


def test_mult_with_one_slot_multiplies_the_pooled_vectors() -> None:
    """The documented default for multi-id bags (the authors' DLRM reference): pool each table, then multiply."""
    qr = build_embedding([{"qr": {"collisions": 4}}], plain_tables())
    kjt = bags(seed=1)
    out = qr(kjt).to_dict()
    for f in VOCAB:
        m, q_w, r_w = 4, weight(qr, f"t_{f}_q"), weight(qr, f"t_{f}_r")
        for b, ids in enumerate(kjt[f].to_dense()):
            q = q_w[ids // m].sum(0) if len(ids) else torch.zeros(DIM)
            r = r_w[ids % m].sum(0) if len(ids) else torch.zeros(DIM)
            torch.testing.assert_close(out[f][b], q * r, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
def test_every_operation_composes_per_id(operation: str) -> None:
    """Each output = sum over the bag's ids of op(Q[i // m], R[i % m]), built by hand from the tables."""
    collisions = [4, 2, 7]
    qr = build_embedding([{"qr": {"collisions": collisions, "operation": operation, "id_slots": 3}}], plain_tables())
    kjt = bags(seed=2)
    out = qr(kjt).to_dict()
    for f, m in zip(VOCAB, collisions):
        q_w, r_w = weight(qr, f"t_{f}_q").detach(), weight(qr, f"t_{f}_r").detach()
        assert q_w.shape[0] == -(-VOCAB[f] // m) and r_w.shape[0] == min(m, VOCAB[f])
        assert q_w.shape[1] == (DIM // 2 if operation == "concat" else DIM)
        for b, ids in enumerate(kjt[f].to_dense()):
            parts = [{"mult": lambda q, r: q * r, "add": lambda q, r: q + r, "concat": lambda q, r: torch.cat([q, r])}[operation](
                q_w[i // m], r_w[i % m]) for i in ids.tolist()]
            want = torch.stack(parts).sum(0) if parts else torch.zeros(DIM)
            torch.testing.assert_close(out[f][b].detach(), want, rtol=1e-5, atol=1e-6)


def test_smaller_table_starts_at_the_identity() -> None:
    """mult: the smaller table starts at 1, add: at 0 (zero-initialised groups still train); concat: group init."""
    zero = {"weight_init_min": 0.0, "weight_init_max": 0.0}
    mult = build_embedding([{"qr": {"collisions": [2, 2, 20]}}], plain_tables(init=zero))
    assert torch.equal(weight(mult, "t_a_r"), torch.ones(2, DIM)) and torch.equal(weight(mult, "t_a_q"), torch.zeros(12, DIM))
    assert torch.equal(weight(mult, "t_c_q"), torch.ones(2, DIM)) and torch.equal(weight(mult, "t_c_r"), torch.zeros(20, DIM))
    add = build_embedding([{"qr": {"collisions": 2, "operation": "add"}}], plain_tables(init={"weight_init_min": 0.5, "weight_init_max": 0.5}))
    assert torch.equal(weight(add, "t_a_r"), torch.zeros(2, DIM)) and torch.equal(weight(add, "t_a_q"), torch.full((12, DIM), 0.5))


# ------------------------------------------------------------------------------------------- arithmetic
def test_quotient_and_remainder_ids_match_numpy() -> None:
    rng = np.random.default_rng(0)
    features = ["x", "y", "z"]
    vocab, collisions = [1000, 7, 123457], [31, 9, 351]
    for slots in (1, 3):
        t = QuotientRemainder(features, vocab, collisions, slots=slots)
        batch = 6
        lengths = rng.integers(0, 5, len(features) * batch)
        ids = [rng.integers(0, v, int(lengths[i * batch:(i + 1) * batch].sum())) for i, v in enumerate(vocab)]
        kjt = KeyedJaggedTensor(keys=features, values=torch.from_numpy(np.concatenate(ids)), lengths=torch.from_numpy(lengths),
                                stride=batch)
        out = t(kjt)
        assert out.keys() == [f"{f}@{p}{s}" for p in "qr" for f in features for s in range(slots)]
        for i, (f, m) in enumerate(zip(features, collisions)):
            bag_ids = np.split(ids[i], np.cumsum(lengths[i * batch:(i + 1) * batch])[:-1])
            for part, op in (("q", np.floor_divide), ("r", np.remainder)):
                for s in range(slots):  # slot s: the s-th id of each bag; the last slot takes the rest
                    got = [x.tolist() for x in out[f"{f}@{part}{s}"].to_dense()]
                    want = [op(b[s:s + 1] if s < slots - 1 else b[s:], m).tolist() for b in bag_ids]
                    assert got == want, (f, part, s)


def test_input_key_order_and_absent_features() -> None:
    """Keys in another order, or a feature missing (empty bags), give the same rows as the full ordered input."""
    qr = build_embedding([{"qr": {"collisions": 3, "id_slots": 2}}], plain_tables())
    full = bags(seed=3)
    shuffled = full.permute([2, 0, 1])
    torch.testing.assert_close(qr(shuffled).values(), qr(full).values(), rtol=0, atol=0)
    two = KeyedJaggedTensor.from_jt_dict({"c": full["c"], "a": full["a"]})
    got = qr(two).to_dict()
    assert torch.equal(got["b"], torch.zeros(9, DIM))
    torch.testing.assert_close(got["a"], qr(full).to_dict()["a"], rtol=0, atol=0)


def test_bad_ids_and_options_say_what_is_wrong() -> None:
    qr = build_embedding([{"qr": {"collisions": 3}}], plain_tables())
    kjt = KeyedJaggedTensor.from_lengths_sync(list(VOCAB), torch.tensor([1, 5, 2]), torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="id 5 of feature 'b' is outside its vocabulary \\[0, 5\\)"):
        qr(kjt)
    with pytest.raises(KeyError, match="input features \\['d'\\] are not configured"):
        qr(KeyedJaggedTensor.from_lengths_sync(["d"], torch.tensor([1]), torch.tensor([1])))
    cases = [
        ([{"qr": {}}], "exactly one of collisions, budget_bytes, budget_fraction"),
        ([{"qr": {"collisions": 2, "budget_fraction": 0.5}}], "exactly one of"),
        ([{"qr": {"collisions": [2, 3]}}], "2 entries for 3 features"),
        ([{"qr": {"collisions": 0}}], "positive integer"),
        ([{"qr": {"collisions": 2, "operation": "max"}}], "operation must be one of"),
        ([{"qr": {"budget_fraction": 0.01}}], "budget too small for qr.*fewest rows"),
        ([{"qr": {"collisions": 2}}, "dnis"], "'qr' and 'dnis' do not stack: quotient and remainder rows"),
        ([{"qr": {"collisions": 2}}, "optembed"], "'qr' and 'optembed' do not stack"),
    ]
    for chain, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_embedding(chain, plain_tables())
    with pytest.raises(ConfigError, match="concat.*dim must be even, got 5"):
        build_embedding([{"qr": {"collisions": 2, "operation": "concat"}}], plain_tables(dim=5))


def test_largest_collisions_and_fewest_rows_against_brute_force() -> None:
    for v in list(range(1, 120)) + [1000, 4099]:
        rows = {m: sum(qr_rows(v, m)) for m in range(1, v + 1)}
        assert fewest_rows(v) == min(rows.values())
        for cap in range(0, min(v + 3, 200)):
            assert largest_collisions(v, cap) == max([m for m, r in rows.items() if r <= cap], default=None), (v, cap)


def test_budget_fills_to_within_one_row() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        vocab = rng.integers(1, 5000, rng.integers(1, 6)).tolist()
        row = 32
        fewest = sum(fewest_rows(v) for v in vocab)
        budget = int(rng.integers(fewest, sum(vocab) + len(vocab) + 1)) * row + int(rng.integers(0, row))
        ms = collisions_for_budget(vocab, budget, row)
        used = sum(sum(qr_rows(v, m)) for v, m in zip(vocab, ms)) * row
        assert budget - row < used <= budget, (vocab, budget, ms)


def test_shared_table_features_look_up_the_same_rows() -> None:
    """Features naming one data table (a schema's ``table:``) share its quotient and remainder tables."""
    vocab = {"src": 30, "dst": 30, "c": 40}
    spec = EmbeddingSpec(groups=[TableGroup("all", None, [{"qr": {"budget_fraction": 0.5}}])])
    qr = build_pooled(spec, vocab, DIM, family="model", prefix="t_", tables={"src": "city", "dst": "city"})
    assert [c.name for c in qr.embedding_bag_configs()] == ["t_city_q", "t_c_q", "t_city_r", "t_c_r"]
    assert qr.collisions["src"] == qr.collisions["dst"]
    kjt = KeyedJaggedTensor.from_lengths_sync(["src", "dst", "c"], torch.tensor([7, 7, 3]), torch.tensor([1, 1, 1]))
    out = qr(kjt).to_dict()
    torch.testing.assert_close(out["src"], out["dst"], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- training
def test_a_few_steps_lower_the_loss() -> None:
    """Toy regression: target = a fixed per-id value of feature a; qr (m = 5 on 23 ids) + a linear head."""
    torch.manual_seed(0)
    qr = QREmbeddingBagCollection(["a"], [VOCAB["a"]], [5], dim=DIM)
    head = torch.nn.Linear(DIM, 1)
    target = torch.randn(VOCAB["a"])
    ids = torch.arange(VOCAB["a"])
    kjt = KeyedJaggedTensor.from_lengths_sync(["a"], ids, torch.ones_like(ids))
    opt = torch.optim.Adam([*qr.parameters(), *head.parameters()], lr=0.05)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(head(qr(kjt).values()).squeeze(1), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
