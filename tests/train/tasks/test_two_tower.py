"""Two-tower on the one trainer (``task: two_tower``): the trainer against a plain PyTorch loop (1 and 2
ranks), a tiny config learning, embeddings.pt, exact resume and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recsys_emb.data.graphs import BPRSampler
from recsys_emb.train.tasks import load_experiment, train
from recsys_emb.train.tasks.graph import load_graph, load_graph_embeddings
from recsys_emb.train.tasks.two_tower import build_two_tower
from recsys_emb.train.ranking_metrics import full_ranking_metrics
from tests.train.tasks.test_graph import write_community_graph

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "configs" / "ml1m_two_tower_tiny.yaml"


def _config(data: Path, *overrides: str):  # noqa: ANN202
    return load_experiment(TINY, [f"data.path={data}", "data.valid=false", *overrides])


def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)


def _reference_steps(cfg, steps: int, parts: int = 1):  # noqa: ANN001, ANN202
    """A hand-written loop: the unsharded model from the seed, torch's Adam on every parameter, the
    sampler's pairs; with ``parts`` ranks the loss is the mean of the parts' in-batch losses (each rank
    softmaxes over its own part; DDP / the sharded backward average the gradients)."""
    graph = load_graph(cfg)
    model = build_two_tower(cfg, graph)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.embedding_optimizer.lr)
    sampler = BPRSampler(graph.train, graph.num_items, cfg.train.batch_size, cfg.train.seed, negatives=False)
    for step, batch in enumerate(sampler.epoch(0)):
        if step == steps:
            break
        chunks = zip(batch.users.chunk(parts), batch.pos.chunk(parts))
        loss = torch.stack([model.loss(u, p) for u, p in chunks]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_tiny_config_learns_and_writes_its_embeddings(tmp_path: Path) -> None:
    data = write_community_graph(tmp_path / "graph")
    cfg = _config(data, "train.epochs=10")  # 50 steps
    metrics = train(cfg, tmp_path / "run")
    assert metrics["task"] == "two_tower" and metrics["model"] == "two_tower" and metrics["selected_on"] == "test"
    # ~20/71 of 3 test items would be found in the top 20 by chance; every test item is in the user's half
    assert metrics["test"]["recall@20"] > 0.5
    users, items = load_graph_embeddings(tmp_path / "run")
    assert users.shape == (120, 16) and items.shape == (83, 16)
    torch.testing.assert_close(users.norm(dim=1), torch.ones(120))  # normalize: true
    # embeddings.pt = the saved best model's towers, recomputed unsharded; the metrics are theirs
    reference = build_two_tower(cfg, load_graph(cfg))
    reference.load_state_dict({k.removeprefix("model."): v for k, v in _state(tmp_path / "run").items()})
    torch.testing.assert_close(users, reference.user_embeddings())
    torch.testing.assert_close(items, reference.item_embeddings())
    graph = load_graph(cfg)
    again = full_ranking_metrics(users, items, graph.splits["test"], [graph.train], cfg.evaluation.ks,
                                 max_users=cfg.evaluation.max_users)
    assert again == pytest.approx(metrics["test"])


@pytest.mark.parametrize("layers", [[], [12, 8]], ids=["mf", "towers"])
def test_trainer_follows_plain_pytorch_loop(tmp_path: Path, layers: list[int]) -> None:
    """DMP with data-parallel tables and Adam takes exactly the steps of a plain loop on the unsharded model."""
    data = write_community_graph(tmp_path / "graph", seed=3)
    cfg = _config(data, "train.epochs=1", "train.max_steps_per_epoch=4", f"model.tower_layers={layers}")
    train(cfg, tmp_path / "run")
    expected = _reference_steps(cfg, 4).state_dict()
    got = _state(tmp_path / "run")
    assert sorted(got) == sorted(f"model.{k}" for k in expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[f"model.{key}"], value, rtol=1e-5, atol=1e-6, msg=key)
    start = build_two_tower(cfg, load_graph(cfg)).state_dict()
    assert not torch.equal(expected["embedding.embedding_bags.user.weight"], start["embedding.embedding_bags.user.weight"])


def test_resume_equals_uninterrupted_run_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recsys_emb.cli import main

    data = write_community_graph(tmp_path / "graph", seed=4)
    cfg = _config(data, "train.epochs=2", "train.max_steps_per_epoch=3", "train.checkpoint_every_steps=2")
    straight = train(cfg, tmp_path / "a")
    assert train(cfg, tmp_path / "b", _interrupt_at_step=4) == {"interrupted_at_step": 4}
    resumed = train(cfg, tmp_path / "b", resume=True)
    for key in ("test", "history", "train_loss", "best_step", "steps", "epochs_completed"):
        assert resumed[key] == straight[key], key
    # the per-epoch records cover every step of an epoch, also of the one interrupted and resumed
    assert [(e["epoch"], e["steps"], e["mean_loss"]) for e in resumed["epochs"]] == [
        (e["epoch"], e["steps"], e["mean_loss"]) for e in straight["epochs"]] and straight["epochs"][1]["steps"] == 3
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the CLI trains the same config from its YAML
    assert main(["train", "--config", str(TINY), "--data", str(data), "--run-dir", str(tmp_path / "cli"),
                 "--set", "data.valid=false", "--set", "train.epochs=1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out == json.loads((tmp_path / "cli" / "metrics.json").read_text())["test"]


def test_a_run_stopped_at_an_epoch_end_counts_that_epoch_and_extends_cleanly(tmp_path: Path) -> None:
    data = write_community_graph(tmp_path / "graph", seed=5)
    cfg = _config(data, "train.epochs=3", "train.max_steps_per_epoch=3", "train.max_steps=3")
    first = train(cfg, tmp_path / "run")
    assert (first["stop_reason"], first["steps"], first["epochs_completed"]) == ("max_steps", 3, 1)
    longer = _config(data, "train.epochs=3", "train.max_steps_per_epoch=3", "train.max_steps=6")
    extended = train(longer, tmp_path / "run", resume=True)
    assert (extended["steps"], extended["epochs_completed"]) == (6, 2)
    assert [(e["epoch"], e["steps"]) for e in extended["epochs"]] == [(1, 3), (2, 3)]  # no empty repeat of epoch 1
    straight = train(longer, tmp_path / "straight")
    assert extended["history"] == straight["history"] and extended["train_loss"] == straight["train_loss"]


def _two_rank_run(rank: int, world_size: int, data: str, run_dir: str) -> None:
    cfg = _config(Path(data), "train.epochs=1", "train.max_steps_per_epoch=4")
    train(cfg, run_dir)


def test_two_ranks_follow_the_mean_of_per_rank_softmaxes(tmp_path: Path) -> None:
    """On 2 gloo ranks each rank softmaxes over its 128 of the 256 pairs; the step is the mean of the two
    parts' losses. Checked against that plain-PyTorch reference to rtol 1e-4 (summation order only)."""
    from tests.distributed.multiprocess import run_ranks

    data = write_community_graph(tmp_path / "graph", seed=6)
    run_ranks(_two_rank_run, 2, str(data), str(tmp_path / "two"))
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (metrics["world_size"], metrics["steps"]) == (2, 4)
    expected = _reference_steps(_config(data, "train.epochs=1", "train.max_steps_per_epoch=4"), 4, parts=2).state_dict()
    got = _state(tmp_path / "two")
    for key, value in expected.items():
        torch.testing.assert_close(got[f"model.{key}"], value, rtol=1e-4, atol=1e-5, msg=key)


def _bad_path_run(rank: int, world_size: int, run_dir: str) -> None:
    cfg = load_experiment(TINY, [f"data.path={run_dir}/missing", "train.progress=false"])
    # MissingDataError (a FileNotFoundError) names the folder, the files and datasets/gowalla/README.md
    expected = ((FileNotFoundError, "missing does not exist(.|\n)*datasets/gowalla/README.md") if rank == 0
                else (RuntimeError, "rank 0 failed: MissingDataError: .*missing does not exist"))
    with pytest.raises(expected[0], match=expected[1]):
        train(cfg, run_dir)


def test_a_data_error_on_rank_0_ends_every_rank(tmp_path: Path) -> None:
    """Rank 0 reads the data first; its error reaches the other ranks instead of leaving them in a barrier."""
    from tests.distributed.multiprocess import run_ranks

    run_ranks(_bad_path_run, 2, str(tmp_path / "run"))
