"""Generated streams: shape, determinism, and the repeat structure they promise."""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import pytest

from tempint.data.events import COLUMNS, load_events
from tempint.data.synthetic import (
    SHAPES,
    generate_ratings,
    generate_shape,
    generate_stream,
    last_item_rate,
    repeat_rate,
    to_jodie_csv,
)
from tempint.errors import ConfigError


def frame_of(pairs: list[tuple[int, int]]) -> pl.DataFrame:
    users, items = zip(*pairs, strict=True)
    n = len(pairs)
    return pl.DataFrame(
        {
            "user_id": list(users),
            "item_id": list(items),
            "timestamp": [float(t) for t in range(n)],
            "state_label": pl.Series([0] * n, dtype=pl.Int8),
        }
    )


def test_rates_on_a_hand_made_stream():
    # u0: a b a a   u1: b b   -> repeats at rows 3, 4 (u0 a, a), 5 (u1 b); last at 4, 5
    frame = frame_of([(0, 0), (0, 1), (1, 1), (0, 0), (0, 0), (1, 1)])
    assert repeat_rate(frame) == pytest.approx(3 / 6)
    assert last_item_rate(frame) == pytest.approx(2 / 6)


def test_stream_is_a_valid_event_log():
    frame = generate_shape("tiny")
    assert dict(frame.schema) == COLUMNS
    assert frame.height == 400
    assert frame.get_column("timestamp").is_sorted()
    assert frame.get_column("user_id").unique().to_list() == list(range(20))
    assert frame.get_column("item_id").unique().to_list() == list(range(10))
    assert frame.get_column("timestamp").min() >= 0
    assert frame.get_column("timestamp").max() < SHAPES["tiny"]["duration"]


def test_same_seed_same_stream_other_seed_other_stream():
    assert generate_shape("tiny", seed=4).equals(generate_shape("tiny", seed=4))
    assert not generate_shape("tiny", seed=4).equals(generate_shape("tiny", seed=5))


@pytest.mark.parametrize(
    ("name", "scale"), [("wikipedia", 0.2), ("lastfm", 0.05), ("reddit", 0.03)]
)
def test_scaled_shapes_hit_their_repeat_and_last_item_rates(name, scale):
    frame = generate_shape(name, scale=scale)
    shape = SHAPES[name]
    assert frame.height == round(shape["num_interactions"] * scale)
    assert frame.get_column("user_id").n_unique() == round(shape["num_users"] * scale)
    assert repeat_rate(frame) == pytest.approx(shape["repeat_prob"], abs=0.02)
    assert last_item_rate(frame) == pytest.approx(shape["last_item_prob"], abs=0.02)


def test_lastfm_repeats_pairs_but_rarely_the_last_item():
    wiki, lastfm = generate_shape("wikipedia", scale=0.1), generate_shape("lastfm", scale=0.03)
    assert repeat_rate(wiki) == pytest.approx(repeat_rate(lastfm), abs=0.03)
    assert last_item_rate(wiki) > 0.7 > 0.2 > last_item_rate(lastfm)


def test_repeat_without_a_last_item_target():
    frame = generate_stream(200, 500, 20_000, repeat_prob=0.5, user_activity_alpha=0.3, seed=1)
    assert repeat_rate(frame) == pytest.approx(0.5, abs=0.02)
    assert 0.0 < last_item_rate(frame) < 0.5


def test_heavy_tailed_activity_and_state_labels():
    frame = generate_stream(
        500, 50, 20_000, repeat_prob=0.6, user_activity_alpha=1.0, state_label_prob=0.1
    )
    counts = frame.get_column("user_id").value_counts().get_column("count")
    assert counts.max() > 20 * counts.median()
    assert frame.get_column("state_label").mean() == pytest.approx(0.1, abs=0.01)


def test_popularity_drifts_over_time():
    frame = generate_stream(
        300, 100, 30_000, repeat_prob=0.0, popularity_drift=3.0, duration=1_000.0, seed=2
    )
    early = np.bincount(frame.filter(pl.col("timestamp") < 200)["item_id"], minlength=100)
    late = np.bincount(frame.filter(pl.col("timestamp") >= 800)["item_id"], minlength=100)
    assert np.corrcoef(early, late)[0, 1] < 0.8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_users=0), "num_users=0 must be a positive integer"),
        (dict(repeat_prob=1.0), r"repeat_prob=1\.0 must be in \[0, 1\)"),
        (dict(last_item_prob=0.9), r"last_item_prob=0\.9 must be in \[0, repeat_prob=0\.5\]"),
    ],
)
def test_invalid_parameters(kwargs, message):
    params = dict(num_users=5, num_items=5, num_interactions=50, repeat_prob=0.5) | kwargs
    with pytest.raises(ConfigError, match=message):
        generate_stream(**params)


def test_unknown_shape():
    with pytest.raises(
        ConfigError, match="shape 'ebay' is not known; known: amazon, lastfm, ml20m, reddit"
    ):
        generate_shape("ebay")


def test_jodie_csv_round_trip(tmp_path):
    frame = generate_shape("tiny", seed=7)
    path = to_jodie_csv(frame, tmp_path / "tiny.csv", num_features=4)
    assert path.read_text().splitlines()[0] == (
        "user_id,item_id,timestamp,state_label,comma_separated_list_of_features"
    )
    log = load_events(path, cache=False, ids="keep")
    assert log.frame.equals(frame)
    assert log.features.shape == (400, 4)
    plain = load_events(to_jodie_csv(frame, tmp_path / "plain.csv"), cache=False, ids="keep")
    assert plain.frame.equals(frame) and plain.features is None


@pytest.mark.slow
def test_full_lastfm_shape_is_fast_and_on_target():
    start = time.perf_counter()
    frame = generate_shape("lastfm")
    seconds = time.perf_counter() - start
    assert frame.height == 1_293_103
    assert repeat_rate(frame) == pytest.approx(1 - 154_993 / 1_293_103, abs=0.005)
    assert last_item_rate(frame) == pytest.approx(0.114, abs=0.01)
    assert seconds < 15.0


def test_ratings_never_repeat_and_are_seeded():
    frame = generate_ratings(num_users=80, num_items=400, per_user=25, num_genres=8, seed=1)
    assert list(frame.columns) == ["userId", "movieId", "rating", "timestamp"]
    assert frame["timestamp"].is_sorted()
    pairs = frame.select("userId", "movieId")
    assert pairs.is_duplicated().sum() == 0  # a user rates a movie once
    # same seed, same log
    again = generate_ratings(num_users=80, num_items=400, per_user=25, num_genres=8, seed=1)
    assert again.equals(frame)
    with pytest.raises(ConfigError):
        generate_ratings(num_items=5, per_user=10)


# ----------------------------------------------------------------- catalogue shapes


@pytest.mark.parametrize(("name", "scale"), [("ml20m", 0.01), ("amazon", 0.02)])
def test_catalogue_shapes_have_their_sizes_and_no_pair_twice(name, scale):
    from tempint.data.synthetic import CATALOGUES

    shape = CATALOGUES[name]
    frame = generate_shape(name, scale=scale)
    items = round(shape["num_items"] * scale) if shape["scale_items"] else shape["num_items"]
    assert frame.height == round(shape["num_interactions"] * scale)
    assert dict(frame.schema) == COLUMNS
    assert frame["timestamp"].is_sorted()
    assert repeat_rate(frame) == 0.0
    # contiguous ids: every user and every item occurs, so nothing is a phantom
    assert (
        frame["user_id"].n_unique()
        == frame["user_id"].max() + 1
        == round(shape["num_users"] * scale)
    )
    assert frame["item_id"].n_unique() == frame["item_id"].max() + 1 == items
    per_item = frame.group_by("item_id").len()["len"].sort(descending=True).to_numpy()
    top = per_item[: max(1, len(per_item) // 100)].sum() / frame.height
    assert top > 0.1  # long-tailed: the top 1% of items hold over a tenth of the events
    per_user = frame.group_by("user_id").len()["len"]
    if name == "ml20m":
        assert per_user.min() >= 20 and 50 <= per_user.median() <= 90
    else:
        assert (per_user <= 3).mean() > 0.8


def test_catalogue_is_seeded_and_refuses_the_impossible():
    from tempint.data.synthetic import generate_catalogue

    a = generate_catalogue(50, 30, 200, seed=1)
    assert a.equals(generate_catalogue(50, 30, 200, seed=1))
    assert not a.equals(generate_catalogue(50, 30, 200, seed=2))
    with pytest.raises(ConfigError, match="cannot be spread over 5 users without a pair twice"):
        generate_catalogue(5, 30, 100)


def test_heavy_users_still_get_distinct_items():
    from tempint.data.synthetic import generate_catalogue

    # ten users share 300 events over 30 items: each takes ~its cap of 10 items
    frame = generate_catalogue(30, 30, 300, per_user_min=10, item_popularity_alpha=2.0)
    assert repeat_rate(frame) == 0.0
    assert frame.group_by("user_id").len()["len"].max() <= 10
