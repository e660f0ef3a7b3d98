"""The composition matrix (recsys_emb/modules/matrix.py): every (model, technique chain) cell.

For every cell: the model builds from the embedding spec on tiny data and one training step changes
its tables; on 2 gloo ranks the sharded model (row-wise tables, pre-transforms before the input
all-to-all) gives the unsharded forward on each rank's half of a batch and, after one SGD step on
the mean of the ranks' losses, the same weights (rtol 1e-5). Neutral settings (``unified`` with the
collisionless layout, ``dnis`` with alpha = 1, ``optembed`` with threshold -inf, ``dare`` with tied
tables, semantic IDs whose code is the item itself) equal the plain model exactly. Bad specs give
errors naming the group and the key. The docs' compatibility table is this module's cell list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from recsys_emb.config.embedding import EmbeddingSpec, TableGroup
from recsys_emb.config.experiment import ExperimentConfig, OptimizerConfig, ShardingConfig, TrainConfig
from recsys_emb.config.io import ConfigError
from recsys_emb.config.model import DCNv2Config, DeepFMConfig, DLRMConfig, ModelConfig
from recsys_emb.config.sequence import SequenceModelConfig
from recsys_emb.data.dataset import PreparedCTRData
from recsys_emb.data.sequences import FIRST_ID, SequenceDataConfig, SequenceDataset, load_raw, write_synthetic_s3rec
from recsys_emb.models.din import DINConfig
from recsys_emb.models.long_sequence import TwoStageConfig
from recsys_emb.models.sequence import SequenceTrain, build_sequence_model
from recsys_emb.modules.matrix import CHAINS, FAMILIES, cells, markdown_table, why_not
from recsys_emb.semantic_ids.codes import SemanticIds
from recsys_emb.train.tasks.ctr import build_ctr_model
from recsys_emb.train.tasks.sequence import sequence_facts
from tests.conftest import REPO, make_prepared
from tests.distributed.multiprocess import run_ranks

LR = 0.1
HALF = 8  # examples per rank
OPTIONS: dict[str, dict[str, Any]] = {
    "hash": {"budget_fraction": 0.5}, "unified": {"budget_fraction": 0.5}, "qr": {"collisions": 3}, "dnis": {"num_blocks": 2, "frequency": "index"},
    "optembed": {}, "dare": {"attention_dim": 4},
}
TESTED = [(m, c) for m, c in cells() if FAMILIES[m] in ("ctr", "sequence")]
# graph / two-tower cells train and reduce in tests/train/tasks/test_graph_techniques.py; all cells shard here:
# the default suite shards every chain of one model per family kind (one pair of ranks), the rest run with -m slow
SHARDED = [(m, c) for m, c in cells() if m in ("dcnv2", "two_stage", "ngcf", "two_tower") or (m, c) == ("lr", "plain")]
SHARDED_OTHER = [cell for cell in cells() if cell not in SHARDED]


# ------------------------------------------------------------------------------------------ data
def make_data(root: Path) -> dict[str, str]:
    """Tiny CTR and sequence data plus semantic-ID code files for both (paths as strings: sent to ranks)."""
    ctr = make_prepared(root / "ctr", 64, vocab=30)
    seq = write_synthetic_s3rec(root / "seq", users=40, items=30, categories=4, seed=1)
    rng = np.random.default_rng(0)
    SemanticIds([str(i) for i in range(30)], rng.integers(0, 4, (30, 2)), [4, 4]).save(root / "ctr_sids.npz")
    SemanticIds([str(i) for i in range(64)], rng.integers(0, 4, (64, 2)), [4, 4]).save(root / "seq_sids.npz")
    return {"ctr": str(ctr), "seq": str(seq), "ctr_codes": str(root / "ctr_sids.npz"), "seq_codes": str(root / "seq_sids.npz")}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_data(tmp_path_factory.mktemp("composition"))


def sequence_dataset(paths: dict[str, str]) -> SequenceDataset:
    cfg = SequenceDataConfig(dataset="s3rec", stem="Synth", path=paths["seq"], max_history=6, cache=False)
    return SequenceDataset(load_raw(cfg), cfg)


# ------------------------------------------------------------------------------------------ specs
def entries(chain: tuple[str, ...], codes: str, drop: tuple[str, ...] = (), **override: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for t in chain:
        if t in drop:
            continue
        if t == "semantic_ids":
            out.append({t: {"codes": codes, "tokenizer": "prefix_ngram", **override.get(t, {})}})
        else:
            out.append({t: {**OPTIONS[t], **override.get(t, {})}})
    return out


def spec_for(model: str, chain_name: str, paths: dict[str, str], **override: dict[str, Any]) -> EmbeddingSpec:
    """The cell's spec: the chain on every feature (semantic_ids on the item feature only; the side features
    of sequence models, user and target_attrs, get the chain's layout only)."""
    chain = CHAINS[chain_name]
    if FAMILIES[model] == "ctr":
        codes = paths["ctr_codes"]
        if "semantic_ids" in chain:
            return EmbeddingSpec(groups=[TableGroup("item", ["C1"], entries(chain, codes, **override)),
                                         TableGroup("rest", None, entries(chain, codes, ("semantic_ids",), **override))])
        return EmbeddingSpec(groups=[TableGroup("all", None, entries(chain, codes, **override))])
    codes = paths["seq_codes"]
    # the side features (user id, target item's attribute bag) multiplexed by the chain's layout; post-lookup
    # searches need one id per bag and dare needs a sequence, so the side group drops them
    side = TableGroup("side", ["user", "target_attrs"], entries(chain, codes, ("semantic_ids", "dare", "dnis", "optembed"), **override))
    if "semantic_ids" in chain:
        return EmbeddingSpec(groups=[TableGroup("item", ["item"], entries(chain, codes, **override)),
                                     TableGroup("rest", ["category", "position"], entries(chain, codes, ("semantic_ids",), **override)), side])
    return EmbeddingSpec(groups=[TableGroup("fields", ["item", "category", "position"], entries(chain, codes, **override)), side])


def graph_spec(chain_name: str) -> EmbeddingSpec:
    """A graph / two-tower cell's spec: the chain on both id tables."""
    options = {"unified": {"num_rows": 5, "budget_fraction": None}, "hash": {"num_rows": 5, "budget_fraction": None}}
    return EmbeddingSpec(groups=[TableGroup("ids", None, entries(CHAINS[chain_name], "", **options))])


def build_graph_cell(model: str, spec: EmbeddingSpec, device: str = "cpu") -> nn.Module:
    """``GraphBPRTrain`` / ``TwoTowerTrain`` of a graph / two-tower cell on a tiny graph, seeded."""
    from recsys_emb.config.two_tower import TwoTowerExperimentConfig
    from recsys_emb.models.graph import GraphBPRTrain, GraphModelConfig
    from recsys_emb.models.two_tower import TwoTowerConfig, TwoTowerTrain
    from recsys_emb.train.tasks.graph import build_graph_model
    from recsys_emb.train.tasks.two_tower import build_two_tower
    from tests.train.tasks.test_graph_techniques import tiny_graph

    graph = tiny_graph()
    if model == "two_tower":
        cfg = TwoTowerExperimentConfig(model=TwoTowerConfig(embedding_dim=8, tower_layers=[8]), embedding=spec)
        tower = build_two_tower(cfg, graph, device)
        if device == "meta":
            tower.log_q = tower.log_q.to("cpu")
        return TwoTowerTrain(tower)
    mcfg = GraphModelConfig(name=model, embedding_dim=8, num_layers=2, message_dropout=[0.0])  # type: ignore[arg-type]
    gcf = build_graph_model(mcfg, graph, seed=0, device=device, embedding=spec)
    gcf.propagation.to("cpu")  # buffers (the adjacency), never on meta
    return GraphBPRTrain(gcf, l2=1e-3)


def build(model: str, spec: EmbeddingSpec, paths: dict[str, str], device: str = "cpu", ds: SequenceDataset | None = None) -> nn.Module:
    """The training module (``CTRTrain`` / ``SequenceTrain`` / ``GraphBPRTrain`` / ``TwoTowerTrain``) of a cell, seeded."""
    torch.manual_seed(0)
    if FAMILIES[model] in ("graph", "two_tower"):
        return build_graph_cell(model, spec, device)
    if FAMILIES[model] == "ctr":
        mcfg = ModelConfig(name=model, embedding_dim=8, dlrm=DLRMConfig([8], [8]), dcnv2=DCNv2Config(1, deep_layer_sizes=[8]),
                           deepfm=DeepFMConfig([8], dropout=0.0))
        return build_ctr_model(ExperimentConfig(model=mcfg, embedding=spec), PreparedCTRData.open(paths["ctr"]), device)
    ds = ds or sequence_dataset(paths)
    mcfg = SequenceModelConfig(name=model, embedding_dim=8, side_features=["user", "target_attrs"],
                               din=DINConfig(attention_hidden=[8], mlp=[8], attention_activation="prelu", mlp_activation="prelu"),
                               two_stage=TwoStageConfig(top_k=3, mlp=[8]))
    return SequenceTrain(build_sequence_model(mcfg, spec, sequence_facts(ds), device=device))


def batch(model: str, paths: dict[str, str], rank: int = 0, size: int = HALF, ds: SequenceDataset | None = None) -> Any:
    """Rows ``[rank * size, (rank + 1) * size)`` of a fixed batch."""
    if FAMILIES[model] in ("graph", "two_tower"):
        from recsys_emb.data.graphs import BPRBatch

        users, pos, neg = torch.tensor([0, 1, 2, 5, 3, 4, 0, 2]), torch.tensor([1, 3, 4, 8, 2, 5, 6, 7]), torch.tensor([0, 2, 7, 6, 1, 8, 3, 4])
        half = slice(rank * 4, (rank + 1) * 4)
        return BPRBatch(users[half], pos[half], neg[half])
    if FAMILIES[model] == "ctr":
        return PreparedCTRData.open(paths["ctr"]).batch(slice(rank * size, (rank + 1) * size))
    ds = ds or sequence_dataset(paths)
    return ds.make_batch(ds.examples("train").take(np.arange(rank * size, (rank + 1) * size)))


def tables(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if "embedding_bags" in k}


# ------------------------------------------------------------------------------------------ one step
@pytest.mark.parametrize("model,chain", TESTED)
def test_cell_builds_and_trains_one_step(model: str, chain: str, data: dict[str, str]) -> None:
    train = build(model, spec_for(model, chain, data), data)
    before = tables(train)
    torch.manual_seed(1)
    loss, _ = train(batch(model, data, size=2 * HALF))
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.SGD(train.parameters(), lr=LR).step()
    after = tables(train)
    assert any(not torch.equal(before[k], after[k]) for k in before), "no table changed"


def test_refused_cells_say_why_and_the_spec_refuses_them(data: dict[str, str]) -> None:
    refused = [(m, c) for m in FAMILIES for c in CHAINS if why_not(m, c) is not None]
    assert ("dcnv2", "dare") in refused and ("lr", "dnis") in refused and ("din", "semantic_ids+unified+dare") not in refused
    with pytest.raises(ConfigError, match="'dare' needs a behaviour-sequence group"):
        build("dcnv2", spec_for("dcnv2", "dare", data), data)
    with pytest.raises(ConfigError, match="'dnis' searches embedding dims, but 'lr'"):
        build("lr", spec_for("lr", "dnis", data), data)


# ------------------------------------------------------------------------------------------ neutral settings
def _neutral(model: str, chain: str, paths: dict[str, str]) -> tuple[nn.Module, nn.Module]:
    """(plain model, technique model in its neutral setting with the plain model's weights)."""
    plain = build(model, spec_for(model, "plain", paths), paths)
    override = {"unified": {"layout": "collisionless", "budget_fraction": None}, "dare": {"attention_dim": None}}
    tech = build(model, spec_for(model, chain, paths, **override), paths)
    src = plain.state_dict()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(3)
        for name, value in src.items():  # fresh table rows, so no init coincidence can make the check pass
            if "embedding_bags" in name:
                value.copy_(torch.randn(value.shape, generator=gen))
        for name, value in tech.state_dict().items():  # dense layers by name; tables below
            if name in src and src[name].shape == value.shape:
                value.copy_(src[name])
        plain_rows = {k.rsplit(".", 2)[-2]: v for k, v in src.items() if "embedding_bags" in k}  # table -> rows
        for name, value in tech.state_dict().items():
            if "embedding_bags" not in name:
                continue
            # dnis / optembed / dare: the plain table's name; collisionless unified: full_<feature>
            table = name.rsplit(".", 2)[-2].removeprefix("att_").removeprefix("rep_").removeprefix("full_")
            (rows,) = [v for p, v in plain_rows.items() if p in (table, f"t_{table}", f"side_{table}")]
            value.copy_(rows)
        for name, p in tech.named_parameters():
            if name.endswith("threshold"):
                p.fill_(-float("inf"))  # optembed: every row kept
    return plain, tech


NEUTRAL = [(m, c) for m, c in TESTED if c in ("unified", "dnis", "optembed", "dare", "unified+dare", "unified+dnis")]


@pytest.mark.parametrize("model,chain", NEUTRAL)
def test_neutral_setting_equals_the_plain_model(model: str, chain: str, data: dict[str, str]) -> None:
    plain, tech = _neutral(model, chain, data)
    plain.eval()
    tech.eval()  # optembed samples no dims in eval
    b = batch(model, data, size=2 * HALF)
    torch.testing.assert_close(tech(b)[1][1], plain(b)[1][1], rtol=0, atol=1e-6)


def test_sid_identity_codes_equal_plain_din(tmp_path: Path, data: dict[str, str]) -> None:
    """One SID level whose code is the raw item itself, unigram pieces, dense rows copied from the item table."""
    ds = sequence_dataset(data)
    raw_max = int(ds.item_raw_ids.max())
    SemanticIds([str(i) for i in range(raw_max + 1)], np.arange(raw_max + 1)[:, None], [raw_max + 1]).save(tmp_path / "id.npz")
    paths = {**data, "seq_codes": str(tmp_path / "id.npz")}
    plain = build("din", spec_for("din", "plain", paths), paths, ds=ds)
    tech = build("din", spec_for("din", "semantic_ids", paths, semantic_ids={"tokenizer": "unigram", "mapping": "dense"}), paths, ds=ds)
    src = plain.state_dict()
    with torch.no_grad():
        for name, value in tech.state_dict().items():
            if name in src and src[name].shape == value.shape and "embedding_bags.item." not in name:
                value.copy_(src[name])
            if name.endswith("embedding_bags.category.weight") or name.endswith("embedding_bags.position.weight"):
                value.copy_(next(v for k, v in src.items() if k.endswith(name.rsplit(".", 3)[-3] + "." + name.rsplit(".", 2)[-2] + ".weight")))
        sid = tech.model.embedding.lookup.attention.groups["item"]
        item_rows = next(v for k, v in src.items() if k.endswith("embedding_bags.item.weight"))
        weight = sid.ebc.embedding_bags["item"].weight
        offsets, rows = sid.transform.item_offsets, sid.transform.item_rows
        for enc in range(FIRST_ID, ds.num_items):
            (row,) = rows[offsets[enc - FIRST_ID]:offsets[enc - FIRST_ID + 1]].tolist()
            weight[row] = item_rows[enc]
        item_rows[0] = item_rows[1] = weight[0]  # missing / OOV ids -> the SID "unknown" row
    plain.eval()
    tech.eval()
    b = batch("din", paths, size=2 * HALF, ds=ds)
    torch.testing.assert_close(tech(b)[1][1], plain(b)[1][1], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------ bad specs
def test_bad_specs_name_the_group_and_the_key(data: dict[str, str]) -> None:
    cases = [
        (EmbeddingSpec(groups=[TableGroup("g", ["C9"])]), "embedding group 'g': unknown feature.*C9"),
        (EmbeddingSpec(groups=[TableGroup("g", None, ["hash", "unified"])]), "group 'g': 'hash' and 'unified' are both table layouts"),
        (EmbeddingSpec(groups=[TableGroup("g", None, ["dnis", "unified"])]), "group 'g': 'unified' cannot come after 'dnis'"),
        (EmbeddingSpec(groups=[TableGroup("g", None, ["hash", "dnis"])]), "group 'g': 'hash' and 'dnis' do not stack"),
        (EmbeddingSpec(groups=[TableGroup("g", None, ["semantic_idz"])]), "group 'g': unknown technique 'semantic_idz'"),
        (EmbeddingSpec(groups=[TableGroup("g", None, [{"unified": {"num_row": 3}}])]), "did you mean 'num_rows'"),
        (EmbeddingSpec(groups=[TableGroup("g", ["C1"])]), r"feature\(s\) \['C2', 'C3', 'C4'\] .* are in no group"),
    ]
    for spec, message in cases:
        with pytest.raises(ConfigError, match=message):
            build("dcnv2", spec, data)
    with pytest.raises(ValueError, match="feature 'C1' is in two groups, 'a' and 'b'"):
        EmbeddingSpec(groups=[TableGroup("a", ["C1"]), TableGroup("b", ["C1", "C2"])])
    with pytest.raises(ConfigError, match="group 'mixed' mixes sequence fields \\['item'\\] and side features \\['user'\\]"):
        build("din", EmbeddingSpec(groups=[TableGroup("mixed", ["item", "user"]), TableGroup("rest")]), data)


def test_old_embedding_form_is_refused_with_the_new_one() -> None:
    from recsys_emb.config.io import from_dict

    with pytest.raises(ConfigError, match="(?s)old single-technique form.*groups:.*- name: all.*unified:.*num_rows: 10"):
        from_dict(ExperimentConfig, {"embedding": {"type": "unified", "options": {"num_rows": 10}}})
    with pytest.raises(ConfigError, match="(?s)model.fields.*dare"):
        from_dict(SequenceModelConfig, {"decoupled": True, "attention_dim": 4})


def test_docs_table_is_the_tested_cell_list() -> None:
    page = (REPO / "docs" / "techniques" / "README.md").read_text()
    assert markdown_table() in page, "regenerate the table: python -m recsys_emb.modules.matrix"


# ------------------------------------------------------------------------------------------ sharded
def _parity(rank: int, world_size: int, paths: dict[str, str], done: str, which: str = "default") -> None:
    from recsys_emb.train.env import DistEnv
    from recsys_emb.train.parallel import copy_into_shards, shard_model

    env = DistEnv(rank=rank, world_size=world_size, local_rank=rank, device=torch.device("cpu"), backend="gloo", owns_group=False)
    ds = sequence_dataset(paths)
    sgd = OptimizerConfig(name="sgd", lr=LR)
    for model, chain in SHARDED if which == "default" else SHARDED_OTHER:
        retrieval = FAMILIES[model] in ("graph", "two_tower")
        spec = graph_spec(chain) if retrieval else spec_for(model, chain, paths)
        reference = build(model, spec, paths, ds=ds)
        start = {k: v.detach().clone() for k, v in reference.state_dict().items()}
        batches = [batch(model, paths, r, ds=ds) for r in range(world_size)]
        torch.manual_seed(7)
        ref_loss, ref_aux = reference(batches[rank])
        stepped = build(model, spec, paths, ds=ds)
        stepped.load_state_dict(start)
        losses = []
        for r in range(world_size):
            torch.manual_seed(7)
            losses.append(stepped(batches[r])[0])
        (sum(losses) / world_size).backward()
        torch.optim.SGD(stepped.parameters(), lr=LR).step()
        expected = stepped.state_dict()

        dmp, unfused = shard_model(build(model, spec, paths, "meta", ds=ds), env,
                                   TrainConfig(embedding_optimizer=sgd, dense_optimizer=sgd), ShardingConfig(type="row_wise"))
        copy_into_shards(dmp, start)
        torch.manual_seed(7)
        loss, aux = dmp(batches[rank])
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6, msg=lambda m: f"{model}/{chain} loss: {m}")
        if not retrieval:  # CTR / sequence: the logits too
            torch.testing.assert_close(aux[1], ref_aux[1], rtol=1e-5, atol=1e-6, msg=lambda m: f"{model}/{chain} forward: {m}")
        loss.backward()  # fused SGD on the sharded tables; dense gradients are averaged by DDP
        dense = [p for n, p in dmp.named_parameters() if p.grad is not None]
        if dense:  # LightGCN / MF with plain tables have no dense parameters
            torch.optim.SGD(dense, lr=LR).step()
        got = dmp.state_dict()
        missing = [k for k in expected if k not in got and "running_" not in k]
        assert not missing, f"{model}/{chain}: the sharded model lacks state-dict keys {missing[:5]}"
        for key, value in expected.items():
            if "running_" in key:
                continue
            target = got[key]
            if hasattr(target, "local_shards"):
                for shard in target.local_shards():
                    (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    torch.testing.assert_close(shard.tensor, value[r0:r0 + nr, c0:c0 + nc], rtol=1e-5, atol=1e-6,
                                               msg=lambda m, k=key: f"{model}/{chain} {k}: {m}")
            else:
                torch.testing.assert_close(target, value, rtol=1e-5, atol=1e-6, msg=lambda m, k=key: f"{model}/{chain} {k}: {m}")
        Path(done, f"{model}-{chain}.rank{rank}").touch()


def _parity_cells(data: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
                  which: str) -> tuple[Path, BaseException | None]:
    done = tmp_path_factory.mktemp(f"composition_done_{which}")
    try:
        run_ranks(_parity, 2, data, str(done), which)
    except Exception as e:  # noqa: BLE001 (re-raised by every cell that did not finish)
        return done, e
    return done, None


@pytest.fixture(scope="module")
def parity_run(data: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BaseException | None]:
    """The :data:`SHARDED` cells in ONE pair of spawned ranks (each spawn pays seconds of imports)."""
    return _parity_cells(data, tmp_path_factory, "default")


@pytest.fixture(scope="module")
def parity_run_other(data: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BaseException | None]:
    """The :data:`SHARDED_OTHER` cells, likewise (slow tests only)."""
    return _parity_cells(data, tmp_path_factory, "other")


def _check_parity(model: str, chain: str, run: tuple[Path, BaseException | None]) -> None:
    done, error = run
    if not all((done / f"{model}-{chain}.rank{r}").exists() for r in range(2)):
        raise AssertionError(f"sharded != unsharded (or the run ended earlier) for {model} / {chain}") from error


def test_sharded_cells_cover_every_chain_and_family() -> None:
    assert {c for _, c in SHARDED} == {c for _, c in cells()}
    assert {FAMILIES[m] for m, _ in SHARDED} == set(FAMILIES.values())
    assert sorted(SHARDED + SHARDED_OTHER) == sorted(cells())


@pytest.mark.parametrize("model,chain", SHARDED)
def test_sharded_cell_equals_unsharded_two_ranks(model: str, chain: str, parity_run: tuple[Path, BaseException | None]) -> None:
    _check_parity(model, chain, parity_run)


@pytest.mark.slow
@pytest.mark.parametrize("model,chain", SHARDED_OTHER)
def test_other_sharded_cell_equals_unsharded_two_ranks(model: str, chain: str,
                                                      parity_run_other: tuple[Path, BaseException | None]) -> None:
    _check_parity(model, chain, parity_run_other)


# ------------------------------------------------------------------------------------------ independent composition
def test_din_composition_equals_an_independent_composition(data: dict[str, str]) -> None:
    """DIN with item = semantic IDs -> unified -> dare, category + position = dare, user + target attributes =
    multiplexed side features:
    the forward equals the same embeddings composed by hand from the tables (pieces, salted hash rows, sums)."""
    from recsys_emb.modules.semantic_ids import ItemIds, SemanticIdOptions, item_piece_rows
    from recsys_emb.modules.unified import hash_coefficients, salted_hash

    ds = sequence_dataset(data)
    sid = {"codes": data["seq_codes"], "tokenizer": "unigram", "mapping": "dense"}
    spec = EmbeddingSpec(groups=[
        TableGroup("item", ["item"], [{"semantic_ids": sid}, {"unified": {"num_rows": 23}}, {"dare": {"attention_dim": 4}}]),
        TableGroup("rest", ["category", "position"], [{"dare": {"attention_dim": 4}}]),
        TableGroup("side", ["user", "target_attrs"], [{"unified": {"num_rows": 7}}]),
    ])
    train = build("din", spec, data, ds=ds).eval()
    din = train.model
    state = dict(train.named_parameters())

    def weight(table: str) -> torch.Tensor:
        (w,) = [v for k, v in state.items() if k.endswith(f"embedding_bags.{table}.weight")]
        return w.detach()

    offsets, rows, _, _ = item_piece_rows(SemanticIdOptions(**sid), ItemIds(ds.item_raw_ids, FIRST_ID, ds.popularity[FIRST_ID:]))

    def hashed(ids: list[int], feature: str, num_rows: int) -> torch.Tensor:
        coeff = torch.tensor(hash_coefficients(0, feature, 0)).reshape(1, 1, 3).expand(len(ids), 1, 3)
        return salted_hash(torch.tensor(ids, dtype=torch.int64), coeff, torch.full((len(ids),), num_rows))[:, 0]

    def item_rows(ids: torch.Tensor, role: str) -> torch.Tensor:
        table = weight(f"{role}_unified_item")
        out = []
        for v in ids.tolist():
            pieces = rows[offsets[v - FIRST_ID]:offsets[v - FIRST_ID + 1]].tolist() if v >= FIRST_ID else [0]
            out.append(table[hashed(pieces, "item", 23)].sum(0))
        return torch.stack(out)

    b = batch("din", data, size=2 * HALF, ds=ds)
    kjt = b.sparse_features
    tokens = {}
    for role in ("att", "rep"):
        hist = [item_rows(kjt["hist_item"].values(), role), weight(f"{role}_category")[kjt["hist_cat"].values()],
                weight(f"{role}_position")[kjt["hist_pos"].values()]]
        target = [item_rows(kjt["target_item"].values(), role), weight(f"{role}_category")[kjt["target_cat"].values()],
                  weight(f"{role}_position")[kjt["target_pos"].values()]]
        tokens[role] = (torch.cat(hist, 1), torch.cat(target, 1))
    shared = weight("unified_side")  # user id and the target's attribute bag multiplexed into one table
    attrs = kjt["target_attrs"]
    bag_sums = [shared[hashed(bag.tolist(), "target_attrs", 7)].sum(0) if len(bag) else torch.zeros(8)
                for bag in torch.split(attrs.values(), attrs.lengths().tolist())]
    side = torch.cat([shared[hashed(kjt["user"].values().tolist(), "user", 7)], torch.stack(bag_sums)], 1)
    lengths = kjt["hist_item"].lengths()
    seg = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    keys, query = tokens["att"]
    values, target = tokens["rep"]
    with torch.no_grad():
        w = din.activation_unit(query[seg], keys)
        interest = torch.zeros(len(lengths), values.shape[1]).index_add(0, seg, w[:, None] * values)
        expected = din.mlp(torch.cat([interest, target, side], 1)).squeeze(1)
        got = din(kjt)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_dare_on_some_fields_only(data: dict[str, str]) -> None:
    """Fields without ``dare`` serve both roles with one table; the others get attention + representation tables."""
    spec = EmbeddingSpec(groups=[TableGroup("item", ["item"], [{"dare": {"attention_dim": 4}}]),
                                 TableGroup("rest", ["category", "position"]), TableGroup("side", ["user", "target_attrs"])])
    train = build("two_stage", spec, data)
    emb = train.model.embedding
    assert emb.attention_dim == 4 + 8 + 8 and emb.representation_dim == 8 + 8 + 8
    att, rep, _ = emb(batch("two_stage", data).sparse_features)
    assert att["hist_item"].values().shape[1] == 4 and rep["hist_item"].values().shape[1] == 8
    assert att["hist_cat"] is rep["hist_cat"]  # one table serves both roles
    loss, _ = train(batch("two_stage", data))
    loss.backward()
