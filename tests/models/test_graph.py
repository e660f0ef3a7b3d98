"""LightGCN / NGCF / MF: propagation modes agree, and each model matches a dense reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys_emb.data.graphs import BPRBatch, graph_from_interactions, normalized_adjacency
from recsys_emb.models.graph import GraphBPRTrain, GraphCF, GraphModelConfig, csr_matmul


def _graph(seed: int = 0, num_users: int = 7, num_items: int = 9):
    """Random bipartite graph whose last user and last item are isolated."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, num_users - 1, 40)
    items = rng.integers(0, num_items - 1, 40)
    return graph_from_interactions(users, items, num_users, num_items)


def _model(cfg: GraphModelConfig, graph, seed: int = 0) -> GraphCF:
    torch.manual_seed(seed)
    return GraphCF(cfg, normalized_adjacency(graph, cfg.adjacency_kind))


def _table_grads(model: GraphCF) -> list[torch.Tensor]:
    return [model.tables.embedding_bags[t].weight.grad.clone() for t in ("user", "item")]


@pytest.mark.parametrize("kind", ["sym", "row_self_loop", "row_plus_identity"])
def test_hop_matches_dense_matmul_forward_and_backward(kind: str) -> None:
    graph = _graph()
    adj = normalized_adjacency(graph, kind)
    model = GraphCF(GraphModelConfig(name="lightgcn", embedding_dim=4, adjacency=kind), adj)
    dense = adj.to_dense().double()  # (N, N)
    x = torch.randn(adj.num_nodes, 4, dtype=torch.float64)
    for mode in ("full", "neighbor"):
        model.propagation.mode = mode
        xr = x.float().requires_grad_()
        y = model.propagation.hop(xr)
        g = torch.randn_like(y)
        y.backward(g)
        torch.testing.assert_close(y.double(), dense @ x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(xr.grad.double(), dense.t() @ g.double(), rtol=1e-5, atol=1e-6)
    csr = adj.to_sparse_csr()
    torch.testing.assert_close(csr_matmul(adj.indptr, adj.indices, adj.values, x.float()), torch.sparse.mm(csr, x.float()))


@pytest.mark.parametrize(
    "cfg",
    [
        GraphModelConfig(name="lightgcn", embedding_dim=8, num_layers=3),
        GraphModelConfig(name="ngcf", embedding_dim=8, num_layers=2, layer_dims=[8, 4], message_dropout=[0.0]),
        GraphModelConfig(name="ngcf", embedding_dim=8, num_layers=2, ngcf_layer_form="paper", message_dropout=[0.0]),
        GraphModelConfig(name="mf", embedding_dim=8),
    ],
    ids=["lightgcn", "ngcf_reference", "ngcf_paper", "mf"],
)
def test_lookup_and_neighbor_modes_equal_full_graph_mode(cfg: GraphModelConfig) -> None:
    graph = _graph(1)
    outs, grads = [], []
    for mode in ("full", "neighbor", "lookup"):
        cfg.propagation = mode
        model = _model(cfg, graph)  # same seed: same tables and layer weights
        out = model()
        (out.final * torch.linspace(-1, 1, out.final.numel()).view_as(out.final)).sum().backward()
        outs.append(out.final.detach())
        grads.append(_table_grads(model))
    for other in (1, 2):
        torch.testing.assert_close(outs[other], outs[0], rtol=1e-5, atol=1e-6)
        for g_other, g_full in zip(grads[other], grads[0]):
            torch.testing.assert_close(g_other, g_full, rtol=1e-5, atol=1e-6)


def test_lookup_and_neighbor_modes_equal_full_mode_with_node_dropout() -> None:
    graph = _graph(2)
    finals = []
    for mode in ("full", "neighbor", "lookup"):
        cfg = GraphModelConfig(name="lightgcn", embedding_dim=8, num_layers=2, propagation=mode, node_dropout=0.3)
        model = _model(cfg, graph)
        torch.manual_seed(5)
        finals.append(model().final.detach())
    torch.testing.assert_close(finals[1], finals[0])
    torch.testing.assert_close(finals[2], finals[0])


def _weights(model: GraphCF) -> torch.Tensor:
    w = model.tables.embedding_bags
    return torch.cat([w["user"].weight, w["item"].weight]).detach().double()  # (N, D)


def test_lightgcn_matches_dense_reference() -> None:
    graph = _graph(3)
    model = _model(GraphModelConfig(name="lightgcn", embedding_dim=8, num_layers=3), graph)
    p = normalized_adjacency(graph, "sym").to_dense().double()
    e = _weights(model)
    expected = (e + p @ e + p @ p @ e + p @ p @ p @ e) / 4
    torch.testing.assert_close(model().final.double(), expected, rtol=1e-5, atol=1e-6)


def test_lightgcn_zero_layers_is_matrix_factorisation() -> None:
    graph = _graph(4)
    model = _model(GraphModelConfig(name="lightgcn", embedding_dim=8, num_layers=0), graph)
    mf = _model(GraphModelConfig(name="mf", embedding_dim=8, num_layers=3), graph)  # mf forces 0 layers
    assert mf.cfg.num_layers == 0
    u_w, i_w = model.tables.embedding_bags["user"].weight, model.tables.embedding_bags["item"].weight
    users, items = model.user_item_embeddings()
    torch.testing.assert_close(users, u_w.detach())
    torch.testing.assert_close(items, i_w.detach())
    torch.testing.assert_close(mf.user_item_embeddings()[0], users)  # same seed, same tables
    # BPR with L2 on the batch == the textbook BPR-MF loss on the raw table rows
    u, pos, neg = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 3]), torch.tensor([5, 4, 0])
    loss, _ = GraphBPRTrain(model, l2=0.1)(BPRBatch(u, pos, neg))
    x = (u_w[u] * i_w[pos]).sum(1) - (u_w[u] * i_w[neg]).sum(1)
    ref = -F.logsigmoid(x).mean() + 0.1 * 0.5 * (u_w[u].pow(2).sum() + i_w[pos].pow(2).sum() + i_w[neg].pow(2).sum()) / 3
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("form", ["reference", "paper"])
def test_ngcf_matches_dense_reference(form: str) -> None:
    graph = _graph(5)
    cfg = GraphModelConfig(name="ngcf", embedding_dim=8, num_layers=2, layer_dims=[6, 4], ngcf_layer_form=form,
                           message_dropout=[0.0])
    model = _model(cfg, graph)
    p = normalized_adjacency(graph, cfg.adjacency_kind).to_dense().double()
    ego = _weights(model)
    outs = [ego]
    for layer in model.ngcf_layers:
        w1, b1 = layer.w1.weight.double(), layer.w1.bias.double()
        w2, b2 = layer.w2.weight.double(), layer.w2.bias.double()
        side = p @ ego
        if form == "reference":  # LeakyReLU(P E W1 + b1) + LeakyReLU((E * P E) W2 + b2)
            ego = F.leaky_relu(side @ w1.t() + b1, 0.2) + F.leaky_relu((ego * side) @ w2.t() + b2, 0.2)
        else:  # LeakyReLU((L + I) E W1 + (L E * E) W2 + b)
            ego = F.leaky_relu((side + ego) @ w1.t() + b1 + (side * ego) @ w2.t() + b2, 0.2)
        outs.append(ego / ego.norm(dim=1, keepdim=True).clamp_min(1e-12))
    expected = torch.cat(outs, 1)
    assert model.output_dim == 8 + 6 + 4
    torch.testing.assert_close(model().final.double(), expected, rtol=1e-5, atol=1e-6)
    assert cfg.adjacency_kind == ("row_self_loop" if form == "reference" else "sym")


def test_ngcf_message_dropout_only_in_training() -> None:
    graph = _graph(6)
    model = _model(GraphModelConfig(name="ngcf", embedding_dim=8, num_layers=2, message_dropout=[0.5]), graph)
    a, b = model.user_item_embeddings(), model.user_item_embeddings()
    torch.testing.assert_close(a[0], b[0])  # eval: deterministic
    model.train()
    torch.manual_seed(0)
    x = model().final
    torch.manual_seed(1)
    assert not torch.allclose(x, model().final)


def test_adjacency_kind_must_match_config() -> None:
    graph = _graph()
    with pytest.raises(ValueError, match="does not match"):
        GraphCF(GraphModelConfig(name="lightgcn"), normalized_adjacency(graph, "row"))


# ---- sharded neighbour-list mode (2 gloo processes) ----------------------------------------


def _sharded_parity(rank: int, world_size: int, sharding_type: str) -> None:
    from torchrec import EmbeddingBagCollection
    from torchrec.distributed import DistributedModelParallel
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    from recsys_emb.config.experiment import ShardingConfig
    from recsys_emb.distributed.planning import plan_sharding
    from recsys_emb.distributed.sharders import default_sharders
    from recsys_emb.models.graph import graph_tables

    lr = 0.5
    graph = _graph(7, num_users=11, num_items=13)
    cfg = GraphModelConfig(name="lightgcn", embedding_dim=8, num_layers=2, propagation="full")
    reference = _model(cfg, graph)  # full-graph mode, unsharded
    start = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    expected_out = reference().final.detach()

    def loss_of(final: torch.Tensor, r: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(10 + r)
        return (final * torch.randn(final.shape, generator=g)).sum()

    # TorchRec averages sharded gradients over ranks: the reference steps on the mean of the ranks' losses
    opt = torch.optim.SGD(reference.parameters(), lr=lr)
    final = reference().final
    (sum(loss_of(final, r) for r in range(world_size)) / world_size).backward()
    opt.step()
    expected_weights = {k: v.detach().clone() for k, v in reference.state_dict().items()}

    sharded_cfg = GraphModelConfig(name="lightgcn", embedding_dim=8, num_layers=2, propagation="neighbor")
    model = GraphCF(sharded_cfg, normalized_adjacency(graph, "sym"))
    model.tables = EmbeddingBagCollection(tables=graph_tables(graph.num_users, graph.num_items, sharded_cfg),
                                          is_weighted=True, device=torch.device("meta"))
    apply_optimizer_in_backward(torch.optim.SGD, list(model.tables.parameters()), {"lr": lr})
    plan = plan_sharding(model, ShardingConfig(type=sharding_type), world_size=world_size, device_type="cpu", batch_size=16)
    assert {ps.sharding_type for m in plan.plan.values() for ps in m.values()} == {sharding_type}
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan, sharders=default_sharders())
    state = dmp.state_dict()
    with torch.no_grad():
        for key, full in start.items():
            for shard in state[key].local_shards():
                (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                shard.tensor.copy_(full[r0:r0 + nr, c0:c0 + nc])
    out = dmp().final  # every rank pools all nodes
    torch.testing.assert_close(out.detach(), expected_out, rtol=1e-5, atol=1e-6)
    loss_of(out, rank).backward()  # fused SGD inside backward
    state = dmp.state_dict()
    for key, full in expected_weights.items():
        for shard in state[key].local_shards():
            (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            torch.testing.assert_close(shard.tensor, full[r0:r0 + nr, c0:c0 + nc], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(expected_weights[k], start[k]) for k in start)


def _sharded_parity_all(rank: int, world_size: int) -> None:
    for sharding_type in ("table_wise", "row_wise", "column_wise"):
        _sharded_parity(rank, world_size, sharding_type)


@pytest.mark.slow  # two spawned processes importing torchrec: ~20 s idle, 80 s on the busy 2-core machine
def test_sharded_neighbor_mode_equals_unsharded_full_mode_two_ranks() -> None:
    from tests.distributed.multiprocess import run_ranks

    run_ranks(_sharded_parity_all, 2)
