"""Missing public data: one clear message (path, missing files, download location, README), never a
traceback or a silent fallback.

* :func:`recsys_emb.data.availability.require_data` / ``require_file`` on present, absent and incomplete data;
* every example that reads a public data set, run as a subprocess with the data absent: exit status 2,
  stderr names the missing path and ``datasets/<name>/README.md``, no traceback (the subprocesses run in
  parallel and stop before any model is built);
* each library / CLI entry point that reads a public data set (prepare, train, retrieve, sid embed).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_emb.data.availability import REGISTRY, MissingDataError, dataset_info, require_data, require_file
from tests.conftest import REPO


def _ml100k(root: Path, *, user: bool = True) -> Path:
    """A folder with the ml-100k file names (contents do not matter to the availability check)."""
    root.mkdir(parents=True)
    with gzip.open(root / "u.data.gz", "wt") as f:
        f.write("1\t1\t5\t880000000\n")
    (root / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||url|" + "|".join("0" * 19) + "\n")
    if user:
        (root / "u.user").write_text("1|24|M|technician|85711\n")
    return root


def _says(err: BaseException | str, path: Path | str, readme: str) -> str:
    """The message, after checking it names ``path`` and ``readme`` and gives a download line."""
    text = str(err)
    assert str(path) in text, text
    assert readme in text, text
    assert "download:" in text, text
    return text


# ------------------------------------------------------------------------------------ require_data


def test_present_folder_and_file_are_returned(tmp_path: Path) -> None:
    root = _ml100k(tmp_path / "ml-100k")
    assert require_data(root, "movielens") == root  # u.data.gz counts for u.data
    assert require_data(str(root), "movielens", ("u.data",)) == root
    (tmp_path / "movies.dat.gz").write_bytes(gzip.compress(b"1::Toy Story (1995)::Animation\n"))
    assert require_file(tmp_path / "movies.dat", "movielens_1m_meta") == tmp_path / "movies.dat.gz"
    assert require_data(tmp_path / "movies.dat.gz", "movielens_1m_meta") == tmp_path / "movies.dat.gz"


def test_missing_folder_names_path_download_and_readme(tmp_path: Path) -> None:
    absent = tmp_path / "nowhere" / "ml-100k"
    with pytest.raises(MissingDataError) as info:
        require_data(absent, "movielens", where="--data")
    err = info.value
    text = _says(err, absent, "datasets/movielens/README.md")
    assert text.startswith(f"--data: MovieLens-100K (GroupLens ml-100k) not found: {absent} does not exist")
    assert "https://grouplens.org/datasets/movielens/100k/" in text and "u.data, u.user, u.item" in text
    assert isinstance(err, FileNotFoundError) and "Traceback" not in text
    assert (err.path, err.dataset, err.missing) == (absent, "movielens", ("u.data", "u.user", "u.item"))


def test_missing_file_inside_folder_is_named(tmp_path: Path) -> None:
    root = _ml100k(tmp_path / "ml-100k", user=False)
    with pytest.raises(MissingDataError) as info:
        require_data(root, "movielens")
    text = _says(info.value, root, "datasets/movielens/README.md")
    assert f"{root} has no u.user (or .gz)" in text
    assert info.value.missing == ("u.user",)


def test_wrong_kind_of_path(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("0 1\n")
    with pytest.raises(MissingDataError, match="is a file, expected a folder"):
        require_data(tmp_path / "train.txt", "gowalla")
    with pytest.raises(MissingDataError, match="is a folder, expected a file"):
        require_data(tmp_path, "criteo")


def test_criteo_file_names_are_taken_as_given(tmp_path: Path) -> None:
    (tmp_path / "train.txt.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(MissingDataError) as info:  # no .gz twin: prepare_criteo reads the name it is given
        require_file(tmp_path / "train.txt", "criteo")
    _says(info.value, tmp_path / "train.txt", "datasets/criteo/README.md")
    assert require_file(tmp_path / "train.txt.gz", "criteo") == tmp_path / "train.txt.gz"


def test_error_survives_pickling_and_unknown_names_are_refused(tmp_path: Path) -> None:
    # rank 0's data error is broadcast to the other ranks (recsys_emb.train.trainer.rank0_then_all)
    with pytest.raises(MissingDataError) as info:
        require_data(tmp_path / "absent", "gowalla")
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value) and copy.missing == ("train.txt", "test.txt")
    with pytest.raises(KeyError, match="known: criteo, avazu, movielens"):
        dataset_info("imagenet")


def test_registry_matches_the_dataset_readmes() -> None:
    index = (REPO / "datasets" / "README.md").read_text()
    assert set(REGISTRY) == {p.parent.name for p in (REPO / "datasets").glob("*/README.md")}
    for name, info in REGISTRY.items():
        assert info.name == name and (REPO / info.readme).is_file(), name
        assert info.download and all("http" in d or "github" in d for d in info.download), name
        assert f"[{name}]({name}/README.md)" in index, name


# ---------------------------------------------------------------------------------------- examples

ABSENT = "absent-data"  # under the test's temporary folder; never created
EXAMPLES = {  # id -> (script and its arguments; {absent} = a path that does not exist, the README its message names)
    "unified_embedding": (["unified_embedding.py", "--data", "{absent}/ml-100k"], "datasets/movielens/README.md"),
    "semantic_ids": (["semantic_ids.py", "--data", "{absent}/Scientific.text"], "datasets/amazon_scientific_text/README.md"),
    "semantic_ids_movielens": (["semantic_ids.py", "--data", "{absent}/movies.dat", "--format", "movielens"],
                               "datasets/movielens_1m_meta/README.md"),
    "semantic_ids_cold_start": (["semantic_ids_cold_start.py", "--data", "{absent}/Scientific"],
                                "datasets/amazon_scientific_text/README.md"),
    "din_dare": (["din_dare.py", "--data", "{absent}/s3rec", "--dataset", "amazon_sports"], "datasets/amazon_seq/README.md"),
    "graph_cf": (["graph_cf.py", "--data", "{absent}/gowalla"], "datasets/gowalla/README.md"),
    "knn_embed": (["knn_embed.py", "--data", "{absent}/ml-1m"], "datasets/gowalla/README.md"),
    "dimension_search": (["dimension_search.py", "--train", "{absent}/train.txt.gz"], "datasets/criteo/README.md"),
}


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, str]]:
    """Every example of :data:`EXAMPLES` started at once (each mostly imports, then stops): id -> (rc, stderr, path)."""
    work = tmp_path_factory.mktemp("examples")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RECSYS_EMB_CACHE": str(work / "cache")}
    procs = {}
    for key, (argv, _) in EXAMPLES.items():
        args = [a.format(absent=work / ABSENT) for a in argv]
        cmd = [sys.executable, str(REPO / "examples" / args[0]), *args[1:]]
        procs[key] = (subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                      args[2])
    runs = {}
    for key, (proc, path) in procs.items():
        _, err = proc.communicate(timeout=300)
        runs[key] = (proc.returncode, err, path)
    assert not (work / ABSENT).exists()
    return runs


@pytest.mark.parametrize("key", list(EXAMPLES))
def test_example_without_its_data_exits_2_with_the_message(key: str, example_runs: dict[str, tuple[int, str, str]]) -> None:
    rc, err, path = example_runs[key]
    assert rc == 2, err
    assert "Traceback" not in err, err
    _says(err, path, EXAMPLES[key][1])
    assert f"{Path(EXAMPLES[key][0][0]).name}: error: " in err, err


def _load_example(name: str):  # noqa: ANN202 - a module object
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_din_dare_old_option_spelling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = _load_example("din_dare")
    absent = tmp_path / "ml-100k"
    assert example.main(["--data-path", str(absent), "--dataset", "movielens_100k"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("note: --data-path is deprecated") and "use --data\n" in err, err
    _says(err, absent, "datasets/movielens/README.md")


def test_semantic_ids_toy_list_only_on_request() -> None:
    example = _load_example("semantic_ids")
    default = example.parse_args([])
    assert default.data == example.SCIENTIFIC and not default.toy  # no silent fallback: the data set is the default
    items = example.load_items(example.parse_args(["--toy"]))
    assert len(items) == len(example.TOY) == 48 and items.keys[0] == "toy0"


# ------------------------------------------------------------------------ library and CLI entry points


def test_prepare_movielens_missing_folder_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recsys_emb.cli import main
    from recsys_emb.data.movielens import prepare_movielens_100k, read_movielens_100k

    absent = tmp_path / "ml-100k"
    with pytest.raises(MissingDataError) as info:
        prepare_movielens_100k(absent, tmp_path / "out")
    _says(info.value, absent, "datasets/movielens/README.md")
    assert not (tmp_path / "out").exists()  # checked before anything is written
    with pytest.raises(MissingDataError, match=r"has no u\.user"):
        read_movielens_100k(_ml100k(tmp_path / "partial", user=False))
    assert main(["prepare", "movielens", "--data", str(absent), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsys-emb prepare: error: MovieLens-100K") and "Traceback" not in err
    _says(err, absent, "datasets/movielens/README.md")


def test_prepare_criteo_missing_input(tmp_path: Path) -> None:
    from recsys_emb.data.criteo import prepare_criteo

    with pytest.raises(MissingDataError) as info:
        prepare_criteo([tmp_path / "train.txt.gz"], tmp_path / "out")
    _says(info.value, tmp_path / "train.txt.gz", "datasets/criteo/README.md")


def test_ctr_data_paths_point_to_the_index(tmp_path: Path) -> None:
    from recsys_emb.config.experiment import DataConfig
    from recsys_emb.data.resolve import resolve_data

    with pytest.raises(FileNotFoundError, match=r"data\.train: .* does not exist .*datasets/README\.md"):
        resolve_data(DataConfig(train=str(tmp_path / "absent.txt.gz")))


@pytest.mark.parametrize("dataset, stem, needs, readme", [
    ("amazon_sports", None, "Sports_and_Outdoors.txt", "datasets/amazon_seq/README.md"),
    ("s3rec", "Toy", "Toy.txt", "datasets/amazon_seq/README.md"),
    ("movielens_100k", None, "u.data, u.item", "datasets/movielens/README.md"),
    ("unisrec", "Scientific", "Scientific.test.inter", "datasets/amazon_scientific_text/README.md"),
])
def test_sequence_loader(tmp_path: Path, dataset: str, stem: str | None, needs: str, readme: str) -> None:
    from recsys_emb.data.cold_start import make_sequence_dataset
    from recsys_emb.data.sequences import SequenceDataConfig, load_raw

    absent = tmp_path / "absent"
    cfg = SequenceDataConfig(dataset=dataset, stem=stem, path=str(absent), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(MissingDataError) as info:
        load_raw(cfg)
    assert str(info.value).startswith("data.path: ")
    _says(info.value, absent, readme)
    absent.mkdir()  # an empty folder: the files are named
    with pytest.raises(MissingDataError) as info:
        make_sequence_dataset(cfg)
    assert f"has no {needs}" in _says(info.value, absent, readme)


def test_train_command_with_a_missing_sequence_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recsys_emb.cli import main

    absent = tmp_path / "s3rec"
    rc = main(["train", "--config", str(REPO / "configs" / "amazon_beauty_din_tiny.yaml"), "--data", str(absent),
               "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "recsys-emb train: error: data.path: " in err and "Traceback" not in err, err
    _says(err, absent, "datasets/amazon_seq/README.md")


def test_graph_loaders(tmp_path: Path) -> None:
    from recsys_emb.data.graphs import load_graph_dataset
    from recsys_emb.train.tasks import load_experiment
    from recsys_emb.train.tasks.graph import load_graph

    absent = tmp_path / "gowalla"
    with pytest.raises(MissingDataError) as info:
        load_graph_dataset(absent)
    _says(info.value, absent, "datasets/gowalla/README.md")
    folder = tmp_path / "only_train"
    folder.mkdir()
    (folder / "train.txt").write_text("0 0 1\n1 1\n")
    assert load_graph_dataset(folder).num_users == 2  # train is all the reader needs
    cfg = load_experiment(REPO / "configs" / "gowalla_lightgcn_tiny.yaml", [f"data.path={folder}"])
    with pytest.raises(MissingDataError) as info:  # the graph task scores test at the end
        load_graph(cfg)
    assert "has no test.txt (or .gz)" in _says(info.value, folder, "datasets/gowalla/README.md")


def test_retrieval_loaders(tmp_path: Path) -> None:
    from recsys_emb.retrieval.data import load_interaction_data, load_split_data
    from recsys_emb.retrieval.driver import add_retrieve_arguments, run_retrieve

    absent = tmp_path / "ml-1m"
    for load in (load_interaction_data, load_split_data):
        with pytest.raises(MissingDataError) as info:
            load(absent)
        _says(info.value, absent, "datasets/gowalla/README.md")
    parser = argparse.ArgumentParser()
    add_retrieve_arguments(parser)
    args = parser.parse_args(["--config", str(REPO / "configs" / "retrieval_ml1m_tiny.yaml"), "--data", str(absent),
                              "--run-dir", str(tmp_path / "run")])
    with pytest.raises(MissingDataError, match="data.path: "):
        run_retrieve(args)
    assert not (tmp_path / "run").exists()  # checked before the run folder is made


@pytest.mark.parametrize("fmt, readme", [
    ("unisrec", "datasets/amazon_scientific_text/README.md"),
    ("amazon_json", "datasets/amazon2018_industrial_text_sid/README.md"),
    ("movielens", "datasets/movielens_1m_meta/README.md"),
])
def test_item_text_readers(tmp_path: Path, fmt: str, readme: str) -> None:
    from recsys_emb.semantic_ids.items import read_items

    with pytest.raises(MissingDataError) as info:
        read_items(fmt, tmp_path / "items")
    _says(info.value, tmp_path / "items", readme)


def test_item_text_index_and_own_files(tmp_path: Path) -> None:
    from recsys_emb.semantic_ids.items import read_items

    (tmp_path / "Scientific.text").write_text("item_id:token\ttext:token_seq\nA\tglue\n")
    with pytest.raises(MissingDataError, match="Scientific.item2index"):
        read_items("unisrec", tmp_path / "Scientific.text", tmp_path / "Scientific.item2index")
    with pytest.raises(FileNotFoundError) as info:  # your own TSV is not a public data set: the plain error
        read_items("tsv", tmp_path / "mine.tsv")
    assert not isinstance(info.value, MissingDataError)


def test_sid_embed_with_missing_items(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recsys_emb.semantic_ids.cli import main

    absent = tmp_path / "movies.dat"
    assert main(["embed", "--format", "movielens", "--data", str(absent), "--out", str(tmp_path / "emb.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sid embed: MovieLens-1M movie metadata") and "Traceback" not in err, err
    _says(err, absent, "datasets/movielens_1m_meta/README.md")
