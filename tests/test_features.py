"""Per-interaction features on a hand-made 8-row stream, and against slow references."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tempint.data.batch import TAG_NAMES
from tempint.data.datamodule import build_stream
from tempint.data.features import (
    DAY,
    WEEK,
    DeltaScale,
    cyclic_time,
    earlier_rows,
    first_of_key,
    interaction_tags,
    node_deltas,
    partner_history,
    previous_item,
)
from tempint.data.splits import chrono_split

# row: user, item, t
#  0:  u0   i0    0
#  1:  u1   i0   10
#  2:  u0   i1   20
#  3:  u0   i1   35   repeat of row 2, and the user's previous item
#  4:  u1   i2   40
#  5:  u2   i1   50
#  6:  u0   i0   70   repeat of row 0
#  7:  u1   i3  100   i3 first seen here
USERS = [0, 1, 0, 0, 1, 2, 0, 1]
ITEMS = [0, 0, 1, 1, 2, 1, 0, 3]
TIMES = [0.0, 10.0, 20.0, 35.0, 40.0, 50.0, 70.0, 100.0]


def frame_of(users, items, times) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": np.asarray(users, dtype=np.int32),
            "item_id": np.asarray(items, dtype=np.int32),
            "timestamp": np.asarray(times, dtype=np.float64),
            "state_label": np.zeros(len(users), dtype=np.int8),
        }
    )


@pytest.fixture
def frame() -> pl.DataFrame:
    return frame_of(USERS, ITEMS, TIMES)


def arrays(frame):
    return (
        frame["user_id"].to_numpy().astype(np.int64),
        frame["item_id"].to_numpy().astype(np.int64),
        frame["timestamp"].to_numpy(),
    )


# ---- gaps, previous item, cyclic time ---------------------------------------------


def test_node_deltas(frame):
    du, di = node_deltas(frame)
    np.testing.assert_array_equal(du, [0, 0, 20, 15, 30, 0, 35, 60])
    np.testing.assert_array_equal(di, [0, 10, 0, 15, 0, 15, 60, 0])


def test_previous_item(frame):
    prev = previous_item(frame)
    assert prev.dtype == np.int64
    np.testing.assert_array_equal(prev, [-1, -1, 0, 1, 0, -1, 1, 2])


def test_cyclic_time():
    out = cyclic_time(np.array([0.0, DAY / 4, DAY, WEEK, WEEK + DAY / 2]))
    assert out.shape == (5, 4) and out.dtype == np.float32
    c, s = math.cos(2 * math.pi / 7), math.sin(2 * math.pi / 7)
    c28, s28 = math.cos(2 * math.pi / 28), math.sin(2 * math.pi / 28)
    expected = [
        [1, 0, 1, 0],
        [0, 1, c28, s28],
        [1, 0, c, s],
        [1, 0, 1, 0],
        [-1, 0, math.cos(math.pi / 7), math.sin(math.pi / 7)],
    ]
    np.testing.assert_allclose(out, expected, atol=1e-6)


# ---- partner histories --------------------------------------------------------------


def test_user_history_holds_the_users_own_earlier_items(frame):
    users, items, t = arrays(frame)
    partners, gaps = partner_history(users, items, t, 2)
    assert partners.dtype == np.int64 and gaps.dtype == np.float64
    np.testing.assert_array_equal(
        partners,
        [[-1, -1], [-1, -1], [0, -1], [1, 0], [0, -1], [-1, -1], [1, 1], [2, 0]],
    )
    np.testing.assert_array_equal(
        gaps, [[0, 0], [0, 0], [20, 0], [15, 35], [30, 0], [0, 0], [35, 50], [60, 90]]
    )


def test_item_history_holds_the_items_own_earlier_users(frame):
    users, items, t = arrays(frame)
    partners, gaps = partner_history(items, users, t, 2)
    np.testing.assert_array_equal(
        partners,
        [[-1, -1], [0, -1], [-1, -1], [0, -1], [-1, -1], [0, 0], [1, 0], [-1, -1]],
    )
    np.testing.assert_array_equal(
        gaps, [[0, 0], [10, 0], [0, 0], [15, 0], [0, 0], [15, 30], [60, 70], [0, 0]]
    )


def test_history_longer_than_the_past_is_padded(frame):
    users, items, t = arrays(frame)
    partners, gaps = partner_history(users, items, t, 5)
    np.testing.assert_array_equal(partners[6], [1, 1, 0, -1, -1])
    np.testing.assert_array_equal(gaps[6], [35, 50, 70, 0, 0])


def test_history_is_strictly_before_the_row_even_at_equal_times():
    # two rows of one user at the same second: the first must not see the second
    partners, gaps = partner_history(
        np.array([4, 4, 4]), np.array([7, 8, 9]), np.array([5.0, 5.0, 6.0]), 3
    )
    np.testing.assert_array_equal(partners, [[-1, -1, -1], [7, -1, -1], [8, 7, -1]])
    np.testing.assert_array_equal(gaps, [[0, 0, 0], [0, 0, 0], [1, 1, 0]])


def test_history_of_empty_stream_and_zero_k(frame):
    users, items, t = arrays(frame)
    p, g = partner_history(users[:0], items[:0], t[:0], 3)
    assert p.shape == (0, 3) and g.shape == (0, 3)
    p, g = partner_history(users, items, t, 0)
    assert p.shape == (8, 0) and g.shape == (8, 0)


# ---- tags -----------------------------------------------------------------------------


def test_interaction_tags(frame):
    tags = interaction_tags(frame, train_end=6)
    assert set(tags) == set(TAG_NAMES)
    expected = {
        "repeat": [0, 0, 0, 1, 0, 0, 1, 0],
        "new": [1, 1, 1, 0, 1, 1, 0, 1],
        "last": [0, 0, 0, 1, 0, 0, 0, 0],
        "hist_0": [1, 1, 0, 0, 0, 1, 0, 0],
        "hist_1-4": [0, 0, 1, 1, 1, 0, 1, 1],
        "hist_5-49": [0] * 8,
        "hist_50+": [0] * 8,
        "unseen_item": [0, 0, 0, 0, 0, 0, 0, 1],
    }
    for name, values in expected.items():
        assert tags[name].dtype == bool, name
        np.testing.assert_array_equal(tags[name], np.array(values, dtype=bool), err_msg=name)


def test_unseen_item_is_relative_to_the_training_split(frame):
    tags = interaction_tags(frame, train_end=4)  # i2 first appears at row 4
    np.testing.assert_array_equal(tags["unseen_item"], [0, 0, 0, 0, 1, 0, 0, 1])


def test_history_buckets_at_their_edges():
    n = 60  # one user, rows 0..59 have 0..59 earlier interactions
    tags = interaction_tags(frame_of([0] * n, [0] * n, np.arange(n, dtype=float)), train_end=n)
    rank = np.arange(n)
    np.testing.assert_array_equal(tags["hist_0"], rank == 0)
    np.testing.assert_array_equal(tags["hist_1-4"], (rank >= 1) & (rank <= 4))
    np.testing.assert_array_equal(tags["hist_5-49"], (rank >= 5) & (rank <= 49))
    np.testing.assert_array_equal(tags["hist_50+"], rank >= 50)
    np.testing.assert_array_equal(tags["new"], rank == 0)
    np.testing.assert_array_equal(tags["last"], rank > 0)


# ---- slow references on random streams -------------------------------------------------


def reference_history(owner, partner, t, k):
    partners = np.full((len(owner), k), -1, dtype=np.int64)
    gaps = np.zeros((len(owner), k))
    past: dict[int, list[tuple[int, float]]] = {}
    for n, (o, p, tn) in enumerate(zip(owner.tolist(), partner.tolist(), t.tolist())):
        for j, (q, tq) in enumerate(reversed(past.get(o, [])[-k:] if k else [])):
            partners[n, j] = q
            gaps[n, j] = tn - tq
        past.setdefault(o, []).append((p, tn))
    return partners, gaps


def reference_tags(users, items, train_end):
    seen_pairs, count, prev, train_items = set(), {}, {}, set(items[:train_end].tolist())
    out = {name: [] for name in TAG_NAMES}
    for u, i in zip(users.tolist(), items.tolist()):
        c = count.get(u, 0)
        out["repeat"].append((u, i) in seen_pairs)
        out["new"].append((u, i) not in seen_pairs)
        out["last"].append(prev.get(u) == i)
        out["hist_0"].append(c == 0)
        out["hist_1-4"].append(1 <= c <= 4)
        out["hist_5-49"].append(5 <= c <= 49)
        out["hist_50+"].append(c >= 50)
        out["unseen_item"].append(i not in train_items)
        seen_pairs.add((u, i))
        count[u] = c + 1
        prev[u] = i
    return {name: np.array(v, dtype=bool) for name, v in out.items()}


@st.composite
def streams(draw, max_rows=60):
    n = draw(st.integers(0, max_rows))
    num_users = draw(st.integers(1, 6))
    num_items = draw(st.integers(1, 6))
    users = draw(st.lists(st.integers(0, num_users - 1), min_size=n, max_size=n))
    items = draw(st.lists(st.integers(0, num_items - 1), min_size=n, max_size=n))
    steps = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))  # ties allowed
    return np.array(users, np.int64), np.array(items, np.int64), np.cumsum(steps).astype(float)


@settings(max_examples=50, deadline=None)
@given(streams(), st.integers(0, 7))
def test_partner_history_matches_reference(stream, k):
    users, items, t = stream
    for owner, partner in ((users, items), (items, users)):
        partners, gaps = partner_history(owner, partner, t, k)
        ref_partners, ref_gaps = reference_history(owner, partner, t, k)
        np.testing.assert_array_equal(partners, ref_partners)
        np.testing.assert_array_equal(gaps, ref_gaps)


@settings(max_examples=50, deadline=None)
@given(streams(max_rows=80), st.data())
def test_interaction_tags_match_reference(stream, data):
    users, items, t = stream
    if len(users) == 0:
        return
    train_end = data.draw(st.integers(0, len(users)))
    tags = interaction_tags(frame_of(users, items, t), train_end)
    expected = reference_tags(users, items, train_end)
    for name in TAG_NAMES:
        np.testing.assert_array_equal(tags[name], expected[name], err_msg=name)


# ---- scaling ------------------------------------------------------------------------------


def test_delta_scale_fit_and_apply():
    scale = DeltaScale.fit(np.array([1.0, 2.0, 3.0]))
    assert scale.mean == 2.0 and scale.std == pytest.approx(math.sqrt(2 / 3))
    out = scale(np.array([2.0, 2.0 + math.sqrt(2 / 3)]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 1.0], atol=1e-6)
    assert DeltaScale.fit(np.array([])) == DeltaScale(0.0, 1.0)
    assert DeltaScale.fit(np.array([5.0, 5.0])) == DeltaScale(5.0, 1.0)  # no zero division


def test_build_stream_scales_with_training_rows_only(frame):
    split = chrono_split(10, val=0.2, test=0.2)  # train rows 0..5 of a 10-row stream
    long = frame_of(USERS + [0, 2], ITEMS + [2, 1], TIMES + [130.0, 160.0])
    changed = frame_of(USERS + [2, 1], ITEMS[:6] + [3, 0, 2, 2], TIMES[:6] + [900, 5e4, 6e4, 9e5])
    a = build_stream(long, split, history_k=2)
    b = build_stream(changed, split, history_k=2)
    train = slice(0, split.train_end)
    du, di = node_deltas(long)
    users, items, t = arrays(long)
    raw_user = np.array([0, 0, 20, 15, 30, 0])
    raw_item = np.array([0, 10, 0, 15, 0, 15])
    expected_user = (raw_user - raw_user.mean()) / raw_user.std()
    expected_item = (raw_item - raw_item.mean()) / raw_item.std()
    for stream in (a, b):
        np.testing.assert_allclose(stream.delta_user[train].numpy(), expected_user, rtol=1e-6)
        np.testing.assert_allclose(stream.delta_item[train].numpy(), expected_item, rtol=1e-6)
        ref, ref_dt = partner_history(users, items, t, 2)
        np.testing.assert_array_equal(stream.user_history[train].numpy(), ref[train])
        np.testing.assert_allclose(
            stream.user_history_dt[train].numpy(), ref_dt[train] / raw_user.std(), rtol=1e-6
        )
    # later rows are scaled with the same training statistics
    np.testing.assert_allclose(
        a.delta_user.numpy(), (du - raw_user.mean()) / raw_user.std(), rtol=1e-6
    )
    np.testing.assert_allclose(
        a.delta_item.numpy(), (di - raw_item.mean()) / raw_item.std(), rtol=1e-6
    )


def test_earlier_rows_and_first_of_key_by_hand():
    key = np.array([5, 3, 5, 5, 3, 9])
    rank, previous = earlier_rows(key)
    assert rank.tolist() == [0, 0, 1, 2, 1, 0]
    assert previous.tolist() == [-1, -1, 0, 2, 1, -1]
    wide = key + 10**12  # beyond int16: the general sort path
    assert [a.tolist() for a in earlier_rows(wide)] == [rank.tolist(), previous.tolist()]
    assert first_of_key(key).tolist() == [True, True, False, False, False, True]
    assert [a.size for a in earlier_rows(np.zeros(0, dtype=np.int64))] == [0, 0]


def test_shared_node_rows_give_the_same_features(frame):
    users, items = frame["user_id"].to_numpy(), frame["item_id"].to_numpy()
    user_rows, item_rows = earlier_rows(users), earlier_rows(items)
    for a, b in zip(node_deltas(frame), node_deltas(frame, user_rows, item_rows), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(previous_item(frame), previous_item(frame, user_rows))
    shared = interaction_tags(frame, 6, user_rows, item_rows)
    for name, values in interaction_tags(frame, 6).items():
        np.testing.assert_array_equal(values, shared[name])
