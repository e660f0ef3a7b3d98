"""Which public data sets the project reads, and one clear error when one is missing.

Every loader and example that reads a public data set calls :func:`require_data` (a folder) or
:func:`require_file` (one file of a data set) before parsing anything. When the path or one of the
files the loader needs is absent, they raise :class:`MissingDataError` (a ``FileNotFoundError``,
so the CLI's ``recsys-emb CMD: error: <message>`` / exit status 2 applies) whose message says, in a
few lines, what is missing, where to download the data and which ``datasets/<name>/README.md``
explains the layout::

    --data: MovieLens-100K (GroupLens ml-100k) not found: /data/ml-100k does not exist
      expected: the unzipped ml-100k folder of ml-100k.zip, holding u.data, u.user, u.item (each plain or .gz)
      download: https://grouplens.org/datasets/movielens/100k/ (ml-100k.zip; research use, no redistribution)
      see:      datasets/movielens/README.md

An existing folder that lacks some files says ``/data/ml-100k has no u.user (or .gz)`` instead.

The registry (:data:`REGISTRY`) is keyed by the folder under ``datasets/`` whose README.md explains
the data set; ``datasets/README.md`` is the human-readable index of the same facts. This module
imports nothing heavy (no torch), so examples can check their data before loading a model stack.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from recsys_emb.utils import plain_or_gz

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class DatasetInfo:
    """One public data set: what a loader expects at its path, where to download it, which README explains it.

    Args:
        name: registry key, the folder ``datasets/<name>/`` whose README.md explains the data set.
        title: what it is, as the first words of an error message.
        kind: ``folder``: the path is a folder holding ``files``; ``file``: the path is one file.
        files: for ``folder``, the files a loader needs inside it by default (callers may ask for
            others, e.g. ``Sports_and_Outdoors.txt``); for ``file``, typical file names (documentation only).
        layout: a noun phrase describing what the path should be (the "expected:" line).
        download: where to get it, one entry per source.
        gz: whether ``NAME.gz`` is accepted for ``NAME`` (the loaders read plain or gzipped text).
        shared: the development copy under ``../shared/datasets/`` on the project's machines.
    """

    name: str
    title: str
    kind: Literal["folder", "file"]
    files: tuple[str, ...]
    layout: str
    download: tuple[str, ...]
    gz: bool = True
    shared: str = ""

    @property
    def readme(self) -> str:
        """The README (relative to the repository root) that explains the layout."""
        return f"datasets/{self.name}/README.md"


REGISTRY: dict[str, DatasetInfo] = {info.name: info for info in (
    DatasetInfo(
        name="criteo",
        title="Criteo click logs (Kaggle Display Advertising Challenge 2014 or Criteo 1TB)",
        kind="file",
        files=("train.txt", "test.txt", "day_0.gz"),
        layout="a tab-separated Criteo file, plain or gzip (e.g. train.txt, train.txt.gz, day_0.gz), "
               "rows `label, I1..I13, C1..C26` without a header",
        download=("Kaggle DAC: https://www.kaggle.com/c/criteo-display-ad-challenge (data tab, Kaggle account needed) "
                  "or https://ailab.criteo.com/ressources/",
                  "Criteo 1TB: https://ailab.criteo.com/download-criteo-1tb-click-logs-dataset/ "
                  "(also on Hugging Face as criteo/CriteoClickLogs)"),
        gz=False,  # the file names are used as given; gzip is recognised from the content
        shared="criteo_dac_kaggle_head",
    ),
    DatasetInfo(
        name="avazu",
        title="Avazu CTR (Kaggle Click-Through Rate Prediction 2014)",
        kind="file",
        files=("train.gz", "test.gz", "train.csv"),
        layout="Avazu's comma-separated train / test file, plain or gzip, with the header "
               "`id,click,hour,C1,banner_pos,...,C21` (test: no click column)",
        download=("Kaggle: https://www.kaggle.com/c/avazu-ctr-prediction (data tab: train.gz, test.gz; Kaggle account needed)",),
        gz=False,  # the file names are used as given; gzip is recognised from the content
        shared="avazu_ctr_sample",
    ),
    DatasetInfo(
        name="movielens",
        title="MovieLens-100K (GroupLens ml-100k)",
        kind="folder",
        files=("u.data", "u.user", "u.item"),
        layout="the unzipped ml-100k folder of ml-100k.zip",
        download=("https://grouplens.org/datasets/movielens/100k/ (ml-100k.zip; research use, no redistribution)",),
        shared="movielens_100k",
    ),
    DatasetInfo(
        name="movielens_1m_meta",
        title="MovieLens-1M movie metadata (movies.dat)",
        kind="file",
        files=("movies.dat",),
        layout="movies.dat of the GroupLens ml-1m folder (`MovieID::Title::Genres`, Latin-1), plain or .gz",
        download=("https://grouplens.org/datasets/movielens/1m/ (ml-1m.zip; research use, no redistribution)",),
        shared="movielens_1m_meta",
    ),
    DatasetInfo(
        name="amazon_seq",
        title="Amazon Beauty / Sports_and_Outdoors / LastFM behaviour sequences (S3-Rec format)",
        kind="folder",
        files=("Beauty.txt",),
        layout="a folder of S3-Rec files, STEM.txt and optionally STEM_item2attributes.json "
               "(STEM = Beauty, Sports_and_Outdoors or LastFM)",
        download=("the data/ folder of https://github.com/aHuiWang/CIKM2020-S3Rec (commit 49a890dc)",),
        shared="amazon_seq_s3rec",
    ),
    DatasetInfo(
        name="amazon_scientific_text",
        title="Amazon 2018 Scientific item text + sequences (UniSRec format)",
        kind="folder",
        files=("Scientific.text", "Scientific.item2index", "Scientific.test.inter"),
        layout="UniSRec's Scientific/ folder (Scientific.train.inter and .valid.inter are optional)",
        download=('the UniSRec downstream data sets, folder Scientific/: https://github.com/RUCAIBox/UniSRec '
                  '("downstream datasets" links in its README)',),
        shared="amazon_scientific_text",
    ),
    DatasetInfo(
        name="amazon2018_industrial_text_sid",
        title="Amazon 2018 Industrial_and_Scientific item text + reference semantic IDs (MiniOneRec)",
        kind="folder",
        files=("index/Industrial_and_Scientific.item.json", "index/Industrial_and_Scientific.index.json"),
        layout="MiniOneRec's data/Amazon/ folder (with info/, train/, valid/, test/)",
        download=("the data/Amazon/ folder of https://github.com/AkaliKong/MiniOneRec (Apache-2.0)",
                  "underlying data: Amazon Review Data 2018, https://nijianmo.github.io/amazon/ (research use)"),
        shared="amazon2018_industrial_text_sid",
    ),
    DatasetInfo(
        name="gowalla",
        title="Interaction graph in the NGCF/LightGCN format (Gowalla, Yelp2018, Amazon-book; LightGCN++ ML-1M, LastFM)",
        kind="folder",
        files=("train.txt", "test.txt"),
        layout="a folder of `user_id item_id item_id ...` files, one line per user (valid.txt optional)",
        download=("Gowalla / Yelp2018 / Amazon-book: Data/<name>/ of https://github.com/kuandeng/LightGCN",
                  "ML-1M / LastFM with a validation split: data/ml-1m/, data/lastfm/ of https://github.com/geon0325/LightGCNpp"),
        shared="gowalla_lightgcn, lightgcnpp_ml1m_lastfm/{ml-1m,lastfm}",
    ),
)}


# item-text format of ``recsys-emb sid embed`` (recsys_emb/semantic_ids/items.py) -> the data set its files come from;
# the fourth format, ``tsv``, is for your own files
ITEM_TEXT_FORMATS: dict[str, str] = {"unisrec": "amazon_scientific_text", "amazon_json": "amazon2018_industrial_text_sid",
                                     "movielens": "movielens_1m_meta"}


class MissingDataError(FileNotFoundError):
    """A public data set (or a file of it) is not where it was expected.

    The message (``str(err)``) is complete: what is missing, the download location and the README
    to read. ``path``, ``dataset`` and ``missing`` (names of the absent files) are kept for callers.
    """

    def __init__(self, message: str, *, path: PathLike | None = None, dataset: str = "",
                 missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.dataset = dataset
        self.missing = tuple(missing)


def dataset_info(dataset: str) -> DatasetInfo:
    """The registry entry of ``dataset``; an unknown name is a ``KeyError`` listing the known ones."""
    try:
        return REGISTRY[dataset]
    except KeyError:
        raise KeyError(f"unknown data set '{dataset}' (known: {', '.join(REGISTRY)})") from None


def _message(info: DatasetInfo, problem: str, expected: str, where: str) -> str:
    lines = [f"{where + ': ' if where else ''}{info.title} not found: {problem}",
             f"  expected: {expected}"]
    lines += [f"  {'download:' if i == 0 else '':<9} {source}" for i, source in enumerate(info.download)]
    lines.append(f"  see:      {info.readme}")
    return "\n".join(lines)


def _names(files: Sequence[str], gz: bool) -> str:
    suffix = " (each plain or .gz)" if gz and len(files) > 1 else " (or .gz)" if gz else ""
    return ", ".join(files) + suffix


def require_data(path: PathLike, dataset: str, files: Sequence[str] | None = None, *, where: str = "") -> Path:
    """Check that the data set ``dataset`` is at ``path``; return the path to read.

    For a ``folder`` data set, ``path`` must be a folder holding every name of ``files`` (default: the
    registry's ``files``; ``NAME.gz`` counts for ``NAME`` where the data set allows it); the folder is
    returned. For a ``file`` data set this is :func:`require_file`.

    Args:
        path: what the user gave (or the default location).
        dataset: a :data:`REGISTRY` key, e.g. ``movielens``.
        files: the files this caller needs inside the folder, when they differ from the registry's.
        where: what ``path`` is, to start the message with (e.g. ``data.path`` or ``--data``).

    Raises:
        MissingDataError: ``path`` does not exist, is not a folder, or lacks some of ``files``.
        KeyError: ``dataset`` is not in the registry.
    """
    info = dataset_info(dataset)
    if info.kind == "file":
        return require_file(path, dataset, where=where)
    root = Path(path)
    wanted = tuple(info.files if files is None else files)
    expected = f"{info.layout}, holding {_names(wanted, info.gz)}" if wanted else info.layout
    if not root.exists():
        raise MissingDataError(_message(info, f"{root} does not exist", expected, where),
                               path=root, dataset=dataset, missing=wanted)
    if not root.is_dir():
        raise MissingDataError(_message(info, f"{root} is a file, expected a folder", expected, where),
                               path=root, dataset=dataset, missing=wanted)
    absent = [name for name in wanted if (plain_or_gz(root, name) if info.gz else _file(root / name)) is None]
    if absent:
        raise MissingDataError(_message(info, f"{root} has no {_names(absent, info.gz)}", expected, where),
                               path=root, dataset=dataset, missing=absent)
    return root


def require_file(path: PathLike, dataset: str, *, where: str = "") -> Path:
    """Check that ``path``, one file of the data set ``dataset``, exists; return the file to read.

    Where the data set allows gzip, ``path + ".gz"`` is accepted (and returned) when ``path`` itself
    is absent, as the readers do.

    Raises:
        MissingDataError: neither ``path`` nor (where allowed) ``path.gz`` is a file.
        KeyError: ``dataset`` is not in the registry.
    """
    info = dataset_info(dataset)
    p = Path(path)
    if p.is_file():
        return p
    gz = Path(f"{p}.gz")
    if info.gz and gz.is_file():
        return gz
    if p.is_dir():
        problem = f"{p} is a folder, expected a file"
    else:
        problem = f"{p} does not exist" + (f" (nor {gz.name})" if info.gz else "")
    expected = f"a file of {info.layout}, which holds {', '.join(info.files)}" if info.kind == "folder" else info.layout
    raise MissingDataError(_message(info, problem, expected, where), path=p, dataset=dataset, missing=(p.name,))


def _file(path: Path) -> Path | None:
    return path if path.is_file() else None
