"""Known datasets: where they live, where they come from, and what they must contain.

A dataset name resolves to `<root>/<name>.parquet` or `<root>/<name>.csv`; Wikipedia
falls back to the copy bundled with the package; anything else is downloaded from its
public URL within an overall deadline. A download lands in `<name>.csv.part` and becomes `<name>.csv` only once
its statistics match the table, so an interrupted or wrong download is never used.

Statistics checked on download: the number of interactions exactly, and that the id
ranges (max id + 1) do not exceed the user and item counts of the table. Published
tables differ on whether they count every id or only those that occur (Reddit: 1,000 or
984 items; LastFM: 1,000 or 980 users), so ranges are bounds, not equalities. Unique
edges are listed for reference and not checked.
"""

from __future__ import annotations

import http.client
import os
import time
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from tempint.data.events import EventLog, load_events
from tempint.errors import DataError

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "data_root",
    "dataset_path",
    "load_dataset",
]

_DATA_DIR_ENV = "TEMPINT_DATA_DIR"
_URL_ENV = "TEMPINT_DATASET_URL_{}"  # per dataset, upper-case name
_BUNDLED = "wikipedia"
_TIMEOUT_S = 60.0  # silence on the socket longer than this aborts the download
# the whole download, however slowly bytes arrive (a server trickling one byte every 20 s
# never trips the socket timeout); $TEMPINT_DOWNLOAD_DEADLINE_S overrides it
_DEADLINE_S = 3600.0
_DEADLINE_ENV = "TEMPINT_DOWNLOAD_DEADLINE_S"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DatasetInfo:
    """A public dataset and the statistics a downloaded copy must show."""

    name: str
    url: str
    num_users: int
    num_items: int
    num_interactions: int
    num_unique_edges: int | None = None


def _jodie(name: str, users: int, items: int, interactions: int, edges: int | None) -> DatasetInfo:
    url = f"http://snap.stanford.edu/jodie/{name}.csv"
    return DatasetInfo(name, url, users, items, interactions, edges)


# Kumar et al., KDD'19, Table 1; Wikipedia re-counted on the bundled file.
DATASETS: dict[str, DatasetInfo] = {
    "wikipedia": _jodie("wikipedia", 8_227, 1_000, 157_474, 18_257),
    "reddit": _jodie("reddit", 10_000, 1_000, 672_447, 78_516),
    "lastfm": _jodie("lastfm", 1_000, 1_000, 1_293_103, 154_993),
    "mooc": _jodie("mooc", 7_047, 97, 411_749, None),
}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: `root` (config `data.root`), else $TEMPINT_DATA_DIR, else ./data."""
    if root is None or str(root) == "":
        root = os.environ.get(_DATA_DIR_ENV) or "data"
    return Path(root).expanduser()


def dataset_path(
    name: str,
    root: str | os.PathLike | None = None,
    download: bool = True,
    url: str | None = None,
    progress: bool = True,
) -> Path:
    """The file of a known dataset, downloading it when absent.

    `url` (else $TEMPINT_DATASET_URL_<NAME>, else the registry URL) is where to fetch it.
    """
    info = _info(name)
    folder = data_root(root)
    for suffix in (".parquet", ".csv"):
        candidate = folder / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    bundled = _bundled(name)
    if bundled is not None:
        return bundled
    source = url or os.environ.get(_URL_ENV.format(name.upper())) or info.url
    target = folder / f"{name}.csv"
    if not download:
        raise DataError(
            f"dataset {name!r} is not in {folder} (looked for {name}.parquet and {name}.csv); "
            f"download {source} to {target} or allow downloading (data.download=true)"
        )
    _download(info, source, target, progress)
    return target


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    download: bool = True,
    url: str | None = None,
    **load_kwargs,
) -> EventLog:
    """The event log of a known dataset (see `load_events` for `load_kwargs`)."""
    return load_events(dataset_path(name, root=root, download=download, url=url), **load_kwargs)


def _bundled(name: str) -> Path | None:
    """The copy shipped inside the package (Wikipedia only), if installed as files."""
    if name != _BUNDLED:
        return None
    bundled = resources.files("tempint") / "resources" / f"{name}.parquet"
    return Path(str(bundled)) if bundled.is_file() else None


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(
            f"dataset {name!r} is not registered; known: {', '.join(sorted(DATASETS))} (data.name)"
        )
    return DATASETS[name]


def _download(info: DatasetInfo, url: str, target: Path, progress: bool) -> None:
    """Fetch into `<target>.part`, check the statistics, then rename into place."""
    part = target.with_name(target.name + ".part")
    by_hand = f"download it by hand to {target} (or set {_DATA_DIR_ENV} to a folder holding it)"
    deadline_s = float(os.environ.get(_DEADLINE_ENV) or _DEADLINE_S)
    deadline = time.monotonic() + deadline_s
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        timeout = min(_TIMEOUT_S, deadline_s)
        with urllib.request.urlopen(url, timeout=timeout) as response, part.open("wb") as out:
            total = response.headers.get("Content-Length")
            bar = Progress(
                TextColumn(f"downloading {info.name}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                disable=not progress,
                transient=True,
            )
            size = 0
            with bar:
                task = bar.add_task(info.name, total=int(total) if total else None)
                # read1: whatever has arrived, so the deadline is checked while bytes trickle
                while block := response.read1(_CHUNK):
                    out.write(block)
                    size += len(block)
                    bar.advance(task, len(block))
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"not finished after {deadline_s:g} s ({size:,} bytes received; "
                            f"{_DEADLINE_ENV} sets the limit)"
                        )
            if total and size != int(total):
                raise OSError(f"the transfer stopped after {size:,} of {int(total):,} bytes")
    # URLError, HTTPError and timeouts are OSErrors; a broken transfer is an HTTPException.
    except (OSError, ValueError, http.client.HTTPException) as err:
        part.unlink(missing_ok=True)
        raise DataError(
            f"could not download dataset {info.name!r} from {url} ({err}); {by_hand}"
        ) from err
    try:
        log = load_events(part, cache=False, keep_features=False, file_format="csv")
        problem = _mismatch(info, log)
    except DataError as err:
        problem = f"it is not a valid JODIE CSV ({err})"
    if problem:
        part.unlink(missing_ok=True)
        raise DataError(
            f"the file downloaded for dataset {info.name!r} from {url} was removed: {problem}; "
            f"check the URL or {by_hand}"
        )
    os.replace(part, target)


def _mismatch(info: DatasetInfo, log: EventLog) -> str | None:
    if log.num_interactions != info.num_interactions:
        return f"expected {info.num_interactions:,} interactions, found {log.num_interactions:,}"
    if log.num_users > info.num_users:
        return f"expected at most {info.num_users:,} users, found ids up to {log.num_users - 1:,}"
    if log.num_items > info.num_items:
        return f"expected at most {info.num_items:,} items, found ids up to {log.num_items - 1:,}"
    return None
