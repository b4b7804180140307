"""The field's heuristics on hand-made streams: EdgeBank as TGB defines it, the user's
decayed counts, popularity among unseen items; state linear in distinct pairs; a run of
exact steps replayed at once scores as one forward per step."""

from __future__ import annotations

import math

import pytest
import torch

import tempint.models.components.pairs as pairs
from tempint.eval.protocol import restore_state, snapshot_state
from tempint.models.base import Mode
from tempint.models.field_heuristics import (
    DecayedPairCounts,
    EdgeBank,
    PopularityUnseen,
    UserFrequency,
    segmented_scan,
)
from tests.streams import assert_reset_replays_the_same, hand_made


def _feed(model, users, items, t):
    with torch.no_grad():
        model(hand_made(users, items, t), Mode.TRAIN)
    model.eval()


def _scores(model, user, t, item=0):
    with torch.no_grad():
        return model(hand_made([user], [item], [t]), Mode.SCORE).scores[0]


def _entries(table) -> tuple[list, torch.Tensor]:
    """A table's pairs and values, sorted by key, whatever level each is in."""
    keys = torch.cat([table.keys, table.recent_keys])
    order = torch.argsort(keys)
    return keys[order].tolist(), torch.cat([table.values, table.recent_values])[order]


def test_decayed_pair_counts_keep_log_sums_at_the_latest_time():
    table = DecayedPairCounts(num_cols=4, decay_seconds=2.0)
    # pair (0, 1) at t = 0, 2, 2; pair (1, 3) at t = 5; then (0, 1) again at t = 4
    table.observe(
        torch.tensor([0, 1, 0, 0]), torch.tensor([1, 3, 1, 1]), torch.tensor([0.0, 5, 2, 2])
    )
    table.observe(torch.tensor([0]), torch.tensor([1]), torch.tensor([4.0]))
    keys, values = _entries(table)
    assert keys == [1, 7]
    # (0, 1) at t = 4: e^-2 + 2 e^-1 + 1; (1, 3) at t = 5: 1
    assert values[:, 0].tolist() == [4.0, 5.0]
    assert values[0, 1].item() == pytest.approx(math.log(math.exp(-2) + 2 * math.exp(-1) + 1))
    assert values[1, 1].item() == 0.0
    assert table.find(torch.tensor([1]), torch.tensor([0])).tolist() == [[-math.inf] * 2]


def test_segmented_scan_restarts_at_each_segment():
    values = torch.tensor([[1.0], [3.0], [2.0], [5.0], [0.0], [4.0], [1.0]])
    first = torch.tensor([True, False, False, True, True, False, False])
    out = segmented_scan(values, first, lambda a, b: torch.maximum(a, b))
    assert out[:, 0].tolist() == [1.0, 3.0, 3.0, 5.0, 0.0, 4.0, 4.0]


def test_edgebank_unlimited_scores_every_pair_seen():
    model = EdgeBank(2, 4, memory="unlimited")
    _feed(model, [0, 0, 1, 0], [1, 2, 3, 1], [0.0, 1.0, 2.0, 2.5])
    assert len(model.pairs) == 3  # one entry per distinct pair
    assert _scores(model, 0, 3.0).tolist() == [0.0, 1.0, 1.0, 0.0]


def test_edgebank_time_window_is_tgbs():
    # training spans t = 0..100: window 0.15 x 100 = 15, so pairs at t >= 85 count
    model = EdgeBank(1, 4, memory="time_window", window_ratio=0.15)
    _feed(model, [0, 0, 0], [1, 2, 3], [0.0, 85.0, 100.0])
    assert _scores(model, 0, 101.0, item=0).tolist() == [0.0, 0.0, 1.0, 1.0]
    assert float(model.duration) == 15.0  # fixed from the training span, kept after
    # latest time 101: the window starts at 86, item 2 (t = 85) has left it
    assert _scores(model, 0, 120.0, item=1).tolist() == [1.0, 0.0, 0.0, 1.0]
    # latest time 120: the window starts at 105; items 0 (t = 101) and 3 (100) have left
    assert _scores(model, 0, 121.0).tolist() == [0.0, 1.0, 0.0, 0.0]


def test_user_frequency_ranks_by_decayed_count_then_popularity():
    day = 86_400.0
    model = UserFrequency(2, 5, decay_seconds=day)
    # user 0: item 1 twice two days ago, item 2 once now; user 1 made item 3 popular
    _feed(model, [0, 0, 1, 1, 1, 0], [1, 1, 3, 3, 3, 2], [0.0, 0.0, 1.0, 2.0, 3.0, 2 * day])
    s = _scores(model, 0, 2 * day)
    # item 2: count 1; item 1: 2 e^-2 = 0.27 -> 2 above 1; unseen: 3 (popular) then 0 and 4
    assert s[2] > s[1] > s[3] > s[0] == s[4]
    # a week later the old pair has decayed further, order kept, no underflow to a tie
    s = _scores(model, 0, 2000 * day)
    assert s[2] > s[1] > s[3]
    assert math.isfinite(float(s[1]))


def test_user_frequency_step_updates_commute():
    stream = hand_made([0, 0, 1, 0], [1, 2, 1, 1], [0.0, 5.0, 6.0, 9.0])
    one, many = UserFrequency(2, 3, 4.0), UserFrequency(2, 3, 4.0)
    with torch.no_grad():
        for i in range(4):
            one(stream.select(torch.tensor([i])), Mode.TRAIN)
        many(stream, Mode.TRAIN)
    assert _entries(one.pairs)[0] == _entries(many.pairs)[0]
    torch.testing.assert_close(_entries(one.pairs)[1], _entries(many.pairs)[1])


def test_popularity_unseen_puts_the_users_items_last():
    model = PopularityUnseen(2, 4)
    _feed(model, [0, 1, 1, 1], [0, 0, 2, 0], [0.0, 1.0, 2.0, 3.0])
    assert _scores(model, 0, 4.0).tolist() == [-1.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize(
    "model", [EdgeBank(3, 4, "time_window"), UserFrequency(3, 4), PopularityUnseen(3, 4)]
)
def test_reset_replays_and_grown_tables_restore(model):
    stream = hand_made([0, 1, 2, 0, 1, 0], [1, 2, 3, 0, 2, 1], [0.0, 1, 2, 3, 4, 5])
    model.eval()
    assert_reset_replays_the_same(model, stream, size=2)
    model.reset_state()
    with torch.no_grad():
        model(stream.select(torch.arange(2)), Mode.SCORE)
    saved = snapshot_state(model)
    with torch.no_grad():
        model(stream.select(torch.arange(2, 6)), Mode.SCORE)  # the pair table grows
    restore_state(model, saved)
    for name, value in model.named_buffers():
        assert torch.equal(value, saved[name])


# ---- a run of exact steps replayed at once ----------------------------------------------------


def _random_stream(n=160, users=6, items=7, seed=0):
    """Small catalogue, so pairs repeat often; times rise with ties."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.cumsum(torch.randint(0, 3, (n,), generator=gen), 0).double()
    user = torch.randint(0, users, (n,), generator=gen)
    item = torch.randint(0, items, (n,), generator=gen)
    return hand_made(user, item, t)


def _exact_steps(stream, start):
    """Consecutive steps from row `start` on, none with a user or an item twice."""
    steps, lo = [], start
    while lo < len(stream):
        hi, users, items = lo, set(), set()
        while hi < len(stream) and int(stream.user[hi]) not in users:
            if int(stream.item[hi]) in items:
                break
            users.add(int(stream.user[hi]))
            items.add(int(stream.item[hi]))
            hi += 1
        steps.append(stream.select(torch.arange(lo, hi)))
        lo = hi
    return steps


def _state(model):
    """Every buffer, the pair table's as sorted entries whatever level each is in."""
    out = {k: v for k, v in model.named_buffers() if not k.startswith("pairs.")}
    keys, values = _entries(model.pairs)
    return out | {"pair keys": torch.tensor(keys), "pair values": values}


MODELS = {
    "edgebank unlimited": lambda: EdgeBank(6, 7, memory="unlimited"),
    "edgebank time window": lambda: EdgeBank(6, 7, memory="time_window", window_ratio=0.1),
    "user frequency": lambda: UserFrequency(6, 7, decay_seconds=3.0),
    "popularity unseen": lambda: PopularityUnseen(6, 7),
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("min_recent", [2, 4096])
def test_replaying_runs_of_steps_scores_as_one_forward_per_step(name, min_recent, monkeypatch):
    monkeypatch.setattr(pairs, "MIN_RECENT", min_recent)  # small: levels merge mid-stream
    stream, train_end = _random_stream(), 50
    steps = _exact_steps(stream, train_end)
    assert max(len(s) for s in steps) > 1 and len(steps) > 40
    stepwise, runs = MODELS[name](), MODELS[name]()
    for model in (stepwise, runs):
        with torch.no_grad():
            model(stream.select(torch.arange(train_end)), Mode.TRAIN)  # training: state only
        model.eval()
    with torch.no_grad():
        want = torch.cat([stepwise(step, Mode.SCORE).scores for step in steps])
        sizes = torch.randint(1, 9, (len(steps),), generator=torch.Generator().manual_seed(1))
        got, lo = [], 0
        for size in sizes.tolist():
            if lo < len(steps):
                got.append(runs.replay_steps(steps[lo : lo + size]).scores)
                lo += size
        got = torch.cat(got)
    assert got.shape == (len(stream) - train_end, 7)
    if name == "user frequency":  # decayed sums, added in another order
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    else:
        assert torch.equal(got, want)
    # the same state after the last step, and the same scores for what follows
    before, after = _state(stepwise), _state(runs)
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=1e-12, atol=0, msg=key)
    probe = hand_made([0, 3, 5], [1, 2, 6], [float(stream.t[-1]) + 2] * 3)
    with torch.no_grad():
        torch.testing.assert_close(
            runs(probe, Mode.SCORE).scores, stepwise(probe, Mode.SCORE).scores, rtol=1e-12, atol=0
        )


def test_a_run_scores_each_step_from_the_steps_before_it():
    """User 0 has item 1 from training; the run adds (0, 2) in its first step and (0, 3)
    beside user 1 in its second: the third step sees items 1 and 2 of user 0, and its
    own step's (1, 3) does not count for item 3's popularity."""
    for model in (EdgeBank(2, 4), PopularityUnseen(2, 4)):
        _feed(model, [0], [1], [0.0])
        run = [
            hand_made([0], [2], [1.0]),
            hand_made([1, 0], [3, 0], [2.0, 2.0]),
            hand_made([0, 1], [3, 1], [3.0, 3.0]),
        ]
        with torch.no_grad():
            scores = model.replay_steps(run).scores
        if isinstance(model, EdgeBank):
            assert scores[0].tolist() == [0.0, 1.0, 0.0, 0.0]
            assert scores[3].tolist() == [1.0, 1.0, 1.0, 0.0]  # its own step's item 0 is known
            assert scores[4].tolist() == [0.0, 0.0, 0.0, 1.0]  # user 1's item 3 from step 2
        else:
            assert scores[0].tolist() == [0.0, -1.0, 0.0, 0.0]
            assert scores[1].tolist() == [0.0, 1.0, 1.0, 0.0]
            assert scores[3].tolist() == [-1.0, -1.0, -1.0, 1.0]
            assert scores[4].tolist() == [1.0, 1.0, 1.0, -1.0]


@pytest.mark.parametrize("name", list(MODELS))
def test_state_after_many_steps_is_the_state_after_one(name, monkeypatch):
    monkeypatch.setattr(pairs, "MIN_RECENT", 2)
    stream = _random_stream(n=120, seed=2)
    one, many = MODELS[name](), MODELS[name]()
    with torch.no_grad():
        one(stream, Mode.TRAIN)
        for lo in range(0, len(stream), 7):
            many(stream.select(torch.arange(lo, min(lo + 7, len(stream)))), Mode.TRAIN)
    want, got = _state(one), _state(many)
    assert len(want["pair keys"]) == len(set(zip(stream.user.tolist(), stream.item.tolist())))
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-12, atol=1e-12, msg=key)


@pytest.mark.parametrize("user, item", [([0, 0], [1, 2]), ([0, 1], [2, 2])])
def test_a_run_whose_step_is_not_exact_is_refused(user, item):
    model = UserFrequency(2, 4)
    _feed(model, [0], [1], [0.0])
    run = [hand_made([1], [0], [1.0]), hand_made(user, item, [2.0, 2.0])]
    with torch.no_grad(), pytest.raises(ValueError, match="twice in one step"):
        model.replay_steps(run)
