"""The field's heuristics on hand-made streams: EdgeBank as TGB defines it, the user's
decayed counts, popularity among unseen items; state linear in distinct pairs."""

from __future__ import annotations

import math

import pytest
import torch

from tempint.eval.protocol import restore_state, snapshot_state
from tempint.models.field_heuristics import (
    EdgeBank,
    PopularityUnseen,
    UserFrequency,
    merge_pairs,
    user_pairs,
)
from tests.streams import assert_reset_replays_the_same, hand_made


def _feed(model, users, items, t):
    with torch.no_grad():
        model(hand_made(users, items, t))
    model.eval()


def _scores(model, user, t, item=0):
    with torch.no_grad():
        return model(hand_made([user], [item], [t])).scores[0]


def test_pair_table_merges_and_slices_per_user():
    keys, values = merge_pairs(
        torch.tensor([1, 7]),
        torch.tensor([1.0, 2.0]),
        torch.tensor([7, 3, 7]),
        torch.tensor([5.0, 4.0, 6.0]),
        "amax",
    )
    assert keys.tolist() == [1, 3, 7] and values.tolist() == [1.0, 4.0, 6.0]
    rows, slots, items = user_pairs(keys, torch.tensor([1, 0, 2]), num_items=4)
    # keys 1 and 3 are user 0's items 1 and 3; key 7 is user 1's item 3; user 2 has none
    assert list(zip(rows.tolist(), items.tolist(), strict=True)) == [(0, 3), (1, 1), (1, 3)]


def test_edgebank_unlimited_scores_every_pair_seen():
    model = EdgeBank(2, 4, memory="unlimited")
    _feed(model, [0, 0, 1, 0], [1, 2, 3, 1], [0.0, 1.0, 2.0, 2.5])
    assert model.pair_key.numel() == 3  # one entry per distinct pair
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
            one(stream.select(torch.tensor([i])))
        many(stream)
    torch.testing.assert_close(one.pair_log_count, many.pair_log_count)
    torch.testing.assert_close(one.pair_ref, many.pair_ref)


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
        model(stream.select(torch.arange(2)))
    saved = snapshot_state(model)
    with torch.no_grad():
        model(stream.select(torch.arange(2, 6)))  # the pair table grows
    restore_state(model, saved)
    for name, value in model.named_buffers():
        assert torch.equal(value, saved[name])
