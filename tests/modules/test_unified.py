"""Unified Embedding: hash vs a big-int reference, reduction to the plain EBC, salting, bytes, training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

from recsys_emb.config.experiment import ExperimentConfig
from recsys_emb.config.io import ConfigError, load_config
from recsys_emb.modules.spec import build_embedding
from recsys_emb.modules.unified import (
    MERSENNE_61,
    MultiplexGroup,
    MultiProbeHash,
    UnifiedEmbeddingBagCollection,
    UnifiedOptions,
    hash_coefficients,
    mulmod61,
    premix64,
)
from tests.conftest import REPO, make_prepared

P = (1 << 61) - 1


def splitmix64(value: int) -> int:
    """The splitmix64 finaliser with Python big ints, on ``value`` read as an unsigned 64-bit number."""
    z = value % (1 << 64)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
    return z ^ (z >> 31)


def reference_row(seed: int, feature: str, probe: int, value: int, num_rows: int) -> int:
    """The documented hash with Python big ints: ((a0 lo(z) + a1 hi(z) + b) mod p) mod M, z = splitmix64(v)."""
    a0, a1, b = hash_coefficients(seed, feature, probe)
    u = splitmix64(value)
    return ((a0 * (u & 0xFFFFFFFF) + a1 * (u >> 32) + b) % P) % num_rows


def test_splitmix64_premix_known_values_and_consecutive_ids() -> None:
    """Torch premix == big-int finaliser; splitmix64's first outputs (state 0, step 0x9e3779b97f4a7c15) match."""
    ids = [0, 1, -1, 2, 2**31, 2**32, -(2**63), 2**63 - 1, 123456789012345678, -987654321098765432]
    got = premix64(torch.tensor(ids, dtype=torch.int64)).tolist()
    assert [g % (1 << 64) for g in got] == [splitmix64(v) for v in ids]
    gamma = 0x9E3779B97F4A7C15  # SplitMix64 seeded with 0 returns the finaliser of k * gamma, k = 1, 2, ...
    assert [splitmix64(k * gamma) for k in (1, 2, 3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    # a bijection: 2^16 consecutive ids give 2^16 distinct outputs
    assert premix64(torch.arange(1 << 16)).unique().numel() == 1 << 16


def test_consecutive_ids_collide_like_a_uniform_hash() -> None:
    """The defect the premix fixes: without it, (v, v + D) pairs of one feature collide together for some seeds."""
    vocab, rows = 2000, 2000
    expected = 1 - (1 - 1 / rows) ** (vocab - 1)  # birthday: share of values sharing a row with another
    shares = []
    for seed in range(6):
        t = MultiProbeHash(["a"], num_rows=[rows], probes=[1], hash_seed=seed)
        kjt = KeyedJaggedTensor(keys=["a"], values=torch.arange(vocab), lengths=torch.ones(vocab, dtype=torch.int64))
        r = t(kjt)["a@0"].values()
        occupancy = torch.bincount(r, minlength=rows)
        shares.append(float((occupancy[r] > 1).float().mean()))
    assert all(abs(x - expected) < 0.05 for x in shares), (shares, expected)


def random_kjt(keys: list[str], vocab: dict[str, int], batch: int, seed: int, max_len: int = 3) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_len + 1, (len(keys) * batch,), generator=g)  # empty bags included
    values = torch.cat(
        [torch.randint(0, vocab[k], (int(lengths[i * batch : (i + 1) * batch].sum()),), generator=g) for i, k in enumerate(keys)]
    )
    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths, stride=batch)


def base_tables(vocab: dict[str, int], dim: int) -> list[EmbeddingBagConfig]:
    return [EmbeddingBagConfig(name=f"t_{f}", embedding_dim=dim, num_embeddings=v, feature_names=[f]) for f, v in vocab.items()]


# ---------------------------------------------------------------------------------------------- hash
def test_mulmod61_matches_big_int_reference() -> None:
    g = torch.Generator().manual_seed(0)
    edges = [0, 1, 2, (1 << 30) - 1, 1 << 30, (1 << 31) - 1, 1 << 31, (1 << 60), P - 1, P - 2]
    rand = torch.randint(0, 1 << 62, (2000,), generator=g) % P
    a = torch.tensor(edges * len(edges) + rand.tolist(), dtype=torch.int64)
    x = torch.tensor([e for e in edges for _ in edges] + rand.flip(0).tolist(), dtype=torch.int64)
    got = mulmod61(a, x)
    assert got.tolist() == [(int(u) * int(v)) % P for u, v in zip(a.tolist(), x.tolist())]
    assert MERSENNE_61 == P


def test_transform_matches_python_reference_for_any_int64() -> None:
    big = [0, 1, -1, 2**31, 2**32 - 1, 2**32, -(2**63), 2**63 - 1, 123456789012345678, -987654321098765432]
    g = torch.Generator().manual_seed(1)
    rand = torch.randint(-(2**63), 2**63 - 1, (500,), generator=g, dtype=torch.int64).tolist()
    ids = big + rand
    m_a, m_b = 1_000_003, 7
    t = MultiProbeHash(["a", "b"], num_rows=[m_a, m_b], probes=[3, 1], hash_seed=11)
    kjt = KeyedJaggedTensor(keys=["a", "b"], values=torch.tensor(ids + ids), lengths=torch.ones(2 * len(ids), dtype=torch.int64))
    out = t(kjt).to_dict()
    for j in range(3):
        assert out[f"a@{j}"].values().tolist() == [reference_row(11, "a", j, v, m_a) for v in ids]
    assert out["b@0"].values().tolist() == [reference_row(11, "b", 0, v, m_b) for v in ids]
    # int32 ids are the same ids: sign extension gives the same rows
    small = torch.tensor([-5, 0, 7, 2**31 - 1], dtype=torch.int32)
    k32 = KeyedJaggedTensor(keys=["a"], values=small, lengths=torch.ones(4, dtype=torch.int64))
    k64 = KeyedJaggedTensor(keys=["a"], values=small.long(), lengths=torch.ones(4, dtype=torch.int64))
    assert torch.equal(t(k32).values(), t(k64).values())


def test_salting_per_feature_and_probe_gives_independent_collisions() -> None:
    vocab, m = 20_000, 1_000
    t = MultiProbeHash(["a", "b"], num_rows=[m, m], probes=[2, 1])
    ids = torch.arange(vocab)
    kjt = KeyedJaggedTensor(keys=["a", "b"], values=torch.cat([ids, ids]), lengths=torch.ones(2 * vocab, dtype=torch.int64))
    out = t(kjt).to_dict()
    a0, a1, b0 = out["a@0"].values(), out["a@1"].values(), out["b@0"].values()
    # Equal raw values: an unsalted hash puts ALL of them in the same row; independent hashes ~ vocab / m.
    expected, std = vocab / m, (vocab / m) ** 0.5
    for x, y in ((a0, b0), (a0, a1), (a1, b0)):
        same = int((x == y).sum())
        assert abs(same - expected) < 5 * std, (same, expected)
    # Within one feature: occupied rows match the birthday (balls-in-bins) expectation.
    occupied = a0.unique().numel()
    birthday = m * (1 - (1 - 1 / m) ** vocab)
    assert abs(occupied - birthday) < 10, (occupied, birthday)
    # Between two features' vocabularies (500 values each, M = 50k): colliding pairs ~ 500^2 / M.
    t2 = MultiProbeHash(["a", "b"], num_rows=[50_000, 50_000], probes=[1, 1], hash_seed=5)
    ids = torch.arange(500)
    o = t2(KeyedJaggedTensor(keys=["a", "b"], values=torch.cat([ids, ids]), lengths=torch.ones(1000, dtype=torch.int64))).to_dict()
    pairs = int((o["a@0"].values().unsqueeze(1) == o["b@0"].values().unsqueeze(0)).sum())
    assert abs(pairs - 500**2 / 50_000) < 5 * (500**2 / 50_000) ** 0.5, pairs


def test_absent_feature_empty_bags_and_unknown_key() -> None:
    t = MultiProbeHash(["a", "b", "c"], num_rows=[10, 10, 10], probes=[1, 2, 1])
    kjt = KeyedJaggedTensor(keys=["c", "a"], values=torch.tensor([3, 4, 5]), lengths=torch.tensor([0, 2, 1, 0]), stride=2)
    out = t(kjt)
    assert out.keys() == ["a@0", "b@0", "b@1", "c@0"]
    assert out.lengths().tolist() == [1, 0, 0, 0, 0, 0, 0, 2]
    assert out.to_dict()["c@0"].values().tolist() == [reference_row(0, "c", 0, v, 10) for v in (3, 4)]
    with pytest.raises(KeyError, match="not configured"):
        t(KeyedJaggedTensor(keys=["zz"], values=torch.tensor([1]), lengths=torch.tensor([1])))


# ------------------------------------------------------------------------------------------ module
def test_reduction_one_probe_identity_equals_plain_ebc_bit_for_bit() -> None:
    vocab = {"a": 13, "b": 7, "c": 29}
    plain = EmbeddingBagCollection(base_tables(vocab, 8))
    unified = UnifiedEmbeddingBagCollection(
        [MultiplexGroup("shared", list(vocab), sum(vocab.values()) + 5)], chunk_dim=8, hashing="identity", vocab_sizes=vocab
    )
    with torch.no_grad():
        shared = unified.lookup.ebc.embedding_bags["shared"].weight
        offset = 0
        for f, v in vocab.items():
            shared[offset : offset + v] = plain.embedding_bags[f"t_{f}"].weight
            offset += v
    kjt = random_kjt(list(vocab), vocab, batch=16, seed=3)
    want, got = plain(kjt), unified(kjt)
    assert got.keys() == want.keys() and got.length_per_key() == want.length_per_key()
    assert torch.equal(got.values(), want.values())
    # The collisionless baseline through the registry is the same reduction (one identity table per feature).
    full = build_embedding([{"unified": {"layout": "collisionless"}}], base_tables(vocab, 8))
    full.load_state_dict({f"lookup.ebc.embedding_bags.full_{f}.weight": plain.embedding_bags[f"t_{f}"].weight for f in vocab}, strict=False)
    assert torch.equal(full(kjt).values(), want.values())
    with pytest.raises(ValueError, match="outside its vocabulary"):
        unified(KeyedJaggedTensor(keys=["a"], values=torch.tensor([13]), lengths=torch.tensor([1])))


@pytest.mark.parametrize("combine", ["concat", "mean"])
def test_probes_are_concatenated_or_averaged_in_feature_order(combine: str) -> None:
    groups = [MultiplexGroup("g0", ["b", "a"], 50), MultiplexGroup("g1", ["c"], 20)]
    m = UnifiedEmbeddingBagCollection(groups, chunk_dim=4, probes={"a": 1, "b": 3, "c": 2}, combine=combine, feature_order=["a", "b", "c"], hash_seed=2)
    k = {"a": 1, "b": 3, "c": 2}
    want_dims = [(f, 4 * (k[f] if combine == "concat" else 1)) for f in "abc"]
    assert m.output_feature_dims() == want_dims
    kjt = random_kjt(["a", "b", "c"], {"a": 100, "b": 100, "c": 100}, batch=5, seed=4)
    out = m(kjt)
    assert out.keys() == ["a", "b", "c"] and out.length_per_key() == [d for _, d in want_dims]
    tables = {g.name: m.lookup.ebc.embedding_bags[g.name].weight.detach() for g in groups}
    group_of = {"a": ("g0", 50), "b": ("g0", 50), "c": ("g1", 20)}
    per_feature = kjt.to_dict()
    for f in "abc":
        name, rows = group_of[f]
        jt = per_feature[f]
        probes = []
        for j in range(k[f]):
            vecs = [
                sum((tables[name][reference_row(2, f, j, int(v), rows)] for v in bag.tolist()), torch.zeros(4))
                for bag in torch.split(jt.values(), jt.lengths().tolist())
            ]
            probes.append(torch.stack(vecs))  # (B, 4)
        want = torch.cat(probes, 1) if combine == "concat" else torch.stack(probes).mean(0)
        torch.testing.assert_close(out[f], want)


def test_gradient_on_shared_row_is_sum_of_per_feature_gradients() -> None:
    m = UnifiedEmbeddingBagCollection([MultiplexGroup("shared", ["a", "b"], 1)], chunk_dim=4)  # every id -> row 0
    kjt = KeyedJaggedTensor(keys=["a", "b"], values=torch.tensor([1, 2, 3, 4, 5]), lengths=torch.tensor([2, 1, 0, 2]), stride=2)
    ga, gb = torch.randn(2, 4), torch.randn(2, 4)
    out = m(kjt)
    (out["a"] * ga).sum().backward(retain_graph=True)
    weight = m.lookup.ebc.embedding_bags["shared"].weight
    grad_a = weight.grad.clone()
    weight.grad = None
    (out["b"] * gb).sum().backward(retain_graph=True)
    grad_b = weight.grad.clone()
    weight.grad = None
    ((out["a"] * ga).sum() + (out["b"] * gb).sum()).backward()
    torch.testing.assert_close(weight.grad, grad_a + grad_b)
    torch.testing.assert_close(weight.grad[0], 2 * ga[0] + ga[1] + 2 * gb[1])  # ids per bag times upstream grad


def test_save_load_and_other_process_give_identical_rows(tmp_path: Path) -> None:
    vocab = {"a": 1000, "b": 1000}
    opts = {"budget_fraction": 0.3, "probes": 2, "hash_seed": 7}
    m = build_embedding([{"unified": opts}], base_tables(vocab, 8))
    kjt = random_kjt(["a", "b"], vocab, batch=32, seed=5)
    rows = m.lookup.transform(kjt).values()
    torch.save(m.state_dict(), tmp_path / "m.pt")
    other = build_embedding([{"unified": {**opts, "hash_seed": 99}}], base_tables(vocab, 8))
    assert not torch.equal(other.lookup.transform(kjt).values(), rows)
    other.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert torch.equal(other.lookup.transform(kjt).values(), rows)
    assert torch.equal(other(kjt).values(), m(kjt).values())
    script = (
        "import torch, json, sys\n"
        "from torchrec import EmbeddingBagConfig, KeyedJaggedTensor\n"
        "from recsys_emb.modules.spec import build_embedding\n"
        "t = [EmbeddingBagConfig(name=f't_{f}', embedding_dim=8, num_embeddings=1000, feature_names=[f]) for f in 'ab']\n"
        f"m = build_embedding([{{'unified': {opts!r}}}], t)\n"
        f"k = KeyedJaggedTensor(keys=['a','b'], values=torch.tensor({kjt.values().tolist()}), lengths=torch.tensor({kjt.lengths().tolist()}), stride=32)\n"
        "print(json.dumps(m.lookup.transform(k).values().tolist()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == rows.tolist()


# ------------------------------------------------------------------------------------------- bytes
def test_parameter_bytes_are_exact_and_baselines_have_equal_bytes() -> None:
    vocab = {"a": 5000, "b": 300, "c": 40, "d": 1}
    tables = base_tables(vocab, 16)
    full_bytes = sum(vocab.values()) * 16 * 4
    built = {}
    for layout in ("multiplexed", "per_feature_hashing"):
        m = build_embedding([{"unified": {"layout": layout, "budget_fraction": 0.2}}], tables)
        params = sum(p.numel() * p.element_size() for p in m.parameters())
        assert m.parameter_bytes() == params == m.byte_report()["parameter_bytes"]
        budget = int(0.2 * full_bytes)
        assert budget - 16 * 4 < params <= budget
        built[layout] = m
    assert built["multiplexed"].parameter_bytes() == built["per_feature_hashing"].parameter_bytes()
    rows = {c.feature_names[0].split("@")[0]: c.num_embeddings for c in built["per_feature_hashing"].embedding_bag_configs()}
    assert rows["d"] == 1  # its proportional share (0.2 rows) is below one row per probe: held at the minimum
    total = sum(rows.values()) - 1
    for f in "abc":  # the rest is split in proportion to vocabulary size (largest remainder)
        assert abs(rows[f] - total * vocab[f] / (sum(vocab.values()) - 1)) < 1
    full = build_embedding([{"unified": {"layout": "collisionless"}}], tables)
    assert full.parameter_bytes() == full_bytes == full.byte_report()["collisionless_bytes"]
    m = build_embedding([{"unified": {"budget_bytes": 64_000, "probes": 2}}], tables)
    assert m.output_feature_dims() == [(f, 16) for f in vocab] and m.chunk_dim == 8
    assert m.parameter_bytes() == 64_000 == sum(p.numel() * 4 for p in m.parameters())


def test_several_groups_and_config_errors() -> None:
    vocab = {"a": 100, "b": 100, "c": 400}
    tables = base_tables(vocab, 8)
    m = build_embedding([{"unified": {"groups": [["a", "c"], ["b"]], "num_rows": [64, 16]}}], tables)
    assert [(c.name, c.num_embeddings) for c in m.embedding_bag_configs()] == [("unified_0", 64), ("unified_1", 16)]
    assert [f for f, _ in m.output_feature_dims()] == ["a", "b", "c"]
    rows = m.lookup.transform(random_kjt(["a", "b", "c"], vocab, 8, seed=1)).to_dict()
    assert int(rows["b@0"].values().max()) < 16 and int(rows["c@0"].values().max()) < 64
    with pytest.raises(ValueError, match="listed in two groups"):
        build_embedding([{"unified": {"groups": [["a", "b"], ["b", "c"]], "num_rows": 10}}], tables)
    with pytest.raises(ValueError, match="missing"):
        build_embedding([{"unified": {"groups": [["a", "b"]], "num_rows": 10}}], tables)
    with pytest.raises(ValueError, match="fewer than one row per probe"):
        build_embedding([{"unified": {"budget_bytes": 20, "probes": 2}}], tables)
    with pytest.raises(ConfigError, match="did you mean 'num_rows'"):
        build_embedding([{"unified": {"num_row": 10}}], tables)
    with pytest.raises(ConfigError, match="exactly one of"):
        build_embedding([{"unified": {"num_rows": 10, "budget_bytes": 100}}], tables)
    with pytest.raises(ValueError, match="two multiplexing groups"):
        UnifiedEmbeddingBagCollection([MultiplexGroup("x", ["a"], 4), MultiplexGroup("y", ["a"], 4)], chunk_dim=4)


# ---------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("model", ["dcnv2", "dlrm", "deepfm"])
def test_trains_inside_ctr_models_through_the_registry(model: str, tmp_path: Path) -> None:
    from recsys_emb.train.tasks import train

    train_dir, test_dir = make_prepared(tmp_path / "train", 3000, seed=0), make_prepared(tmp_path / "test", 800, seed=1)
    cfg = load_config(  # configs/criteo_unified_tiny.yaml: DCN-v2, 2 probes, budget 1x; other models by override
        ExperimentConfig,
        REPO / "configs" / "criteo_unified_tiny.yaml",
        [f"data.train={train_dir}", f"data.test={test_dir}", f"data.cache_dir={tmp_path / 'cache'}", f"model.name={model}"],
    )
    assert "unified" in cfg.embedding.groups[0].chain[0]
    results = train(cfg, tmp_path / "run")
    assert results["test"]["auc"] > 0.7, results  # labels depend on C1's id: hashing into the shared table keeps it learnable
    expected = build_embedding(cfg.embedding.groups[0].chain, base_tables(dict.fromkeys(["C1", "C2", "C3", "C4"], 50), 8))
    first_order = 4 * 50 * cfg.model.first_order_dim if model == "deepfm" else 0  # DeepFM's per-id weights stay per feature
    assert results["embedding_parameters"] == expected.parameter_bytes() // 4 + first_order
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    key = next(k for k in state if k.endswith("lookup.transform.coefficients"))
    assert torch.equal(state[key], expected.lookup.transform.coefficients)  # buffers survived meta init + DMP
    from recsys_emb.evaluate import evaluate_run

    assert evaluate_run(tmp_path / "run", test_dir) == results["test"]  # reloaded model.pt scores identically


@pytest.mark.parametrize("name", ["ml100k_unified", "ml100k_unified_tiny", "criteo_unified", "criteo_unified_tiny"])
def test_unified_configs_load_and_build(name: str) -> None:
    cfg = load_config(ExperimentConfig, REPO / "configs" / f"{name}.yaml")
    vocab = {"user": 945, "item": 1614, "gender": 4, "age": 63, "occupation": 23, "zip": 384, "genres": 217}
    module = build_embedding(cfg.embedding.groups[0].chain, base_tables(vocab, cfg.model.embedding_dim))
    assert [d for _, d in module.output_feature_dims()] == [cfg.model.embedding_dim] * len(vocab)
    report = module.byte_report()
    assert report["parameter_bytes"] <= cfg.embedding.groups[0].chain[0]["unified"]["budget_fraction"] * report["collisionless_bytes"]


class _KJTServing(torch.nn.Module):
    """``(values, lengths (F, B)) -> pooled values`` of an EBC-compatible module, keys fixed (as the serving modules)."""

    def __init__(self, ebc: torch.nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.ebc, self.keys = ebc, keys

    def forward(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.ebc(KeyedJaggedTensor(keys=self.keys, values=values, lengths=lengths.reshape(-1))).values()


@pytest.mark.parametrize("options", [{"combine": "mean", "probes": {"a": 2, "b": 1, "c": 3}},
                                     {"hashing": "identity", "vocab_sizes": {"a": 10, "b": 10, "c": 10}}])
def test_torchscript_plans_every_batch_and_keeps_the_identity_check(options: dict) -> None:
    """TorchScript export (fx + torch.jit.script): the gather plan runs per batch in the scripted program, so an
    input with features missing or reordered equals eager at another batch size; identity ids are still checked."""
    from recsys_emb.inference.export import script_program

    torch.manual_seed(0)
    groups = [MultiplexGroup("g", ["a", "b"], 40), MultiplexGroup("h", ["c"], 20)]
    ebc = UnifiedEmbeddingBagCollection(groups, chunk_dim=4, feature_order=["c", "a", "b"], **options)
    for keys in (["a", "b", "c"], ["c", "a"]):
        serving = _KJTServing(ebc, keys).eval()
        lengths = torch.tensor([[1, 2, 0]] * len(keys))
        program, parity = script_program(serving, (torch.randint(0, 10, (int(lengths.sum()),)), lengths), "sequence")
        lengths = torch.tensor([[0, 3, 1, 1, 2]] * len(keys))
        values = torch.randint(0, 10, (int(lengths.sum()),))
        assert parity == 0 and torch.equal(program(values, lengths), serving(values, lengths))
    if options.get("hashing") == "identity":
        with pytest.raises(torch.jit.Error, match="outside its feature.s vocabulary"):
            program(torch.full_like(values, 11), lengths)
