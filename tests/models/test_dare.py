"""DARE layout and the two-stage model: tied == coupled, gradient isolation, jagged top-k, naive references."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from recsys_emb.data.sequences import FIELDS
from recsys_emb.models.din import DIN, DINConfig
from recsys_emb.models.long_sequence import TwoStageConfig, TwoStageModel, jagged_topk
from tests.models.seq_helpers import GROUPS, make_kjt, seq_embedding, table

HISTORIES = [[3, 4, 5, 6, 7, 8, 9, 10], [], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12], [2, 2, 5]]
TARGETS = [10, 11, 12, 13, 14]


def _tied_pair(model_cls, config, dim: int = 4):  # noqa: ANN001, ANN202
    """(coupled model, DARE model whose attention AND representation tables equal the coupled tables)."""
    torch.manual_seed(0)
    coupled = model_cls(seq_embedding(dim), config)
    dare = model_cls(seq_embedding(dim, ["dare"]), config)
    state = {k: v for k, v in coupled.state_dict().items() if not k.startswith("embedding.")}
    dare.load_state_dict(state, strict=False)
    with torch.no_grad():
        for g in GROUPS:
            w = table(coupled.embedding, g)
            table(dare.embedding, f"att_{g}", "attention").copy_(w)
            table(dare.embedding, f"rep_{g}", "representation").copy_(w)
    return coupled, dare


@pytest.mark.parametrize(
    "model_cls,config",
    [
        (TwoStageModel, TwoStageConfig(top_k=3, mlp=[8])),
        (TwoStageModel, TwoStageConfig(top_k=3, mlp=[8], aux_weight=0.5, aux_mlp=[4])),
        (DIN, DINConfig(attention_hidden=[8], mlp=[8], attention_activation="prelu", mlp_activation="prelu")),
    ],
)
def test_tied_tables_equal_the_coupled_model_exactly(model_cls, config) -> None:  # noqa: ANN001
    coupled, dare = _tied_pair(model_cls, config)
    kjt = make_kjt(HISTORIES, TARGETS)
    labels = torch.tensor([1.0, 0, 1, 0, 1])
    out_c, out_d = coupled(kjt), dare(kjt)
    assert torch.equal(out_c, out_d)
    loss_c = out_c.sum() + (coupled.aux_loss(labels) or 0)
    loss_d = out_d.sum() + (dare.aux_loss(labels) or 0)
    loss_c.backward()
    loss_d.backward()
    for g in GROUPS:  # the coupled table's gradient = attention-role + representation-role gradients
        gc = table(coupled.embedding, g).grad
        ga = table(dare.embedding, f"att_{g}", "attention").grad
        gr = table(dare.embedding, f"rep_{g}", "representation").grad
        assert torch.allclose(gc, ga + gr, atol=1e-6)


def _dare_two_stage(att_dim: int = 2, rep_dim: int = 4, k: int = 3) -> TwoStageModel:
    torch.manual_seed(0)
    return TwoStageModel(seq_embedding(rep_dim, [{"dare": {"attention_dim": att_dim}}], name="two_stage"), TwoStageConfig(top_k=k, mlp=[8]))


def _table_grads(model: TwoStageModel, prefix: str) -> list[torch.Tensor | None]:
    role = "attention" if prefix == "att" else "representation"
    return [table(model.embedding, f"{prefix}_{g}", role).grad for g in GROUPS]


def test_gradient_isolation_between_attention_and_representation() -> None:
    model = _dare_two_stage()
    kjt = make_kjt(HISTORIES, TARGETS)
    parts = model.parts(kjt)
    # attention scores send no gradient to the representation tables
    parts["scores"].sum().backward(retain_graph=True)
    assert all(g is None or g.abs().sum() == 0 for g in _table_grads(model, "rep"))
    assert any(g is not None and g.abs().sum() > 0 for g in _table_grads(model, "att"))
    model.zero_grad(set_to_none=True)
    # the interest h = sum_i w_i v_i reaches the attention tables ONLY through the weights w:
    # d(h.c)/d(att) == d(sum_i w_i * stopgrad(v_i . c))/d(att)
    c = torch.randn(parts["interest"].shape)
    (parts["interest"] * c).sum().backward(retain_graph=True)
    direct = [g.clone() for g in _table_grads(model, "att")]
    model.zero_grad(set_to_none=True)
    kept = parts["kept_lengths"]
    seg = torch.repeat_interleave(torch.arange(len(kept)), kept)
    through_weights = (parts["weights"] * (parts["values"][parts["index"]] * c[seg]).sum(1).detach()).sum()
    through_weights.backward()
    for a, b in zip(direct, _table_grads(model, "att")):
        assert torch.allclose(a, b, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in direct)


def test_jagged_topk_matches_per_row_topk() -> None:
    torch.manual_seed(0)
    lengths = torch.tensor([5, 0, 2, 9, 3, 1])
    scores = torch.randn(int(lengths.sum()))
    for k in (1, 3, 20):  # 20 > every length: keep everything
        index, kept = jagged_topk(scores, lengths, k)
        assert kept.tolist() == [min(n, k) for n in lengths.tolist()]
        expected, off = [], 0
        for n in lengths.tolist():
            if n:
                top = torch.topk(scores[off : off + n], min(n, k)).indices + off
                expected += sorted(top.tolist())  # kept in their original (chronological) order
            off += n
        assert index.tolist() == expected
    assert jagged_topk(torch.zeros(0), torch.zeros(3, dtype=torch.long), 4)[0].numel() == 0
    ties = jagged_topk(torch.tensor([0.0, 1.0, 1.0, 1.0, 2.0]), torch.tensor([1, 4]), 2)[0]
    assert ties.tolist() == [0, 1, 4]  # row 2: 2.0 and the EARLIER of the tied 1.0s


def test_two_stage_matches_a_naive_per_user_loop() -> None:
    model = _dare_two_stage(k=3)
    kjt = make_kjt(HISTORIES, TARGETS)
    parts = model.parts(kjt)
    att, rep, _ = model.embedding(kjt)
    seg_w = torch.split(parts["weights"], parts["kept_lengths"].tolist())
    for b, hist in enumerate(HISTORIES):
        off = sum(len(h) for h in HISTORIES[:b])
        keys = torch.cat([att[FIELDS[g][0]].values()[off : off + len(hist)] for g in GROUPS], 1)
        vals = torch.cat([rep[FIELDS[g][0]].values()[off : off + len(hist)] for g in GROUPS], 1)
        q = torch.cat([att[FIELDS[g][1]].values()[b] for g in GROUPS])
        t = torch.cat([rep[FIELDS[g][1]].values()[b] for g in GROUPS])
        if hist:
            s = keys @ q / keys.shape[1] ** 0.5
            top = torch.topk(s, min(3, len(hist))).indices
            w = torch.softmax(s[top], 0)
            assert len(seg_w[b]) == len(top) and torch.isclose(seg_w[b].sum(), torch.tensor(1.0, dtype=w.dtype))
            h = (w[:, None] * vals[top]).sum(0)
        else:
            h = torch.zeros(vals.shape[1], dtype=vals.dtype)
        expected = model.mlp(torch.cat([t, h, t * h])[None])[0, 0]
        assert torch.allclose(parts["logits"][b], expected, atol=1e-6), b
    # one user alone gives the same logit as inside the batch
    assert torch.allclose(model(make_kjt(HISTORIES[3:4], TARGETS[3:4])), parts["logits"][3:4], atol=1e-6)


def test_smaller_attention_dim_and_table_layout() -> None:
    emb = seq_embedding(8, [{"dare": {"attention_dim": 2}}], name="two_stage")
    att = emb.lookup.attention.groups["all"].embedding_bag_configs()
    rep = emb.lookup.representation.groups["all"].embedding_bag_configs()
    assert [c.name for c in att] == ["att_item", "att_category", "att_position"]
    assert [c.embedding_dim for c in att] == [2, 2, 2] and [c.embedding_dim for c in rep] == [8, 8, 8]
    assert att[0].feature_names == rep[0].feature_names == ["item"]  # one field = its history + target ids
    a, r, side = emb(make_kjt(HISTORIES, TARGETS))
    assert a["hist_item"].values().shape == (23, 2) and r["hist_item"].values().shape == (23, 8) and side is None
    assert emb.decoupled and emb.attention_dim == 6 and emb.representation_dim == 24
    tied = seq_embedding(4)
    a, r, _ = tied(make_kjt(HISTORIES, TARGETS))
    assert a is r and not tied.decoupled


def test_dare_tables_shard_with_stock_sharders() -> None:
    """DistributedModelParallel (one process, gloo) shards both collections and gives the unsharded forward."""
    from recsys_emb.config.experiment import TrainConfig
    from recsys_emb.train.env import init_distributed, shutdown
    from recsys_emb.train.parallel import shard_model

    torch.manual_seed(0)
    reference = TwoStageModel(seq_embedding(8, [{"dare": {"attention_dim": 4}}], name="two_stage"), TwoStageConfig(top_k=3, mlp=[8]))
    kjt = make_kjt(HISTORIES, TARGETS)
    expected = reference(kjt)

    class Wrap(nn.Module):
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.model = m

        def forward(self, features):  # noqa: ANN001, ANN202
            return self.model(features)

    env = init_distributed("cpu")
    try:
        dmp, _ = shard_model(Wrap(copy.deepcopy(reference)), env, TrainConfig())
        sharded_types = {type(m).__name__ for m in dmp.modules()}
        assert "ShardedEmbeddingBagCollection" in sharded_types
        with torch.no_grad():  # copy the reference weights (DMP re-initialises dense ones) into the model
            for name, tensor in dmp.state_dict().items():
                src = reference.state_dict()[name.removeprefix("model.")]
                (tensor.local_shards()[0].tensor if hasattr(tensor, "local_shards") else tensor).copy_(src)
        assert torch.allclose(dmp(kjt), expected, atol=1e-6)
    finally:
        shutdown(env)
