"""Runs of exact steps replayed at once (`replay_steps`) rank every item as one forward
per step does, and leave the state as the steps would."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tempint.data.samplers import exact_segments
from tempint.models.base import Mode
from tempint.models.heuristics import (
    Popularity,
    Recency,
    RecentPopularity,
    latest_earlier_pairs,
)
from tests.streams import hand_made

HEURISTICS = {
    "popularity": lambda u, i: Popularity(u, i),
    "recent_popularity": lambda u, i: RecentPopularity(u, i, decay_seconds=50.0),
    "recency": lambda u, i: Recency(u, i, decay_seconds=50.0),
}


def _stream(seed: int, n: int = 300, users: int = 12, items: int = 15):
    """Few users and items, so pairs repeat, users come back within a run, and times tie."""
    g = torch.Generator().manual_seed(seed)
    user = torch.randint(users, (n,), generator=g)
    item = torch.randint(items, (n,), generator=g)
    t = torch.cumsum(torch.randint(0, 40, (n,), generator=g), 0).double()
    return hand_made(user, item, t), users, items


def _runs(stream, sizes):
    """Exact steps of the stream grouped into runs of the given numbers of steps."""
    plans = exact_segments(stream.user.numpy(), stream.item.numpy(), 0, len(stream), 64)
    steps = [stream.select(torch.from_numpy(p.steps[0])) for p in plans]
    runs, lo = [], 0
    for size in sizes:
        runs.append(steps[lo : lo + size])
        lo += size
    runs.append(steps[lo:])
    return [r for r in runs if r]


def _order(scores: torch.Tensor) -> torch.Tensor:
    """[K, I, I] sign of every pairwise score difference: all that a ranking reads."""
    return torch.sign(scores[:, :, None] - scores[:, None, :])


@pytest.mark.parametrize("name", sorted(HEURISTICS))
@pytest.mark.parametrize("seed", [0, 1])
def test_a_run_ranks_as_one_forward_per_step(name, seed):
    stream, users, items = _stream(seed)
    runs = _runs(stream, [1, 7, 40])  # the warm-up run of one step builds state
    stepwise, at_once = HEURISTICS[name](users, items), HEURISTICS[name](users, items)
    stepwise.eval(), at_once.eval()
    assert at_once.capabilities.replays_steps
    with torch.no_grad():
        for run in runs:
            expected = torch.cat([stepwise(step, Mode.SCORE).scores for step in run])
            got = at_once.replay_steps(run).scores
            assert got.shape == expected.shape == (sum(len(s) for s in run), items)
            assert torch.equal(_order(got), _order(expected))


def test_the_state_after_a_run_is_the_stepwise_state():
    stream, users, items = _stream(3)
    stepwise, at_once = Recency(users, items, 50.0), Recency(users, items, 50.0)
    (run,) = _runs(stream, [])
    with torch.no_grad():
        for step in run:
            stepwise(step, Mode.SCORE)
        at_once.replay_steps(run)
    for a, b in zip(
        stepwise.pairs.row_pairs(torch.arange(users)),
        at_once.pairs.row_pairs(torch.arange(users)),
        strict=True,
    ):
        assert torch.equal(torch.sort(a).values, torch.sort(b).values)
    torch.testing.assert_close(at_once.popularity.decayed, stepwise.popularity.decayed)


def test_recency_sees_its_users_earlier_rows_in_the_run_not_its_step():
    # step 0: user 0 takes item 1; step 1: user 0 takes item 2 while user 1 takes item 1
    steps = [hand_made([0], [1], [0.0]), hand_made([0, 1], [2, 1], [10.0, 10.0])]
    model = Recency(2, 4, decay_seconds=50.0).eval()
    scores = model.replay_steps(steps).scores
    assert scores[1, 1] > 2.0 and scores[1, 2] < 2.0  # item 1 seen by user 0 before step 1
    assert scores[2].max() <= 1.0  # user 1 had nothing yet
    # item 1 was popular before step 1 (user 0 at t = 0), nothing else was
    assert scores[2, 1] == 1.0 and scores[2, 2] == 0.0


def test_latest_earlier_pairs_keeps_only_the_latest_occurrence():
    user = torch.tensor([0, 1, 0, 0, 0])
    item = torch.tensor([5, 5, 6, 5, 7])
    row, source = latest_earlier_pairs(user, item, 10)
    pairs = sorted(zip(row.tolist(), source.tolist(), strict=True))
    # row 2 sees row 0; row 3 sees rows 0 and 2; row 4 sees row 2 (item 6) and row 3
    # (item 5: row 0 is no longer the latest)
    assert pairs == [(2, 0), (3, 0), (3, 2), (4, 2), (4, 3)]


def test_runs_cut_from_the_stream_cover_it_in_order():
    stream, _, _ = _stream(5)
    runs = _runs(stream, [3, 3])
    order = np.concatenate([s.index.numpy() for run in runs for s in run])
    assert order.tolist() == list(range(len(stream)))


def test_a_checkpoint_naming_the_decayed_counts_score_still_loads():
    """Recent popularity's counts were stored as `score` before they were `decayed`."""
    model = Recency(2, 3)
    model.popularity.decayed.copy_(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    state = model.state_dict()
    state["popularity.score"] = state.pop("popularity.decayed")
    loaded = Recency(2, 3)
    loaded.load_state_dict(state)
    assert loaded.popularity.decayed.tolist() == [1.0, 2.0, 3.0]
