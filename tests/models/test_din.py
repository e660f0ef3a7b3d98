"""DIN: Dice, the local activation unit on jagged histories, mini-batch-aware L2, GAUC, end-to-end training."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_emb.config.io import load_config
from recsys_emb.data.sequences import FIELDS, write_synthetic_s3rec
from recsys_emb.models.din import DIN, Dice, DINConfig, MiniBatchAwareL2, jagged_softmax
from recsys_emb.train.ranking_metrics import group_auc, rela_impr
from recsys_emb.cli import main
from recsys_emb.config.sequence import SequenceExperimentConfig
from tests.models.seq_helpers import GROUPS, SIZES, make_kjt, seq_embedding, table

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ Dice


def test_dice_closed_form_train_and_running_stats_at_inference() -> None:
    torch.manual_seed(0)
    dice = Dice(3, momentum=0.1, eps=1e-8).double()
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64))
    mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for step in range(4):
        x = torch.randn(16, 3, dtype=torch.float64) * (step + 1) + step
        out = dice(x)
        p = torch.sigmoid((x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-8))
        assert torch.allclose(out, p * x + (1 - p) * dice.alpha * x)
        mean = 0.9 * mean + 0.1 * x.mean(0)
        var = 0.9 * var + 0.1 * x.var(0, unbiased=True)
    assert torch.allclose(dice.running_mean, mean) and torch.allclose(dice.running_var, var)
    dice.eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    p = torch.sigmoid((x - mean) / torch.sqrt(var + 1e-8))
    expected = p * x + (1 - p) * dice.alpha * x
    assert torch.allclose(dice(x), expected)
    assert torch.allclose(dice(x[:1]), expected[:1])  # a single row at inference: running stats, not its own
    before = dice.running_mean.clone()
    dice(x)
    assert torch.equal(dice.running_mean, before)  # eval does not update the statistics


def test_dice_single_row_and_empty_batch_in_training() -> None:
    dice = Dice(2)
    x = torch.tensor([[2.0, -4.0]])
    assert torch.allclose(dice(x), 0.5 * x)  # variance 0 -> p = 1/2 (alpha = 0)
    assert dice(torch.zeros(0, 2)).shape == (0, 2)


# ------------------------------------------------------------------------------------------ attention


def _din(config: DINConfig, dim: int = 4, seed: int = 0) -> DIN:
    torch.manual_seed(seed)
    emb = seq_embedding(dim)
    return DIN(emb, config, {g: torch.arange(n, dtype=torch.float32) + 1 for g, n in SIZES.items()})


@pytest.mark.parametrize("softmax", [False, True])
def test_din_matches_a_naive_per_user_loop(softmax: bool) -> None:
    model = _din(DINConfig(attention_hidden=[8], mlp=[8], softmax=softmax, attention_activation="prelu", mlp_activation="prelu"))
    model.eval()
    histories = [[3, 4, 5], [], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9]]  # an empty history included
    kjt = make_kjt(histories, [10, 11, 12, 13])
    logits = model(kjt)
    emb = model.embedding(kjt)[0]
    for b, hist in enumerate(histories):
        off = sum(len(h) for h in histories[:b])
        tokens = torch.cat([emb[FIELDS[g][0]].values()[off : off + len(hist)] for g in GROUPS], 1)
        query = torch.cat([emb[FIELDS[g][1]].values()[b] for g in GROUPS])
        if hist:
            w = torch.stack([model.activation_unit(query[None], tokens[i : i + 1])[0] for i in range(len(hist))])
            if softmax:
                w = torch.softmax(w, 0)  # the reference code's normalisation
            interest = (w[:, None] * tokens).sum(0)
        else:
            interest = torch.zeros(query.shape)
        expected = model.mlp(torch.cat([interest, query])[None])[0, 0]
        assert torch.allclose(logits[b], expected, atol=1e-6), b
    # a batch with one user gives the same logit as inside the larger batch
    one = make_kjt([histories[3]], [13])
    assert torch.allclose(model(one), logits[3:], atol=1e-6)


def test_unnormalised_weights_scale_with_history() -> None:
    # with a constant activation unit (weights all 1) the interest is the SUM of the behaviours, not the mean
    model = _din(DINConfig(attention_hidden=[4], mlp=[4], attention_activation="prelu", mlp_activation="prelu"))
    model.eval()
    last = model.activation_unit.mlp[-1]
    with torch.no_grad():
        for p in model.activation_unit.mlp.parameters():
            p.zero_()
        last.bias.fill_(1.0)
    kjt = make_kjt([[1, 2], [1, 2, 3, 4]], [5, 6])
    captured = {}
    model.mlp.register_forward_hook(lambda m, inp, out: captured.setdefault("x", inp[0]))
    model(kjt)
    emb = model.embedding(kjt)[0]
    tokens = torch.cat([emb[FIELDS[g][0]].values() for g in GROUPS], 1)
    assert torch.allclose(captured["x"][0, : tokens.shape[1]], tokens[:2].sum(0))
    assert torch.allclose(captured["x"][1, : tokens.shape[1]], tokens[2:].sum(0))


def test_jagged_softmax_float32_and_float64_match_per_row_softmax() -> None:
    lengths = torch.tensor([3, 0, 1, 5])
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(9, dtype=dtype)
        out = jagged_softmax(x, lengths)
        expected = torch.cat([torch.softmax(c, 0) for c in torch.split(x, lengths.tolist()) if c.numel()])
        assert torch.allclose(out, expected, atol=1e-6)


# ------------------------------------------------------------------------------------------ MBA


def test_mini_batch_aware_l2_gradient_only_on_batch_rows_scaled_by_inverse_frequency() -> None:
    torch.manual_seed(1)
    lam = 0.3
    emb = seq_embedding(4).double()
    freqs = {g: torch.randint(1, 50, (n,)).float() for g, n in SIZES.items()}
    reg = MiniBatchAwareL2(freqs, lam, {g: FIELDS[g] for g in GROUPS})
    kjt = make_kjt([[3, 4, 3], [], [4, 9]], [9, 3, 20])  # repeated ids count once per batch
    att, _, _ = emb(kjt)
    reg(kjt, att).backward()
    for g in GROUPS:
        weight = table(emb, g)
        ids = set(torch.cat([kjt[k].values() for k in FIELDS[g]]).tolist())
        expected = torch.zeros_like(weight)
        for j in ids:  # hand reference: lambda * w_j / n_j for rows in the batch, 0 elsewhere
            expected[j] = lam * weight[j].detach() / freqs[g][j]
        assert torch.allclose(weight.grad, expected), g
        assert ids and all(weight.grad[j].abs().sum() == 0 for j in range(len(weight)) if j not in ids)


def test_din_aux_loss_is_the_mba_penalty_in_training_only() -> None:
    model = _din(DINConfig(attention_hidden=[4], mlp=[4], mba_lambda=0.5))
    kjt = make_kjt([[1, 2], [3]], [4, 5])
    model.train()
    model(kjt)
    att, _, _ = model.embedding(kjt)
    assert torch.allclose(model.aux_loss(), model.mba(kjt, att))
    model.eval()
    model(kjt)
    assert model.aux_loss() is None


# ------------------------------------------------------------------------------------------ GAUC


def _pairwise_auc(s: list[float], y: list[float]) -> float:
    pos = [a for a, l in zip(s, y) if l == 1]
    neg = [a for a, l in zip(s, y) if l == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_gauc_against_independent_per_user_auc() -> None:
    rng = np.random.default_rng(0)
    n = 400
    users = rng.integers(0, 40, n)
    scores = np.round(rng.normal(size=n), 1)  # rounded: plenty of ties
    labels = (rng.random(n) < 0.3).astype(float)
    labels[users == 5] = 1.0  # single-class users are skipped
    labels[users == 6] = 0.0
    num, den, counted = 0.0, 0.0, 0
    for u in np.unique(users):
        m = users == u
        if labels[m].min() == labels[m].max():
            continue
        num += m.sum() * _pairwise_auc(scores[m].tolist(), labels[m].tolist())  # impression weight
        den += m.sum()
        counted += 1
    gauc, users_counted = group_auc(torch.tensor(scores), torch.tensor(labels), torch.tensor(users))
    assert users_counted == counted
    assert math.isclose(gauc, num / den, rel_tol=1e-12)


def test_gauc_hand_built_and_relaimpr() -> None:
    # user 0: 2 rows, perfectly ranked (AUC 1); user 1: 4 rows
    scores = [0.9, 0.1, 0.2, 0.5, 0.3, 0.4, 0.7]
    labels = [1, 0, 1, 0, 0, 1, 1]
    users = [0, 0, 1, 1, 1, 1, 2]  # user 2: one row, skipped
    # user 1: positives 0.2, 0.4; negatives 0.5, 0.3 -> pairs won: (0.4 > 0.3) = 1 of 4 -> 0.25
    gauc, counted = group_auc(scores, labels, users)
    assert counted == 2 and math.isclose(gauc, (2 * 1.0 + 4 * 0.25) / 6)
    assert math.isclose(rela_impr(0.75, 0.7), (0.25 / 0.2 - 1) * 100)
    assert math.isnan(group_auc([0.1], [1], [0])[0])


# ------------------------------------------------------------------------------------------ end to end


def test_every_sequence_config_loads() -> None:
    stems = ["amazon_beauty_din", "amazon_beauty_two_stage", "amazon_beauty_dare", "amazon_sports_dare", "movielens_100k_dare"]
    for path in [REPO / "configs" / f"{stem}{tiny}.yaml" for stem in stems for tiny in ("", "_tiny")]:
        cfg = load_config(SequenceExperimentConfig, path)
        assert cfg.model.name in ("din", "two_stage"), path


@pytest.mark.parametrize("config", ["amazon_beauty_din_tiny.yaml", "amazon_beauty_dare_tiny.yaml"])
def test_tiny_end_to_end_training(tmp_path: Path, config: str, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_synthetic_s3rec(tmp_path / "data", users=250, items=80, seed=0)
    assert main([  # `recsys-emb train` on a task: sequence config
        "train", "--config", str(REPO / "configs" / config), "--run-dir", str(tmp_path / "run"), "--data", str(folder),
        "--set", "train.progress=false", "--set", "data.dataset=s3rec", "--set", "data.stem=Synth",
    ]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert printed == metrics["test"]
    cfg = load_config(SequenceExperimentConfig, tmp_path / "run" / "config.yaml")
    users = min(250, cfg.data.max_users or 250)
    assert metrics["test"]["rows"] == users * (1 + (cfg.data.eval_negatives or cfg.data.num_negatives))
    assert metrics["test"]["auc"] > 0.6  # the synthetic users prefer two categories: learnable
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert any("embedding_bags" in k for k in state)


def test_mba_with_dare_on_some_fields_penalises_each_table_once() -> None:
    """dare on item only: the attention tables of every field and the item's representation table are each
    regularised once (category / position serve both roles with ONE table)."""
    from recsys_emb.config.embedding import TableGroup

    lam = 0.7
    torch.manual_seed(0)
    emb = seq_embedding(4, groups=[TableGroup("item", ["item"], ["dare"]), TableGroup("rest", ["category", "position"])])
    freqs = {g: torch.arange(n, dtype=torch.float32) + 1 for g, n in SIZES.items()}
    model = DIN(emb, DINConfig(attention_hidden=[4], mlp=[4], mba_lambda=lam), freqs)
    kjt = make_kjt([[1, 2, 2], [3]], [4, 1])
    model.train()
    model(kjt)
    tables = [("item", table(emb, "att_item", "attention", "item")), ("item", table(emb, "rep_item", "representation", "item")),
              ("category", table(emb, "category", group="rest")), ("position", table(emb, "position", group="rest"))]
    expected = torch.zeros(())
    for field, weight in tables:
        ids = torch.unique(torch.cat([kjt[k].values() for k in FIELDS[field]]))
        expected = expected + 0.5 * lam * (weight[ids].pow(2).sum(1) / freqs[field][ids]).sum()
    torch.testing.assert_close(model.aux_loss(), expected)
