"""Samplers never reorder a node's interactions and cover every interaction they must."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tempint.data.samplers import (
    ChronoSampler,
    SequenceSampler,
    ShuffleSampler,
    TBatchSampler,
    exact_segments,
    tbatch_assign,
)
from tempint.errors import ConfigError

SETTINGS = settings(max_examples=50, deadline=None)


@st.composite
def streams(draw, min_rows=1, max_rows=60):
    """(users, items, t, start, end): a time-sorted stream (ties allowed) and a stretch."""
    n = draw(st.integers(min_rows, max_rows))
    num_users = draw(st.integers(1, 6))
    num_items = draw(st.integers(1, 6))
    users = draw(st.lists(st.integers(0, num_users - 1), min_size=n, max_size=n))
    items = draw(st.lists(st.integers(0, num_items - 1), min_size=n, max_size=n))
    steps = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 7.0]), min_size=n, max_size=n))
    start = draw(st.integers(0, n - 1))
    end = draw(st.integers(start + 1, n))
    t = np.cumsum(steps) + 1000.0
    return np.array(users, np.int64), np.array(items, np.int64), t, start, end


def flatten(plans) -> np.ndarray:
    return np.concatenate([s for p in plans for s in p.steps]) if plans else np.zeros(0, int)


# ---- t-batches ---------------------------------------------------------------------------


def reference_tbatches(users, items, t, start, end, num_windows, timespan=None):
    """JODIE's rule written out: per window, batch = max(last batch of u, of i) + 1."""
    span = timespan or max((t[end - 1] - t[start]) / num_windows, 1e-12)
    windows: dict[int, list[int]] = {}
    for n in range(start, end):
        w = math.floor((t[n] - t[start]) / span)
        windows.setdefault(w if timespan else min(w, num_windows - 1), []).append(n)
    chunks = []
    for w in sorted(windows):
        last_user: dict[int, int] = {}
        last_item: dict[int, int] = {}
        batches: list[list[int]] = []
        for n in windows[w]:
            b = max(last_user.get(users[n], -1), last_item.get(items[n], -1)) + 1
            last_user[users[n]] = last_item[items[n]] = b
            if b == len(batches):
                batches.append([])
            batches[b].append(n)
        chunks.append(batches)
    return chunks


def test_tbatch_assign_on_a_hand_made_window():
    users = np.array([0, 1, 0, 2, 1])
    items = np.array([0, 0, 1, 1, 2])
    np.testing.assert_array_equal(tbatch_assign(users, items), [0, 1, 1, 2, 2])
    assert tbatch_assign(users[:0], items[:0]).shape == (0,)


def test_tbatch_windows_include_the_last_partial_one():
    users, items = np.array([0, 1, 0, 2, 1]), np.array([0, 0, 1, 1, 2])
    t = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    plans = TBatchSampler(num_windows=1).plan(users, items, t, 0, 5)
    assert [[s.tolist() for s in p.steps] for p in plans] == [[[0], [1, 2], [3, 4]]]
    # span 2: windows [0, 2), [2, 4], the last event closes the last window
    plans = TBatchSampler(num_windows=2).plan(users, items, t, 0, 5)
    assert [[s.tolist() for s in p.steps] for p in plans] == [[[0], [1]], [[2, 4], [3]]]
    # fixed span 1.5: windows [0, 1.5), [1.5, 3), [3, 4.5): the last one is partial
    plans = TBatchSampler(timespan=1.5).plan(users, items, t, 0, 5)
    assert [[s.tolist() for s in p.steps] for p in plans] == [[[0], [1]], [[2]], [[3, 4]]]
    assert TBatchSampler().plan(users, items, t, 3, 3) == []


@SETTINGS
@given(streams(), st.integers(1, 6), st.sampled_from([None, 0.5, 3.0, 20.0]))
def test_tbatch_properties_and_reference(stream, num_windows, timespan):
    users, items, t, start, end = stream
    plans = TBatchSampler(num_windows, timespan).plan(users, items, t, start, end)
    got = [[s.tolist() for s in p.steps] for p in plans]
    assert got == reference_tbatches(users, items, t, start, end, num_windows, timespan)
    # every interaction exactly once, the last window included
    assert sorted(flatten(plans).tolist()) == list(range(start, end))
    if timespan is None:
        assert len(plans) <= num_windows
    place = {}  # position -> (chunk, step)
    for c, plan in enumerate(plans):
        for s, step in enumerate(plan.steps):
            assert len(set(users[step].tolist())) == len(step), "a user twice in a step"
            assert len(set(items[step].tolist())) == len(step), "an item twice in a step"
            for n in step.tolist():
                place[n] = (c, s)
    # windows are consecutive stretches in time order
    firsts = [min(np.concatenate(p.steps)) for p in plans]
    lasts = [max(np.concatenate(p.steps)) for p in plans]
    assert all(lo == prev + 1 for prev, lo in zip(lasts, firsts[1:]))
    # per-node order: an interaction comes after every earlier one of its user and item
    for n in range(start, end):
        for m in range(start, n):
            if users[m] == users[n] or items[m] == items[n]:
                assert place[m] < place[n]


# ---- chrono and shuffle -------------------------------------------------------------------


@SETTINGS
@given(streams(), st.integers(1, 9))
def test_chrono_chunks_are_consecutive_and_cover_once(stream, batch_size):
    users, items, t, start, end = stream
    plans = ChronoSampler(batch_size, steps=3).plan(users, items, t, start, end)
    assert all(1 <= len(p.steps) <= 3 for p in plans)
    assert all(len(p.steps) == 3 for p in plans[:-1])
    assert flatten(plans).tolist() == list(range(start, end))  # in order, once each
    steps = [s for p in plans for s in p.steps]
    assert all(len(s) == batch_size for s in steps[:-1])
    assert 1 <= len(steps[-1]) <= batch_size


@SETTINGS
@given(streams(), st.integers(1, 9), st.integers(0, 3), st.integers(0, 5))
def test_shuffle_covers_once_and_is_seeded_by_epoch(stream, batch_size, seed, epoch):
    users, items, t, start, end = stream
    sampler = ShuffleSampler(batch_size, seed)
    plans = sampler.plan(users, items, t, start, end, epoch=epoch)
    assert sorted(flatten(plans).tolist()) == list(range(start, end))
    assert all(len(p.steps) == 1 and len(p.steps[0]) <= batch_size for p in plans)
    assert all(np.all(np.diff(p.steps[0]) > 0) for p in plans)  # ascending inside a batch
    again = ShuffleSampler(batch_size, seed).plan(users, items, t, start, end, epoch=epoch)
    assert np.array_equal(flatten(plans), flatten(again))


def test_shuffle_differs_across_epochs_and_seeds():
    users = items = np.zeros(200, np.int64)
    t = np.arange(200.0)

    def order(seed, epoch):
        return flatten(ShuffleSampler(10, seed).plan(users, items, t, 0, 200, epoch=epoch))

    assert not np.array_equal(order(0, 0), order(0, 1))
    assert not np.array_equal(order(0, 0), order(1, 0))
    assert np.array_equal(order(3, 2), order(3, 2))


# ---- sequence windows ---------------------------------------------------------------------


def check_local_rows(plan, users, items):
    """Every step's local rows map back to its global ids, inside its window's rows."""
    length = len(plan.steps)
    num_windows = len(plan.steps[0])
    assert plan.local_users.shape == plan.local_items.shape == (num_windows * length,)
    np.testing.assert_array_equal(plan.row_window, np.arange(num_windows * length) // length)
    for rows_of, local, ids in (
        (plan.user_rows, plan.local_users, users),
        (plan.item_rows, plan.local_items, items),
    ):
        for s, step in enumerate(plan.steps):
            rows = rows_of[s]
            np.testing.assert_array_equal(local[rows], ids[step])
            assert np.all(rows // length == np.arange(num_windows))  # window b's rows
        # within a window, one row per distinct node
        rows = np.stack(rows_of, axis=1)  # [B, L]
        node = ids[np.stack(plan.steps, axis=1)]
        for b in range(num_windows):
            pairs = set(zip(rows[b].tolist(), node[b].tolist()))
            assert len(pairs) == len({r for r, _ in pairs}) == len({v for _, v in pairs})


def test_sequence_hand_made_windows():
    users = np.array([0, 1, 0, 2, 2, 3, 4])
    items = np.array([5, 5, 6, 5, 7, 7, 7])
    t = np.arange(7.0)
    plans = SequenceSampler(length=3, batch_size=2).plan(users, items, t, 0, 7)
    # windows [0, 3), [3, 6), and the last full-length one [4, 7)
    assert [p.steps[0].tolist() for p in plans] == [[0, 3], [4]]
    assert [s.tolist() for s in plans[0].steps] == [[0, 3], [1, 4], [2, 5]]
    first = plans[0]
    assert first.user_rows[0].tolist() == [0, 3] and first.user_rows[2].tolist() == [0, 4]
    assert first.local_users.tolist() == [0, 1, 0, 2, 3, 0]  # unused rows hold 0
    assert first.local_items.tolist() == [5, 6, 0, 5, 7, 0]
    check_local_rows(first, users, items)


@SETTINGS
@given(streams(), st.integers(2, 8), st.integers(1, 8), st.integers(1, 4))
def test_sequence_windows_cover_everything(stream, length, stride, batch_size):
    users, items, t, start, end = stream
    stride = min(stride, length)
    sampler = SequenceSampler(length, stride, batch_size)
    plans = sampler.plan(users, items, t, start, end)
    size = min(length, end - start)
    starts = np.concatenate([p.steps[0] for p in plans])
    np.testing.assert_array_equal(starts, sampler.window_starts(start, end))
    assert starts[0] == start and starts[-1] == end - size
    assert np.all(np.diff(starts) > 0) and np.all(np.diff(starts) <= stride)
    for plan in plans:
        assert len(plan.steps) == size and 1 <= len(plan.steps[0]) <= batch_size
        for s, step in enumerate(plan.steps):  # consecutive, full length
            np.testing.assert_array_equal(step, plan.steps[0] + s)
        check_local_rows(plan, users, items)
    assert set(flatten(plans).tolist()) == set(range(start, end))


@SETTINGS
@given(streams(), st.integers(2, 8), st.integers(0, 9), st.integers(1, 4))
def test_sequence_eval_scores_each_interaction_once(stream, length, context, batch_size):
    users, items, t, start, end = stream
    sampler = SequenceSampler(length, batch_size=batch_size)
    plans = sampler.eval_plan(users, items, start, end, context)
    size = min(length, end)
    wanted = min(context, size - 1)
    scored = []
    for plan in plans:
        assert len(plan.steps) == size and len(plan.scored) == size
        window = np.stack(plan.steps, axis=1)  # [B, L] positions
        flags = np.stack(plan.scored, axis=1)
        assert window.min() >= 0 and window.max() < end  # never reads past the stretch
        for b in range(len(window)):
            np.testing.assert_array_equal(window[b], window[b, 0] + np.arange(size))
            first = int(np.argmax(flags[b]))
            assert flags[b].any() and flags[b, first:].all()  # context, then scored
            assert first <= size - 1
            assert first >= min(wanted, window[b, first])  # the asked context where it exists
        scored += window[flags].tolist()
        check_local_rows(plan, users, items)
    assert sorted(scored) == list(range(start, end))


def test_sequence_eval_reaches_back_for_context():
    users = items = np.arange(10)
    plans = SequenceSampler(length=4, batch_size=8).eval_plan(users, items, 6, 10, context=2)
    (plan,) = plans
    assert [s.tolist() for s in plan.steps] == [[4, 6], [5, 7], [6, 8], [7, 9]]
    assert [s.tolist() for s in plan.scored] == [[0, 0], [0, 0], [1, 1], [1, 1]]


# ---- exact evaluation segments --------------------------------------------------------------


@SETTINGS
@given(streams(), st.integers(1, 6))
def test_exact_segments(stream, max_size):
    users, items, t, start, end = stream
    plans = exact_segments(users, items, start, end, max_size)
    assert flatten(plans).tolist() == list(range(start, end))  # contiguous, in order, once
    for plan, after in zip(plans, plans[1:] + [None]):
        (step,) = plan.steps
        assert 1 <= len(step) <= max_size
        assert len(set(users[step].tolist())) == len(step)
        assert len(set(items[step].tolist())) == len(step)
        if after is not None:  # a step ends only at a repeat or at max_size
            nxt = after.steps[0][0]
            assert len(step) == max_size or users[nxt] in users[step] or items[nxt] in items[step]


def test_exact_segments_hand_made():
    users = np.array([0, 1, 0, 2, 3, 4])
    items = np.array([0, 1, 2, 2, 3, 4])
    plans = exact_segments(users, items, 0, 6, max_size=2)
    assert [p.steps[0].tolist() for p in plans] == [[0, 1], [2], [3, 4], [5]]
    assert exact_segments(users, items, 2, 2) == []


# ---- configuration errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda: TBatchSampler(num_windows=0), "sampler.num_windows"),
        (lambda: TBatchSampler(timespan=0.0), "sampler.timespan"),
        (lambda: ChronoSampler(batch_size=0), "sampler.batch_size"),
        (lambda: ChronoSampler(batch_size=True), "sampler.batch_size"),
        (lambda: ShuffleSampler(batch_size=2.5), "sampler.batch_size"),
        (lambda: SequenceSampler(length=1), "sampler.length"),
        (lambda: SequenceSampler(length=4, stride=0), "sampler.stride"),
        (lambda: SequenceSampler(length=4, stride=5), "sampler.stride"),
        (lambda: SequenceSampler(batch_size=0), "sampler.batch_size"),
        (lambda: exact_segments(np.zeros(2), np.zeros(2), 0, 2, 0), "data.eval_max_batch_size"),
    ],
)
def test_bad_values_name_the_key(make, key):
    with pytest.raises(ConfigError, match=key):
        make()


SAMPLERS = st.sampled_from(
    [
        TBatchSampler(num_windows=1),
        TBatchSampler(num_windows=7),
        TBatchSampler(timespan=2.5),
        ChronoSampler(batch_size=3, steps=2),
        ChronoSampler(batch_size=50, steps=8),
        ShuffleSampler(batch_size=4, seed=1),
        SequenceSampler(length=4, batch_size=2),
        SequenceSampler(length=5, stride=2, batch_size=3),
    ]
)


@SETTINGS
@given(stream=streams(), sampler=SAMPLERS)
def test_num_chunks_is_the_number_of_chunks_planned(stream, sampler):
    users, items, t, start, end = stream
    planned = sampler.plan(users, items, t, start, end)
    assert sampler.num_chunks(t, start, end) == len(planned)
    assert sampler.num_chunks(t, end, end) == len(sampler.plan(users, items, t, end, end)) == 0
