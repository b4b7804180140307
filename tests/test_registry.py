"""Dataset registry: data folder resolution, the bundled copy, verified downloads."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from tempint.data import registry
from tempint.data.events import UnsortedInputWarning
from tempint.data.registry import DATASETS, data_root, dataset_path, load_dataset
from tempint.data.synthetic import generate_ratings, generate_shape, to_jodie_csv
from tempint.errors import DataError


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv("TEMPINT_DATA_DIR", raising=False)
    monkeypatch.delenv("TEMPINT_DATASET_URL_LASTFM", raising=False)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving files from a folder."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(_Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def tiny_lastfm(server, monkeypatch):
    """A served JODIE CSV with the registry's LastFM statistics patched to match it."""
    folder, base = server
    frame = generate_shape("tiny", seed=3)
    to_jodie_csv(frame, folder / "lastfm.csv", num_features=2)
    info = replace(
        DATASETS["lastfm"],
        url=f"{base}/lastfm.csv",
        num_users=20,
        num_items=10,
        num_interactions=frame.height,
    )
    monkeypatch.setitem(DATASETS, "lastfm", info)
    return frame, base


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_data_root_prefers_argument_then_env_then_cwd(monkeypatch, tmp_path):
    assert data_root() == Path("data")
    monkeypatch.setenv("TEMPINT_DATA_DIR", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "cfg") == tmp_path / "cfg"


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DataError) as err:
        dataset_path("wikipdia")
    assert str(err.value) == (
        "dataset 'wikipdia' is not registered; known: lastfm, mooc, movielens_100k, "
        "movielens_1m, movielens_20m, reddit, wikipedia (data.name)"
    )


def test_registry_urls_and_sizes():
    assert DATASETS["reddit"].url == "http://snap.stanford.edu/jodie/reddit.csv"
    sizes = {n: (d.num_users, d.num_items, d.num_interactions) for n, d in DATASETS.items()}
    assert sizes == {
        "wikipedia": (8_227, 1_000, 157_474),
        "reddit": (10_000, 1_000, 672_447),
        "lastfm": (1_000, 1_000, 1_293_103),
        "mooc": (7_047, 97, 411_749),
        "movielens_100k": (943, 1_682, 100_000),
        "movielens_1m": (6_040, 3_706, 1_000_209),
        "movielens_20m": (138_493, 26_744, 20_000_263),
    }
    grouplens = "https://files.grouplens.org/datasets/movielens"
    assert {n: (d.url, d.member) for n, d in DATASETS.items() if d.member} == {
        "movielens_100k": (f"{grouplens}/ml-100k.zip", "ml-100k/u.data"),
        "movielens_1m": (f"{grouplens}/ml-1m.zip", "ml-1m/ratings.dat"),
        "movielens_20m": (f"{grouplens}/ml-20m.zip", "ml-20m/ratings.csv"),
    }


def test_wikipedia_falls_back_to_the_bundled_copy(tmp_path):
    path = dataset_path("wikipedia", root=tmp_path, download=False)
    assert path.name == "wikipedia.parquet" and path.parent.name == "resources"
    log = load_dataset("wikipedia", root=tmp_path)
    assert (log.num_users, log.num_items, log.num_interactions, log.num_unique_edges) == (
        8_227,
        1_000,
        157_474,
        18_257,
    )
    assert leftovers(tmp_path) == []  # the bundled copy is read in place, no cache


def test_a_file_in_the_data_folder_wins(tmp_path):
    (tmp_path / "wikipedia.csv").write_text("0,0,0.0,0\n")
    assert dataset_path("wikipedia", root=tmp_path) == tmp_path / "wikipedia.csv"
    (tmp_path / "wikipedia.parquet").write_bytes(b"")
    assert dataset_path("wikipedia", root=tmp_path) == tmp_path / "wikipedia.parquet"


def test_missing_without_download_says_where_to_put_it(tmp_path):
    with pytest.raises(
        DataError,
        match=rf"dataset 'lastfm' is not in {tmp_path} .*download "
        rf"http://snap\.stanford\.edu/jodie/lastfm\.csv to {tmp_path}/lastfm\.csv",
    ):
        dataset_path("lastfm", root=tmp_path, download=False)


def test_download_verifies_and_renames(tiny_lastfm, tmp_path):
    frame, _ = tiny_lastfm
    root = tmp_path / "data"
    path = dataset_path("lastfm", root=root, progress=False)
    assert path == root / "lastfm.csv"
    assert leftovers(root) == ["lastfm.csv"]
    log = load_dataset("lastfm", root=root)  # found locally now, cached beside it
    assert log.frame.equals(frame)
    assert log.features.shape == (frame.height, 2)
    assert leftovers(root) == [".cache", "lastfm.csv"]


def test_download_url_from_argument_and_environment(tiny_lastfm, tmp_path, monkeypatch):
    _, base = tiny_lastfm
    monkeypatch.setitem(DATASETS, "lastfm", replace(DATASETS["lastfm"], url="http://127.0.0.1:9/x"))
    path = dataset_path("lastfm", root=tmp_path / "a", url=f"{base}/lastfm.csv", progress=False)
    assert path.is_file()
    monkeypatch.setenv("TEMPINT_DATASET_URL_LASTFM", f"{base}/lastfm.csv")
    assert dataset_path("lastfm", root=tmp_path / "b", progress=False).is_file()


def test_not_found_on_the_server(tiny_lastfm, tmp_path):
    _, base = tiny_lastfm
    root = tmp_path / "data"
    url = f"{base}/missing.csv"
    with pytest.raises(
        DataError,
        match=rf"could not download dataset 'lastfm' from {url} \(HTTP Error 404.*\); "
        rf"download it by hand to {root}/lastfm\.csv",
    ):
        dataset_path("lastfm", root=root, url=url, progress=False)
    assert leftovers(root) == []


def test_offline_download_fails_clearly(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/lastfm.csv"
    with pytest.raises(DataError, match=rf"could not download dataset 'lastfm' from {url}"):
        dataset_path("lastfm", root=tmp_path, url=url, progress=False)
    assert leftovers(tmp_path) == []


def test_statistics_mismatch_removes_the_download(tiny_lastfm, tmp_path, monkeypatch):
    monkeypatch.setitem(DATASETS, "lastfm", replace(DATASETS["lastfm"], num_interactions=401))
    with pytest.raises(
        DataError,
        match=r"downloaded for dataset 'lastfm' .* was removed: expected 401 interactions, "
        r"found 400; check the URL",
    ):
        dataset_path("lastfm", root=tmp_path / "data", progress=False)
    assert leftovers(tmp_path / "data") == []


def test_more_ids_than_the_table_allows(tiny_lastfm, tmp_path, monkeypatch):
    monkeypatch.setitem(DATASETS, "lastfm", replace(DATASETS["lastfm"], num_items=5))
    with pytest.raises(DataError, match=r"expected at most 5 items, found ids up to 9"):
        dataset_path("lastfm", root=tmp_path / "data", progress=False)
    assert leftovers(tmp_path / "data") == []


def test_a_download_that_is_not_a_jodie_csv(server, tmp_path):
    folder, base = server
    (folder / "page.html").write_text("<html>moved</html>\n")
    with pytest.raises(DataError, match=r"removed: it is not a valid JODIE CSV"):
        dataset_path("lastfm", root=tmp_path / "data", url=f"{base}/page.html", progress=False)
    assert leftovers(tmp_path / "data") == []


def test_progress_bar_runs(tiny_lastfm, tmp_path):
    assert dataset_path("lastfm", root=tmp_path, progress=True).is_file()


def test_registry_module_exports():
    assert set(registry.__all__) >= {"DATASETS", "data_root", "dataset_path", "load_dataset"}


# --------------------------------------------------------------------------- MovieLens


def write_movielens_zip(folder: Path, name: str, seed: int = 0) -> tuple[Path, dict]:
    """A small zip laid out like the GroupLens release of `name`, and its statistics.

    Ratings come unsorted with ids from 1, as in the real files.
    """
    frame = generate_ratings(num_users=30, num_items=80, per_user=6, seed=seed)
    frame = frame.sample(fraction=1.0, shuffle=True, seed=seed)
    member = DATASETS[name].member
    columns = ["userId", "movieId", "rating", "timestamp"]
    if name == "movielens_100k":
        text = frame.select(columns).write_csv(separator="\t", include_header=False)
    elif name == "movielens_1m":
        text = frame.select(columns).write_csv(separator=",", include_header=False)
        text = text.replace(",", "::")
    else:
        text = frame.select(columns).write_csv()
    archive = folder / f"{member.split('/')[0]}.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(f"{member.split('/')[0]}/README", "generated for a test\n")
        bundle.writestr(member, text)
    stats = {
        "num_users": frame["userId"].n_unique(),
        "num_items": frame["movieId"].n_unique(),
        "num_interactions": frame.height,
    }
    return archive, stats | {"frame": frame}


@pytest.fixture(params=["movielens_100k", "movielens_1m", "movielens_20m"])
def served_movielens(request, server, monkeypatch):
    """A served MovieLens-style zip with the registry's entry patched to its statistics."""
    folder, base = server
    name = request.param
    archive, stats = write_movielens_zip(folder, name)
    frame = stats.pop("frame")
    info = replace(DATASETS[name], url=f"{base}/{archive.name}", **stats)
    monkeypatch.setitem(DATASETS, name, info)
    return name, frame


def test_movielens_download_extracts_verifies_and_loads(served_movielens, tmp_path):
    name, frame = served_movielens
    root = tmp_path / "data"
    path = dataset_path(name, root=root, progress=False)
    assert path == root / DATASETS[name].file_name
    assert leftovers(root) == [path.name]  # no zip, no .part left
    with pytest.warns(UnsortedInputWarning):
        log = load_dataset(name, root=root)
    users, items = frame["userId"].n_unique(), frame["movieId"].n_unique()
    assert (log.num_users, log.num_items, log.num_interactions) == (users, items, frame.height)
    # renumbered 0..U-1 in order of first appearance, the source's ids kept beside
    ordered = frame.sort("timestamp", maintain_order=True)
    assert log.user_ids.to_list() == ordered["userId"].unique(maintain_order=True).to_list()
    originals = log.original_ids("item", log.frame["item_id"].to_numpy())
    assert originals == ordered["movieId"].to_list()


def test_names_of_the_movielens_files(tmp_path):
    assert [DATASETS[n].file_name for n in ("movielens_100k", "movielens_1m", "movielens_20m")] == [
        "ml-100k.u.data",
        "ml-1m.ratings.dat",
        "ml-20m.ratings.csv",
    ]
    with pytest.raises(
        DataError,
        match=r"looked for ml-100k\.u\.data and ml-100k/u\.data\); download "
        r"https://files\.grouplens\.org/datasets/movielens/ml-100k\.zip \(its ml-100k/u\.data\)",
    ):
        dataset_path("movielens_100k", root=tmp_path, download=False)
    unpacked = tmp_path / "ml-100k" / "u.data"
    unpacked.parent.mkdir()
    unpacked.write_text("1\t1\t5\t10\n")
    assert dataset_path("movielens_100k", root=tmp_path, download=False) == unpacked


def test_zip_without_the_member(server, tmp_path, monkeypatch):
    folder, base = server
    with zipfile.ZipFile(folder / "ml-100k.zip", "w") as bundle:
        bundle.writestr("ml-100k/u.item", "1|Toy Story\n")
    url = f"{base}/ml-100k.zip"
    monkeypatch.setitem(DATASETS, "movielens_100k", replace(DATASETS["movielens_100k"], url=url))
    with pytest.raises(DataError, match=r"from .*ml-100k\.zip has no ml-100k/u\.data; check"):
        dataset_path("movielens_100k", root=tmp_path / "data", progress=False)
    assert leftovers(tmp_path / "data") == []


def test_a_download_that_is_not_a_zip(server, tmp_path):
    folder, base = server
    (folder / "page.html").write_text("<html>moved</html>\n")
    with pytest.raises(DataError, match=r"is not a readable zip archive \(File is not a zip"):
        dataset_path(
            "movielens_1m", root=tmp_path / "data", url=f"{base}/page.html", progress=False
        )
    assert leftovers(tmp_path / "data") == []


def test_movielens_counts_are_checked_exactly(server, tmp_path, monkeypatch):
    folder, base = server
    archive, stats = write_movielens_zip(folder, "movielens_20m", seed=1)
    stats.pop("frame")
    stats["num_items"] += 1  # one movie fewer than the table says
    info = replace(DATASETS["movielens_20m"], url=f"{base}/{archive.name}", **stats)
    monkeypatch.setitem(DATASETS, "movielens_20m", info)
    with pytest.raises(
        DataError,
        match=rf"was removed: expected {stats['num_items']} distinct items, "
        rf"found {stats['num_items'] - 1}",
    ):
        dataset_path("movielens_20m", root=tmp_path / "data", progress=False)
    assert leftovers(tmp_path / "data") == []
