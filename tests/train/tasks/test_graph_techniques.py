"""Graph CF (LightGCN / NGCF / MF) and two-tower user/item tables from the ``embedding:`` spec: every
technique builds and trains, the neutral settings equal the plain model exactly, plain specs keep the
plain tables, the refused combinations say why, and the trainer runs a technique like a hand loop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from recsys_emb.config.embedding import EmbeddingSpec, TableGroup
from recsys_emb.config.graph import GraphExperimentConfig
from recsys_emb.config.io import ConfigError
from recsys_emb.config.two_tower import TwoTowerExperimentConfig
from recsys_emb.data.graphs import BPRBatch, BPRSampler, GraphDataset, graph_from_interactions, normalized_adjacency
from recsys_emb.models.graph import GraphBPRTrain, GraphCF, GraphModelConfig
from recsys_emb.models.two_tower import TwoTower, TwoTowerConfig
from recsys_emb.modules.dnis import frequency_blocks
from recsys_emb.train.tasks import load_experiment, train
from recsys_emb.train.tasks.graph import build_graph_model, graph_context, load_graph
from recsys_emb.train.tasks.two_tower import build_two_tower
from tests.train.tasks.test_graph import write_community_graph

U, I, D = 6, 9, 8
FAMILIES = ["lightgcn", "ngcf", "mf", "two_tower"]
UNIFIED, DNIS, OPTEMBED = {"unified": {"num_rows": 5}}, {"dnis": {"num_blocks": 2, "frequency": "index"}}, {"optembed": {}}
CHAINS = {  # the graph / two-tower cells of the composition matrix (docs/techniques/README.md)
    "plain": ["plain"],
    "hash": [{"hash": {"budget_fraction": 0.5}}],
    "unified": [UNIFIED],
    "qr": [{"qr": {"collisions": 3}}],
    "dnis": [DNIS],
    "optembed": [OPTEMBED],
    "unified+dnis": [UNIFIED, DNIS],
    "unified+optembed": [UNIFIED, OPTEMBED],
}
COLLISIONLESS = {"unified": {"layout": "collisionless"}}  # identity hashing: row = id
NEUTRAL = {  # chains that ARE the plain item table when its rows are the plain ones
    "collisionless": [COLLISIONLESS],
    "dnis": [DNIS],  # alpha == 1
    "optembed": [OPTEMBED],  # threshold -inf: every row kept; eval: no sampled dims
    "collisionless+dnis": [COLLISIONLESS, DNIS],
}
USERS, POS, NEG = torch.tensor([0, 1, 2, 5]), torch.tensor([1, 3, 4, 8]), torch.tensor([0, 2, 7, 6])


def tiny_graph() -> GraphDataset:
    """U users, I items; every user has 3 items, item 0 is the most frequent."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(U), 3)
    items = np.concatenate([[0, *rng.choice(np.arange(1, I), 2, replace=False)] for _ in range(U)])
    return graph_from_interactions(users, items, U, I)


def item_spec(chain: list, dim: int | None = None) -> EmbeddingSpec:
    return EmbeddingSpec([TableGroup("user", ["user"]), TableGroup("item", ["item"], chain, dim)])


def build(family: str, spec: EmbeddingSpec | None, graph: GraphDataset, propagation: str = "lookup",
          ) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    """(model, loss of a fixed batch); the loss draws its dropout / supernet masks from a fixed seed."""
    if family == "two_tower":
        torch.manual_seed(0)
        model = TwoTower(U, I, TwoTowerConfig(embedding_dim=D, tower_layers=[D]), embedding=spec, context=graph_context(graph))

        def tower_loss() -> torch.Tensor:
            torch.manual_seed(1)
            return model.loss(USERS, POS)

        return model, tower_loss
    cfg = GraphModelConfig(name=family, embedding_dim=D, num_layers=2, propagation=propagation)  # type: ignore[arg-type]
    model = build_graph_model(cfg, graph, seed=0, embedding=spec)
    step = GraphBPRTrain(model, l2=1e-3)

    def graph_loss() -> torch.Tensor:
        torch.manual_seed(1)
        return step(BPRBatch(USERS, POS, NEG))[0]

    return model, graph_loss


def embedding_module(model: nn.Module) -> nn.Module:
    return model.embedding if isinstance(model, TwoTower) else model.tables


def tables_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in model.named_parameters() if ".embedding_bags." in k}


def embeddings(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(model, TwoTower):
        return model.user_embeddings(), model.item_embeddings()
    return model.user_item_embeddings()


@torch.no_grad()
def copy_from_plain(plain: nn.Module, model: nn.Module) -> None:
    """Every tensor of ``model`` from ``plain`` by key; table ``full_item`` (collisionless) from table ``item``."""
    source = plain.state_dict()
    rows = {k.split(".")[-2]: v for k, v in source.items() if ".embedding_bags." in k}  # table name -> rows
    for key, value in model.state_dict().items():
        if ".embedding_bags." in key:
            value.copy_(rows[key.split(".")[-2].removeprefix("full_")])
        elif key in source:
            value.copy_(source[key])


@pytest.mark.parametrize("chain", list(CHAINS))
@pytest.mark.parametrize("family", FAMILIES)
def test_technique_builds_and_one_step_changes_its_tables(family: str, chain: str) -> None:
    model, loss_fn = build(family, item_spec(CHAINS[chain]), tiny_graph())
    before = tables_of(model)
    assert any(k.endswith("embedding_bags.user.weight") for k in before) and len(before) == (3 if chain == "qr" else 2)  # qr: two item tables
    assert (type(embedding_module(model)).__name__ == "EmbeddingBagCollection") == (chain == "plain")
    loss = loss_fn()
    assert torch.isfinite(loss)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = tables_of(model)
    for key, value in before.items():
        assert not torch.equal(value, after[key]), key
    users, items = embeddings(model)
    assert users.shape[0] == U and items.shape[0] == I and torch.isfinite(users).all() and torch.isfinite(items).all()


@pytest.mark.parametrize("neutral", list(NEUTRAL))
@pytest.mark.parametrize("family", FAMILIES)
def test_neutral_technique_equals_the_plain_model(family: str, neutral: str) -> None:
    graph = tiny_graph()
    plain, plain_loss = build(family, None, graph)
    model, loss_fn = build(family, item_spec(NEUTRAL[neutral]), graph)
    copy_from_plain(plain, model)
    if neutral == "optembed":
        optembed = embedding_module(model).groups["item"]
        optembed.threshold.data.fill_(-float("inf"))
        optembed.threshold_reg = 0.0  # its aux loss reg * exp(-t) would be inf
        model.eval()
        plain.eval()  # a training supernet samples dims
    for got, want in zip(embeddings(model), embeddings(plain)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(loss_fn(), plain_loss(), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_spec_keeps_the_plain_tables(family: str) -> None:
    graph = tiny_graph()
    reference, _ = build(family, None, graph)
    for spec in (EmbeddingSpec([TableGroup("user", ["user"]), TableGroup("item", ["item"], ["plain"])]),
                 EmbeddingSpec([TableGroup("all", chain=[], dim=D)])):
        model, _ = build(family, spec, graph)
        got, want = model.state_dict(), reference.state_dict()
        assert list(got) == list(want)
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_neighbor_propagation_refuses_a_technique() -> None:
    graph = tiny_graph()
    spec = item_spec(CHAINS["unified"])
    message = r"propagation: neighbor .*group 'item' uses technique 'unified'.*propagation: lookup"
    with pytest.raises(ValueError, match=message):
        build("lightgcn", spec, graph, propagation="neighbor")
    with pytest.raises(ValueError, match=message):
        GraphExperimentConfig(model=GraphModelConfig(propagation="neighbor"), embedding=spec)
    cfg = GraphModelConfig(embedding_dim=D, propagation="full")
    with pytest.raises(ValueError, match="propagation: full reads the plain table weights"):
        GraphCF(cfg, normalized_adjacency(graph, cfg.adjacency_kind), embedding=spec)
    build("lightgcn", item_spec(["plain"]), graph, propagation="neighbor")  # plain chains keep every mode


@pytest.mark.parametrize("family", ["lightgcn", "two_tower"])
def test_errors_name_the_group_and_technique(family: str) -> None:
    graph = tiny_graph()
    message = r"group 'item' \(chain \['unified'\]\): feature 'item' gets 4-dim rows.*embedding_dim=8"
    with pytest.raises(ConfigError, match=message):
        build(family, item_spec(CHAINS["unified"], dim=4), graph)
    with pytest.raises(ConfigError, match=r"group 'item': unknown feature\(s\) \['movie'\]"):
        build(family, EmbeddingSpec([TableGroup("item", ["movie"])]), graph)
    with pytest.raises(ConfigError, match="'dare' needs a behaviour-sequence group"):
        build(family, item_spec(["dare"]), graph)
    with pytest.raises(ValueError, match="group name 'items' cannot name a submodule"):
        TableGroup("items", ["item"])


def test_dnis_frequency_data_counts_the_training_interactions() -> None:
    graph = tiny_graph()
    spec = EmbeddingSpec([TableGroup("all", chain=[{"dnis": {"num_blocks": 2, "frequency": "data"}}])])
    counts = {"user": np.full(U, 3), "item": np.bincount(graph.train.indices, minlength=I)}
    model, _ = build("lightgcn", spec, graph)
    tower = build_two_tower(TwoTowerExperimentConfig(model=TwoTowerConfig(embedding_dim=D), embedding=spec), graph)
    for dnis in (model.tables, tower.embedding):
        for f in ("user", "item"):
            assert torch.equal(dnis.block_of(f), torch.from_numpy(frequency_blocks(counts[f], 2))), f
    assert int(dnis.block_of("item")[0]) == 0  # the most frequent item is in the first block


@pytest.mark.parametrize("family", ["ngcf", "two_tower"])
def test_technique_aux_loss_joins_the_loss(family: str) -> None:
    model, loss_fn = build(family, item_spec([{"optembed": {"threshold_reg": 0.5}}]), tiny_graph())
    with_aux = loss_fn()
    aux = embedding_module(model).aux_loss()
    assert aux is not None and float(aux.detach()) == pytest.approx(0.5)  # 0.5 * exp(-0) for the one item field
    optembed = embedding_module(model).groups["item"]
    optembed.threshold_reg = 0.0
    torch.testing.assert_close(with_aux, loss_fn() + aux)


def test_trainer_with_unified_items_follows_a_plain_pytorch_loop(tmp_path: Path) -> None:
    """DMP (data-parallel tables) from the seeded unsharded model's weights, hash salts included, takes
    the steps of a hand loop with torch's Adam; the doc's worked config (docs/techniques/graph_cf.md)."""
    data = write_community_graph(tmp_path / "graph", num_users=40, num_items=30)
    config = tmp_path / "lightgcn_unified.yaml"
    config.write_text(
        (Path(__file__).resolve().parents[3] / "configs" / "gowalla_lightgcn_tiny.yaml").read_text()
        + "embedding:\n  groups:\n    - {name: user_ids, features: [user]}\n"
        + "    - {name: item_ids, features: [item], chain: [{unified: {budget_fraction: 0.5}}]}\n"
    )
    cfg = load_experiment(config, [f"data.path={data}", "train.epochs=1", "train.max_steps_per_epoch=3",
                                   "evaluation.max_users=10"])
    assert cfg.embedding.groups[1].chain == [{"unified": {"budget_fraction": 0.5}}]
    train(cfg, tmp_path / "run")
    graph = load_graph(cfg)
    reference = build_graph_model(cfg.model, graph, seed=cfg.train.seed, embedding=cfg.embedding)
    step = GraphBPRTrain(reference, cfg.model.l2, cfg.model.l2_on)
    opt = torch.optim.Adam(reference.parameters(), lr=cfg.train.embedding_optimizer.lr)
    for n, batch in enumerate(BPRSampler(graph.train, graph.num_items, cfg.train.batch_size, cfg.train.seed).epoch(0)):
        if n == 3:
            break
        opt.zero_grad()
        step(batch)[0].backward()
        opt.step()
    got = torch.load(tmp_path / "run" / "model.pt", map_location="cpu", weights_only=True)
    want = reference.state_dict()
    assert sorted(got) == sorted(f"model.{k}" for k in want)
    assert any("unified_item" in k for k in want)
    for key, value in want.items():
        torch.testing.assert_close(got[f"model.{key}"], value, rtol=1e-5, atol=1e-6, msg=key)
    start = build_graph_model(cfg.model, graph, seed=cfg.train.seed, embedding=cfg.embedding).state_dict()
    assert all(not torch.equal(start[k], want[k]) for k in want if k.endswith(".weight"))  # 3 steps moved every table


def test_chains_are_the_matrix_cells() -> None:
    """This file tests exactly the graph / two-tower cells of the composition matrix the docs show."""
    matrix = pytest.importorskip("recsys_emb.modules.matrix")
    for family in FAMILIES:
        assert sorted(c for m, c in matrix.cells() if m == family) == sorted(CHAINS), family
