"""DyGLib's negative pairs on a hand-made stream: which pairs each strategy may draw,
the same draws for the same seed, and the probe interactions that score them."""

from __future__ import annotations

import numpy as np
import pytest

from tempint.eval.dyglib import dyglib_negatives

# users 0..2, items 0..2; pairs in time order:
#   t=0 (0,0)  t=1 (1,1)  t=2 (0,1)  | t=3 (2,2)  t=4 (0,0)  t=5 (1,2)
USERS = np.array([0, 1, 0, 2, 0, 1])
ITEMS = np.array([0, 1, 1, 2, 0, 2])
T = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
EVAL = range(3, 6)  # the last three rows, one batch of 3 or batches of 1


def _pairs(u, i):
    return list(zip(u.tolist(), i.tolist(), strict=True))


def test_random_keeps_the_user_and_draws_items_as_dyglib():
    u, i = dyglib_negatives(USERS, ITEMS, T, EVAL, 2.0, "random", seed=0, batch_size=3)
    assert u.tolist() == USERS[3:].tolist()
    # DyGLib: a source index drawn (and dropped), then unique_dst[randint(0, 3, size)]
    rng = np.random.RandomState(0)
    rng.randint(0, 3, 3)
    assert i.tolist() == rng.randint(0, 3, 3).tolist()


def test_historical_draws_pairs_seen_before_the_batch_and_not_in_it():
    # batch t in [3, 5]: seen by t=3: (0,0) (1,1) (0,1) (2,2); in the batch: (2,2) (0,0)
    # (1,2): the pool is (1,1), (0,1); 3 are needed: one random pair not in the batch,
    # then the two historical ones
    u, i = dyglib_negatives(USERS, ITEMS, T, EVAL, 2.0, "historical", seed=2, batch_size=3)
    pairs = _pairs(u, i)
    assert sorted(pairs[1:]) == [(0, 1), (1, 1)]
    assert pairs[0] not in {(2, 2), (0, 0), (1, 2)}


def test_inductive_leaves_out_pairs_of_the_previous_splits():
    # batches of one: at t=4 (row 4) the pool is pairs first seen by t=4, not observed
    # by t=2 (end of the previous split) and not at t=4: only (2,2)
    u, i = dyglib_negatives(USERS, ITEMS, T, EVAL, 2.0, "inductive", seed=2, batch_size=1)
    assert _pairs(u, i)[1] == (2, 2)
    # at t=3 nothing qualifies ((2,2) is in the batch): a random pair other than (2,2)
    assert _pairs(u, i)[0] != (2, 2)


@pytest.mark.parametrize("strategy", ["random", "historical", "inductive"])
def test_same_seed_same_negatives(strategy):
    a = dyglib_negatives(USERS, ITEMS, T, EVAL, 2.0, strategy, seed=2, batch_size=2)
    b = dyglib_negatives(USERS, ITEMS, T, EVAL, 2.0, strategy, seed=2, batch_size=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_unknown_strategy_is_named():
    with pytest.raises(ValueError, match="'hist'"):
        dyglib_negatives(USERS, ITEMS, T, EVAL, 2.0, "hist", seed=0)


def test_probe_has_the_columns_of_the_stream_before_the_row(tmp_path):
    from tempint.data.datamodule import InteractionDataModule

    dm = InteractionDataModule(
        synthetic={"num_users": 5, "num_items": 4, "num_interactions": 60, "repeat_prob": 0.5}
    )
    dm.setup()
    rows = np.array([30, 40])
    users, items = dm._users[rows], dm._items[rows]
    probe = dm.probe(users, items, rows)
    real = dm.stream.select(torch_rows(rows))
    # a probe of the interaction that did happen has its columns
    assert probe.prev_item.tolist() == real.prev_item.tolist()
    np.testing.assert_allclose(probe.delta_user.numpy(), real.delta_user.numpy(), rtol=1e-5)
    np.testing.assert_allclose(probe.delta_item.numpy(), real.delta_item.numpy(), rtol=1e-5)
    # another user at the same time: its own previous item
    other = (users + 1) % 5
    probe = dm.probe(other, items, rows)
    for k, r in enumerate(rows):
        earlier = np.flatnonzero(dm._users[:r] == other[k])
        expected = dm._items[earlier[-1]] if len(earlier) else -1
        assert probe.prev_item[k].item() == expected


def torch_rows(rows):
    import torch

    return torch.from_numpy(rows)


def test_evaluator_averages_ap_and_auroc_over_batches():
    import torch

    from tempint.eval.protocol import StreamEvaluator
    from tempint.models.base import Output
    from tests.streams import hand_made

    ev = StreamEvaluator(["native"], tags=())
    # positives score 0.9 and 0.2, their negatives 0.5 and 0.1
    ev.add_pair_negatives({"native": {"random": torch.tensor([0.5, 0.1])}})
    ev.update(
        Output(scores=torch.tensor([[0.9, 0.0], [0.0, 0.2]])), hand_made([0, 1], [0, 1], [0, 1])
    )
    # a second batch where the positive loses: AP 1/2, AUROC 0
    ev.add_pair_negatives({"native": {"random": torch.tensor([0.8])}})
    ev.update(Output(scores=torch.tensor([[0.3, 0.0]])), hand_made([0], [0], [2]))
    result = ev.compute()["native"]
    # batch 1: ranked 0.9+ 0.5- 0.2+ 0.1-: AUROC 3/4, AP (1 + 2/3) / 2
    assert result["auroc/random"] == pytest.approx((0.75 + 0.0) / 2)
    assert result["ap/random"] == pytest.approx((5 / 6 + 0.5) / 2)


def test_a_batch_step_reads_the_stream_before_the_batch_only():
    from tempint.data.datamodule import InteractionDataModule

    dm = InteractionDataModule(
        synthetic={"num_users": 3, "num_items": 4, "num_interactions": 80, "repeat_prob": 0.5}
    )
    dm.setup()
    (batch,) = dm.eval_batches("test", 1000, "exact")[:1]
    (step,) = batch.scored.steps
    lo = dm.split.val_end
    for k, u in enumerate(step.user.tolist()):
        earlier = np.flatnonzero(dm._users[:lo] == u)
        expected = dm._items[earlier[-1]] if len(earlier) else -1
        assert step.prev_item[k].item() == expected  # never an item of the batch itself
    # the stream's own column differs where a user repeats inside the batch
    assert not np.array_equal(step.prev_item.numpy(), dm.stream.prev_item[lo:].numpy())


def test_a_negative_pair_reads_the_stream_before_its_batch_like_the_positive():
    """Under `random` a negative keeps the positive's user: both must see the same previous
    item and gaps, those of the stream before the batch, or AP/AUROC compare unlike rows."""
    import torch

    from tempint.data.datamodule import InteractionDataModule
    from tempint.eval.protocol import (
        Protocol,
        StreamEvaluator,
        _score_pair_negatives,
        snapshot_state,
    )
    from tempint.models.heuristics import Popularity

    dm = InteractionDataModule(
        synthetic={"num_users": 3, "num_items": 4, "num_interactions": 80, "repeat_prob": 0.5}
    )
    dm.setup()
    (batch,) = dm.eval_batches("test", 1000, "exact")[:1]
    (step,) = batch.scored.steps
    seen = []

    def probe(users, items, position, before=None):
        made = dm.probe(users, items, position, before)
        seen.append(made)
        return made

    n = len(step)
    start = int(step.index.min())
    protocol = Protocol(
        pair_negatives={"random": (torch.from_numpy(dm._users[start:]), torch.zeros(n).long())},
        negatives_start=start,
        probe=probe,
    )
    evaluator = StreamEvaluator(["native"], protocol=protocol)
    model = Popularity(dm.num_users, dm.num_items).eval()
    _score_pair_negatives(model, batch.scored, evaluator, snapshot_state(model))
    (negative,) = seen
    assert negative.prev_item.tolist() == step.prev_item.tolist()
    assert torch.equal(negative.delta_user, step.delta_user)
