"""Event-log loading: both JODIE forms, column mappings, validation messages, the cache."""

from __future__ import annotations

import json
import os
import time
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tempint.data import events as events_module
from tempint.data.events import COLUMNS, EventLog, UnsortedInputWarning, load_events
from tempint.data.synthetic import to_jodie_csv
from tempint.errors import ConfigError, DataError

HEADER = "user_id,item_id,timestamp,state_label,comma_separated_list_of_features\n"
WIKIPEDIA = Path(str(resources.files("tempint") / "resources" / "wikipedia.parquet"))


def write(tmp_path: Path, text: str | bytes, name: str = "log.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def rows(log: EventLog) -> list[tuple]:
    return log.frame.rows()


# ------------------------------------------------------------------------ JODIE form


def test_jodie_csv_reads_ids_time_labels_and_features(tmp_path):
    path = write(tmp_path, HEADER + "0,0,0.0,0,0.5,1.0\n1,2,36.0,1,-0.25,2.0\n1,2,77.0,0,0.0,3.0\n")
    log = load_events(path, cache=False, ids="keep")
    assert rows(log) == [(0, 0, 0.0, 0), (1, 2, 36.0, 1), (1, 2, 77.0, 0)]
    assert log.user_ids is None and log.item_ids is None
    assert dict(log.frame.schema) == COLUMNS
    assert (log.num_users, log.num_items) == (2, 3)
    assert (log.num_interactions, log.num_unique_edges) == (3, 2)
    assert log.features.dtype == np.float32
    np.testing.assert_array_equal(log.features, [[0.5, 1.0], [-0.25, 2.0], [0.0, 3.0]])
    assert log.source == str(path)


def test_features_can_be_dropped(tmp_path):
    path = write(tmp_path, HEADER + "0,0,0.0,0,0.5\n")
    assert load_events(path, keep_features=False, cache=False).features is None


def test_rows_without_features_have_none(tmp_path):
    path = write(tmp_path, HEADER + "0,0,0.0,0\n")
    assert load_events(path, cache=False).features is None


@pytest.mark.parametrize(
    "text",
    [
        "0,0,0.0,0\n1,1,1.0,0\n",  # no header line
        HEADER.replace("\n", "\r\n") + "0,0,0.0,0\r\n1,1,1.0,0\r\n",  # Windows line ends
        HEADER + "\n0,0,0.0,0\n\n1,1,1.0,0\n\n",  # blank lines
        "\ufeff" + HEADER + "0,0,0.0,0\n1,1,1.0,0",  # byte-order mark, no final newline
        HEADER + " 0 , 0 ,0.0, 0\n1,1, 1.0 ,0\n",  # spaces around numbers
    ],
)
def test_layout_variants_read_the_same(tmp_path, text):
    log = load_events(write(tmp_path, text), cache=False)
    assert rows(log) == [(0, 0, 0.0, 0), (1, 1, 1.0, 0)]


def test_declared_counts_size_the_tables(tmp_path):
    path = write(tmp_path, HEADER + "0,1,0.0,0\n")
    log = load_events(path, num_users=5, num_items=7, cache=False)
    assert (log.num_users, log.num_items) == (5, 7)


def test_unsorted_input_is_stable_sorted_with_a_warning(tmp_path):
    text = HEADER + "0,0,5.0,0,1\n1,1,1.0,0,2\n2,1,3.0,0,3\n3,0,1.0,0,4\n"
    with pytest.warns(UnsortedInputWarning, match="3 of 4 rows were out of timestamp order"):
        log = load_events(write(tmp_path, text), cache=False, ids="keep")
    # ties (t=1.0) keep file order; features follow their rows
    assert rows(log) == [(1, 1, 1.0, 0), (3, 0, 1.0, 0), (2, 1, 3.0, 0), (0, 0, 5.0, 0)]
    np.testing.assert_array_equal(log.features[:, 0], [2, 4, 3, 1])


def test_sorted_input_gives_no_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_events(write(tmp_path, HEADER + "0,0,1.0,0\n1,1,1.0,0\n"), cache=False)


def test_jodie_csv_and_parquet_forms_give_identical_logs(tmp_path):
    frame = pl.read_parquet(WIKIPEDIA).head(2_000)
    csv = to_jodie_csv(frame, tmp_path / "wiki.csv", num_features=3, seed=1)
    parquet = tmp_path / "wiki.parquet"
    frame.write_parquet(parquet)
    from_csv = load_events(csv, cache=False)
    from_parquet = load_events(parquet, cache=False)
    assert from_csv.frame.equals(from_parquet.frame)
    assert (from_csv.num_users, from_csv.num_items) == (
        from_parquet.num_users,
        from_parquet.num_items,
    )
    assert from_csv.features.shape == (2_000, 3) and from_parquet.features is None
    expected = np.random.default_rng(1).standard_normal((2_000, 3)).round(4).astype(np.float32)
    np.testing.assert_array_equal(from_csv.features, expected)


def test_bundled_wikipedia_has_the_published_statistics():
    log = load_events(WIKIPEDIA, cache=False)
    assert log.num_users == 8_227
    assert log.num_items == 1_000
    assert log.num_interactions == 157_474
    assert log.num_unique_edges == 18_257
    assert log.frame.head(3).rows() == [
        (0, 0, 0.0, 0),
        (1, 1, 36.0, 0),
        (1, 1, 77.0, 0),
    ]


# --------------------------------------------------------------------- mapped columns


def test_string_ids_are_numbered_in_order_of_first_appearance(tmp_path):
    text = "who,what,when\ncarol,song-b,1\nalice,song-a,2\ncarol,song-a,3\nbob,song-c,4\n"
    cols = {"user_id": "who", "item_id": "what", "timestamp": "when"}
    log = load_events(write(tmp_path, text), columns=cols, cache=False)
    assert rows(log) == [(0, 0, 1.0, 0), (1, 1, 2.0, 0), (0, 1, 3.0, 0), (2, 2, 4.0, 0)]
    assert (log.num_users, log.num_items) == (3, 3)


def test_first_appearance_is_in_time_order(tmp_path):
    text = "u,i,t\nbob,x,2\nalice,x,1\n"
    with pytest.warns(UnsortedInputWarning):
        log = load_events(
            write(tmp_path, text),
            columns={"user_id": "u", "item_id": "i", "timestamp": "t"},
            cache=False,
        )
    assert rows(log) == [(0, 0, 1.0, 0), (1, 0, 2.0, 0)]


def test_integer_ids_are_kept_when_asked(tmp_path):
    text = "u,i,t,label\n7,3,0,1\n2,9,5,0\n"
    cols = {"user_id": "u", "item_id": "i", "timestamp": "t", "state_label": "label"}
    log = load_events(write(tmp_path, text), columns=cols, cache=False, ids="keep")
    assert rows(log) == [(7, 3, 0.0, 1), (2, 9, 5.0, 0)]
    assert (log.num_users, log.num_items) == (8, 10)
    assert log.original_ids("user", [7, 2]) == [7, 2]


def test_iso_datetimes_become_epoch_seconds(tmp_path):
    text = "user_id,item_id,timestamp\n0,0,2020-01-01T00:00:00\n0,1,2020-01-01T00:01:30.5\n"
    log = load_events(write(tmp_path, text), columns={}, cache=False)
    assert log.frame.get_column("timestamp").to_list() == [1_577_836_800.0, 1_577_836_890.5]


def test_quoted_fields_in_a_mapped_csv(tmp_path):
    text = 'user,item,t\n"smith, j",1,3\n"doe",2,4\n'
    cols = {"user_id": "user", "item_id": "item", "timestamp": "t"}
    log = load_events(write(tmp_path, text), columns=cols, cache=False)
    assert rows(log) == [(0, 0, 3.0, 0), (1, 1, 4.0, 0)]
    assert log.user_ids.to_list() == ["smith, j", "doe"]


def test_state_label_column_is_optional(tmp_path):
    text = "user_id,item_id,timestamp,extra\n0,0,1,x\n"
    log = load_events(write(tmp_path, text), columns={}, cache=False)
    assert rows(log) == [(0, 0, 1.0, 0)]


def test_parquet_with_mapping_strings_and_datetimes(tmp_path):
    path = tmp_path / "log.parquet"
    pl.DataFrame(
        {
            "who": ["b", "a", "b"],
            "item": [4.0, 2.0, 4.0],
            "at": pl.Series(["2020-01-01", "2020-01-02", "2020-01-03"]).str.to_datetime(),
        }
    ).write_parquet(path)
    log = load_events(path, columns={"user_id": "who", "item_id": "item", "timestamp": "at"})
    assert rows(log) == [
        (0, 0, 1_577_836_800.0, 0),
        (1, 1, 1_577_923_200.0, 0),
        (0, 0, 1_578_009_600.0, 0),
    ]
    assert (log.user_ids.to_list(), log.item_ids.to_list()) == (["b", "a"], [4, 2])


# ------------------------------------------------------------------------ validation

BAD_INPUTS = [
    ("", r"log\.csv: the file is empty"),
    (" \n\n", r"log\.csv: the file is empty"),
    (HEADER, r"log\.csv: no data rows after the header line"),
    (
        HEADER + "0,0,0.0,0\n1,1,nan,0\n",
        r"log\.csv, row 3, column timestamp: 'nan' is not a finite number",
    ),
    (HEADER + "0,0,0.0,0\n1,1,-inf,0\n", r"row 3, column timestamp: '-inf' is not a finite number"),
    (HEADER + "0,0,0.0,0\n1,1,soon,0\n", r"row 3, column timestamp: 'soon' is not a number"),
    (HEADER + "0,0,,0\n", r"row 2, column timestamp: empty value"),
    (HEADER + "0,0,0.0,0\n0,-4,1.0,0\n", r"row 3, column item_id: -4 is negative"),
    (HEADER + "0,0,0.0,0\n2.5,0,1.0,0\n", r"row 3, column user_id: '2\.5' is not an integer id"),
    (HEADER + "0,0,0.0,0\nalice,0,1.0,0\n", r"row 3, column user_id: 'alice' is not an integer id"),
    (HEADER + ",0,0.0,0\n", r"row 2, column user_id: empty value"),
    (
        HEADER + "0,0,0.0,0\n1,1,1.0\n2,2,2.0,0\n",
        r"log\.csv, row 3: 3 fields, expected 4 like most rows",
    ),
    (HEADER + "0,0,0.0,0,1\n1,1,1.0,0,1,2\n2,2,2.0,0,1\n", r"row 3: 6 fields, expected 5"),
    (HEADER + "0,0,0.0\n1,1,1.0\n", r"row 2: 3 fields, a JODIE CSV row needs at least 4"),
    (HEADER + "0,0,0.0,0,1.5\n1,1,1.0,0,x\n", r"row 3, column f1: 'x' is not a number"),
    (HEADER + "0,0,0.0,0,1.5\n1,1,1.0,0,\n", r"row 3, column f1: empty value"),
    (HEADER + "0,0,0.0,yes\n", r"row 2, column state_label: 'yes' is not an integer state label"),
    (HEADER + "0,0,0.0,0\r1,1,1.0,0\n", r"row 2: a carriage return inside the line"),
    (
        "timestamp,user_id,item_id,state_label\n1.0,0,0,0\n",
        r"row 1: the header has user_id as field 2",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_INPUTS)
def test_bad_input_names_file_row_column_and_problem(tmp_path, text, message):
    with pytest.raises(DataError, match=message) as err:
        load_events(write(tmp_path, text), cache=False)
    assert "\n" not in str(err.value)


def test_missing_file_says_where_it_looked(tmp_path):
    missing = tmp_path / "raw" / "lastfm.csv"
    with pytest.raises(DataError, match=f"no such file \\(looked for {missing}\\)"):
        load_events(missing)


def test_missing_column_lists_the_columns_found(tmp_path):
    path = write(tmp_path, "user,item,ts\n0,0,1\n")
    cols = {"user_id": "user", "item_id": "item", "timestamp": "time"}
    with pytest.raises(
        DataError,
        match=r"column 'time' \(timestamp\) not found in the header; found columns: user, item, ts",
    ):
        load_events(path, columns=cols, cache=False)


def test_missing_parquet_column(tmp_path):
    path = tmp_path / "log.parquet"
    pl.DataFrame({"user_id": [0], "timestamp": [0.0]}).write_parquet(path)
    with pytest.raises(
        DataError,
        match=r"column 'item_id' \(item_id\) not found; found columns: user_id, timestamp",
    ):
        load_events(path, cache=False)


def test_id_beyond_the_declared_count(tmp_path):
    path = write(tmp_path, HEADER + "0,0,0.0,0\n0,12,1.0,0\n")
    with pytest.raises(
        DataError, match=r"row 3, column item_id: id 12 is out of range for num_items=10"
    ):
        load_events(path, num_items=10, cache=False)


def test_mapped_column_names_in_messages(tmp_path):
    path = write(tmp_path, "u,i,ts\n0,0,1\n1,1,nan\n")
    with pytest.raises(DataError, match=r"row 3, column ts \(timestamp\): 'nan' is not a finite"):
        load_events(path, columns={"user_id": "u", "item_id": "i", "timestamp": "ts"}, cache=False)


def test_unknown_mapping_key_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="columns has unknown key 'user'"):
        load_events(write(tmp_path, "a\n"), columns={"user": "u"})


def test_not_a_parquet_file(tmp_path):
    with pytest.raises(DataError, match=r"log\.parquet: not a readable parquet file"):
        load_events(write(tmp_path, "PAR1 garbage", name="log.parquet"), cache=False)


def test_float_parquet_ids_must_be_whole(tmp_path):
    path = tmp_path / "log.parquet"
    pl.DataFrame({"user_id": [0.0, 1.5], "item_id": [0, 0], "timestamp": [0.0, 1.0]}).write_parquet(
        path
    )
    with pytest.raises(
        DataError, match=r"log\.parquet, row 2, column user_id: 1\.5 is not an integer id"
    ):
        load_events(path, cache=False)


LINE = st.lists(
    st.sampled_from(
        ["0", "1", "7", "-1", "2.5", "nan", "inf", "x", "", " ", '"', "1e3", "\r", "é"]
    ),
    max_size=6,
).map(",".join)
TEXT = st.lists(LINE, max_size=8).map("\n".join) | st.text(max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    header=st.sampled_from([HEADER, "", "u,i,t\n", "user_id,item_id,timestamp\n"]),
    body=TEXT,
    mapped=st.booleans(),
)
def test_random_malformed_csv_raises_only_data_errors(tmp_path_factory, header, body, mapped):
    path = tmp_path_factory.mktemp("fuzz") / "log.csv"
    path.write_bytes((header + body).encode("utf-8", "surrogatepass"))
    cols = {"user_id": "u", "item_id": "i", "timestamp": "t"} if mapped else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnsortedInputWarning)
            log = load_events(path, columns=cols, cache=False)
    except DataError:
        return
    assert log.num_interactions > 0
    assert log.frame.get_column("timestamp").is_sorted()
    assert log.frame.get_column("user_id").min() >= 0


# ----------------------------------------------------------------------------- cache


@pytest.fixture
def source(tmp_path):
    return write(tmp_path, HEADER + f"{10**12 + 5},7,0.0,0,0.5\n3,1,1.0,1,0.25\n")


CACHE_SUFFIXES = [".json", ".npy", ".parquet", ".parquet", ".parquet"]


def test_cache_is_written_beside_the_source_and_reused(source, monkeypatch):
    first = load_events(source)
    folder = source.parent / ".cache"
    names = sorted(p.name.split(".", 2)[-1].split(".", 1)[-1] for p in folder.iterdir())
    assert names == ["features.npy", "item_ids.parquet", "json", "parquet", "user_ids.parquet"]
    manifest = json.loads(next(folder.glob("*.json")).read_text())
    assert manifest["size"] == source.stat().st_size
    assert manifest["options"]["keep_features"] is True
    assert manifest["tempint_cache_version"] == events_module.CACHE_VERSION

    def no_parse(*args, **kwargs):
        raise AssertionError("the source was parsed again")

    monkeypatch.setattr(events_module, "_read_csv", no_parse)
    second = load_events(source)
    assert second.frame.equals(first.frame)
    np.testing.assert_array_equal(second.features, first.features)
    assert (second.num_users, second.num_items) == (2, 2)
    assert second.user_ids.to_list() == [10**12 + 5, 3]
    assert second.original_ids("user", [1, 0]) == [3, 10**12 + 5]


def test_touched_but_unchanged_source_keeps_the_cache(source, monkeypatch):
    load_events(source)
    later = time.time() + 10
    os.utime(source, (later, later))
    monkeypatch.setattr(events_module, "_read_csv", lambda *a, **k: pytest.fail("reparsed"))
    assert load_events(source).num_interactions == 2


def test_changed_source_or_options_rebuild_the_cache(source, tmp_path):
    load_events(source)
    source.write_text(HEADER + "0,0,0.0,0,0.5\n1,1,1.0,1,0.25\n2,0,2.0,0,0.0\n")
    assert load_events(source).num_users == 3
    assert load_events(source).num_interactions == 3
    assert load_events(source, keep_features=False).features is None
    assert load_events(source, num_users=9).num_users == 9
    assert load_events(source, ids="keep").item_ids is None
    assert len(list((tmp_path / ".cache").glob("*.json"))) == 1


def test_custom_cache_dir_and_no_temporary_files_left(source, tmp_path):
    folder = tmp_path / "elsewhere"
    load_events(source, cache_dir=folder)
    assert not (source.parent / ".cache").exists()
    assert sorted(p.suffix for p in folder.iterdir()) == CACHE_SUFFIXES


def corrupt_manifest(folder: Path) -> None:
    next(folder.glob("*.json")).write_text("{not json")


def drop_parquet(folder: Path) -> None:
    next(p for p in folder.glob("*.parquet") if "_ids" not in p.name).unlink()


def drop_id_map(folder: Path) -> None:
    next(folder.glob("*.item_ids.parquet")).unlink()


def shorten_id_map(folder: Path) -> None:
    path = next(folder.glob("*.user_ids.parquet"))
    pl.read_parquet(path).head(1).write_parquet(path)


def truncate_parquet(folder: Path) -> None:
    path = next(p for p in folder.glob("*.parquet") if "_ids" not in p.name)
    path.write_bytes(path.read_bytes()[:20])


def wrong_row_count(folder: Path) -> None:
    path = next(folder.glob("*.json"))
    manifest = json.loads(path.read_text())
    manifest["num_interactions"] = 5
    path.write_text(json.dumps(manifest))


def drop_features(folder: Path) -> None:
    next(folder.glob("*.npy")).unlink()


def wrong_version(folder: Path) -> None:
    path = next(folder.glob("*.json"))
    manifest = json.loads(path.read_text())
    manifest["tempint_cache_version"] = -1
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage",
    [
        corrupt_manifest,
        drop_parquet,
        drop_id_map,
        shorten_id_map,
        truncate_parquet,
        wrong_row_count,
        drop_features,
        wrong_version,
    ],
)
def test_damaged_cache_is_detected_and_rebuilt(source, damage):
    expected = load_events(source)
    folder = source.parent / ".cache"
    damage(folder)
    rebuilt = load_events(source)
    assert rebuilt.frame.equals(expected.frame)
    assert rebuilt.user_ids.equals(expected.user_ids)
    np.testing.assert_array_equal(rebuilt.features, expected.features)
    assert sorted(p.suffix for p in folder.iterdir()) == CACHE_SUFFIXES
    manifest = json.loads(next(folder.glob("*.json")).read_text())
    assert manifest["num_interactions"] == 2
    assert manifest["tempint_cache_version"] == events_module.CACHE_VERSION


def test_cached_unsorted_log_warns_again(tmp_path):
    path = write(tmp_path, HEADER + "0,0,5.0,0\n1,1,1.0,0\n")
    with pytest.warns(UnsortedInputWarning):
        load_events(path)
    with pytest.warns(UnsortedInputWarning, match="1 of 2 rows"):
        log = load_events(path)
    assert rows(log) == [(0, 0, 1.0, 0), (1, 1, 5.0, 0)]  # numbered in time order
    assert log.user_ids.to_list() == [1, 0]


def test_read_only_cache_folder_does_not_stop_a_load(source, tmp_path):
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("")
    log = load_events(source, cache_dir=blocker / "cache")
    assert log.num_interactions == 2


@pytest.mark.slow
def test_lastfm_sized_csv_loads_in_seconds(tmp_path):
    from tempint.data.synthetic import generate_shape

    frame = generate_shape("lastfm")
    path = to_jodie_csv(frame, tmp_path / "lastfm.csv")
    start = time.perf_counter()
    log = load_events(path, ids="keep")
    cold = time.perf_counter() - start
    start = time.perf_counter()
    load_events(path, ids="keep")
    warm = time.perf_counter() - start
    assert log.frame.equals(frame)
    assert cold < 10.0 and warm < 1.0


def test_declared_counts_accept_numpy_integers_and_reject_nonsense(tmp_path):
    path = write(tmp_path, HEADER + "0,1,0.0,0\n")
    assert load_events(path, num_users=np.int64(3), cache=False).num_users == 3
    with pytest.raises(ConfigError, match="num_items=0 is not a positive integer"):
        load_events(path, num_items=0, cache=False)


def test_null_mapping_entries_mean_the_canonical_name(tmp_path):
    path = write(tmp_path, "user_id,item,timestamp,state_label\n0,0,1,1\n")
    cols = {"user_id": None, "item_id": "item", "timestamp": None, "state_label": None}
    assert rows(load_events(path, columns=cols, cache=False)) == [(0, 0, 1.0, 1)]


def test_parquet_sources_are_read_without_a_cache(tmp_path):
    path = tmp_path / "log.parquet"
    pl.read_parquet(WIKIPEDIA).head(10).write_parquet(path)
    assert load_events(path).num_interactions == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.parquet"]


def test_short_row_is_caught_even_when_features_are_dropped(tmp_path):
    path = write(tmp_path, HEADER + "0,0,0.0,0,1,2\n1,1,1.0,0,1\n2,2,2.0,0,1,2\n")
    with pytest.raises(DataError, match=r"row 3: 5 fields, expected 6"):
        load_events(path, keep_features=False, cache=False)


# -------------------------------------------------------------------------- formats

MOVIELENS_NAMES = ["user_id", "item_id", "rating", "timestamp"]


def test_tab_separated_file_without_header_read_by_names(tmp_path):
    path = write(
        tmp_path, "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"
    )
    with pytest.warns(UnsortedInputWarning):
        log = load_events(path, separator="\t", header=False, names=MOVIELENS_NAMES, cache=False)
    assert rows(log) == [(0, 0, 878887116.0, 0), (1, 1, 881250949.0, 0), (2, 2, 891717742.0, 0)]
    assert log.user_ids.to_list() == [22, 196, 186]
    assert (log.num_users, log.num_items) == (3, 3)


def test_multi_character_separator(tmp_path):
    path = write(tmp_path, "1::1193::5::978300760\n1::661::3::978302109\n", name="ratings.dat")
    log = load_events(path, separator="::", header=False, names=MOVIELENS_NAMES, cache=False)
    assert rows(log) == [(0, 0, 978300760.0, 0), (0, 1, 978302109.0, 0)]
    assert log.item_ids.to_list() == [1193, 661]


def test_tsv_name_defaults_to_tabs_and_a_header_line(tmp_path):
    path = write(tmp_path, "user_id\titem_id\ttimestamp\n5\t6\t1\n", name="log.tsv")
    assert rows(load_events(path, columns={}, cache=False)) == [(0, 0, 1.0, 0)]


def test_gzip_input_just_works_and_is_cached(tmp_path):
    import gzip

    text = HEADER + "3,1,0.0,0\n4,1,1.0,0\n"
    path = write(tmp_path, gzip.compress(text.encode()), name="log.csv.gz")
    assert rows(load_events(path)) == [(0, 0, 0.0, 0), (1, 0, 1.0, 0)]
    assert rows(load_events(path)) == [(0, 0, 0.0, 0), (1, 0, 1.0, 0)]  # from the cache


def test_jodie_layout_with_another_separator(tmp_path):
    path = write(tmp_path, "0;0;0.0;0;0.5\n1;1;1.0;0;0.25\n")
    log = load_events(path, separator=";", ids="keep", cache=False)
    assert rows(log) == [(0, 0, 0.0, 0), (1, 1, 1.0, 0)]
    assert log.features[:, 0].tolist() == [0.5, 0.25]


@pytest.mark.parametrize(
    ("content", "name", "options", "message"),
    [
        (
            "196\t242\t3\t881250949\n186\t302\t3\t891717742\n",
            "u.data",
            {},
            r"u\.data, row 1: the fields are tab-separated, not separated by comma; "
            r"set data\.separator to '\\t'$",
        ),
        (
            "userId::movieId::rating::timestamp\n1::2::3::4\n",
            "ratings.csv",
            {"separator": "\t"},
            r"the fields are '::'-separated, not separated by tab; set data\.separator to '::'$",
        ),
        (
            "PAR1 pretending",
            "log.csv",
            {},
            r"log\.csv: the file is parquet, not csv text; name it log\.parquet "
            r"\(or pass file_format='parquet'\)$",
        ),
        (
            b"\x1f\x8b\x08\x00garbage",
            "log.csv",
            {},
            r"log\.csv: the file is gzip-compressed but its name does not end in \.gz; "
            r"name it log\.csv\.gz \(it is then decompressed on reading\) or decompress it$",
        ),
        (
            b"not gzip at all",
            "log.csv.gz",
            {},
            r"log\.csv\.gz: not a readable gzip file \(.*\); a \.gz name needs gzip-compressed",
        ),
        (
            "1\t2\t3\n1\t2\n",
            "log.tsv",
            {"header": False, "names": ["user_id", "item_id", "timestamp"]},
            r"log\.tsv, row 2: 2 fields, expected 3 like data\.names; every row needs the same "
            r"number of tab-separated fields$",
        ),
    ],
)
def test_wrong_format_gets_one_line_naming_the_cause(tmp_path, content, name, options, message):
    path = write(tmp_path, content, name=name)
    with pytest.raises(DataError, match=message) as err:
        load_events(path, cache=False, **options)
    assert "\n" not in str(err.value)


def test_format_options_are_checked(tmp_path):
    path = write(tmp_path, "u,i,t\n1,2,3\n")
    cols = {"user_id": "u", "item_id": "i", "timestamp": "t"}
    with pytest.raises(ConfigError, match=r"header=false with a column mapping needs names"):
        load_events(path, columns=cols, header=False, cache=False)
    with pytest.raises(ConfigError, match=r"separator='' must be a non-empty string"):
        load_events(path, separator="", cache=False)
    with pytest.raises(ConfigError, match=r"ids='sorted' is not known"):
        load_events(path, ids="sorted", cache=False)
    with pytest.raises(ConfigError, match=r"names='u' must be a list"):
        load_events(path, names="u", cache=False)


def test_load_phases_are_logged_with_row_counts(tmp_path, caplog):
    path = write(tmp_path, HEADER + "9,0,5.0,0\n8,1,1.0,0\n")
    with caplog.at_level("INFO", logger="tempint.data.events"), pytest.warns(UnsortedInputWarning):
        load_events(path, cache=False)
    text = caplog.text
    size = f"reading {path.stat().st_size} bytes"
    for phase in (
        size,
        "read 2 rows",
        "sorting 2 rows",
        "renumbered user_id: 2 distinct ids -> 0..1",
    ):
        assert phase in text, phase
    assert "2 interactions, 2 users, 2 items, loaded in" in text
