"""The repeat-aware mixture: two proper distributions, a gate in [0, 1], all items ranked."""

from __future__ import annotations

import functools

import pytest
import torch

from tempint.data.batch import Interactions
from tempint.models.repeat_aware import RepeatAware
from tempint.models.static import StaticEmbedding
from tests.streams import assert_reset_replays_the_same, hand_made, replay


def batch(users, items, t, prev):
    n = len(users)
    return Interactions(
        user=torch.tensor(users),
        item=torch.tensor(items),
        t=torch.tensor(t, dtype=torch.float64),
        state_label=torch.zeros(n, dtype=torch.long),
        delta_user=torch.zeros(n),
        delta_item=torch.zeros(n),
        prev_item=torch.tensor(prev),
        cyclic=torch.zeros(n, 4),
        index=torch.arange(n),
    )


@pytest.fixture
def model():
    torch.manual_seed(0)
    base = functools.partial(StaticEmbedding, dim=8)
    return RepeatAware(num_users=3, num_items=6, base=base)


def test_distributions_sum_to_one_and_the_mixture_ranks_every_item(model):
    model.eval()
    model(batch([0, 1], [2, 3], [0.0, 1.0], [-1, -1]))
    model(batch([0, 1], [4, 3], [5.0, 6.0], [2, 3]))
    probe = batch([0, 1, 2], [1, 1, 1], [10.0, 11.0, 12.0], [4, 3, -1])
    output = model.base(probe)
    gate, p_repeat, p_explore = model.distributions(probe, output)
    assert torch.allclose(p_explore.sum(1), torch.ones(3))
    # users 0 and 1 have a history: their repeat distribution sums to 1 over their own items
    assert torch.allclose(p_repeat[:2].sum(1), torch.ones(2))
    assert set(torch.nonzero(p_repeat[0]).flatten().tolist()) == {2, 4}
    assert set(torch.nonzero(p_repeat[1]).flatten().tolist()) == {3}
    # user 2 has none: no repeat mass and a closed gate
    assert p_repeat[2].sum() == 0 and gate[2] == 0
    assert ((gate >= 0) & (gate <= 1)).all()
    # explore covers only items the user has not had
    assert p_explore[0, 2] == 0 and p_explore[0, 4] == 0
    scores = model(probe).scores
    assert scores.shape == (3, 6) and torch.isfinite(scores).all()
    mixture = scores.exp().sum(1)
    assert torch.allclose(mixture, torch.ones(3), atol=1e-5)


def test_scores_are_taken_before_the_batch_is_observed(model):
    model.eval()
    model(batch([0], [2], [0.0], [-1]))
    first = model(batch([0], [5], [1.0], [2])).scores
    model.reset_state()
    model(batch([0], [2], [0.0], [-1]))
    other_target = model(batch([0], [1], [1.0], [2])).scores
    assert torch.equal(first, other_target)


def test_training_loss_is_the_mixture_nll_plus_the_base_losses(model):
    model.train()
    out = model(batch([0, 1], [2, 3], [0.0, 1.0], [-1, -1]))
    assert {"nll", "base/objective"} <= set(out.losses)
    out.loss.backward()
    assert model.base.user.weight.grad is not None


def test_trend_follows_what_is_popular_now_and_reset_clears_every_count(model):
    """The explore side's "popular now" counts decay with time; a reset replays the same."""
    model.eval()
    day = 86_400.0
    stream = hand_made([0, 1, 2, 0, 1], [5, 5, 5, 1, 1], [0.0, 1.0, 2.0, 3 * day, 3 * day + 1])
    replay(model, stream, size=5)
    # item 5 had three interactions three days ago, item 1 two just now: 1 is the trend
    trend = model.trend.current()
    assert trend[1] > trend[5] > 0 and trend[0] == 0
    model.reset_state()
    assert model.trend.current().sum() == 0
    assert len(model.pairs) == 0 and len(model.transitions) == 0
    assert_reset_replays_the_same(model, stream, size=2)


def test_pair_features_read_each_users_own_pairs_and_the_sparse_moves(model):
    """Hand-made history: user 0 had 2 (t=0), 4 (1 h), 2 (2 h); user 1 had 2, then 3.
    Probed at 3 h with previous item 2, user 0's pairs are exactly {2, 4}."""
    from tempint.models.repeat_aware import pair_features

    model.eval()
    hour = 3600.0
    model(batch([0, 1], [2, 2], [0.0, 100.0], [-1, -1]))
    model(batch([0, 1], [4, 3], [hour, 200.0], [2, 2]))
    model(batch([0], [2], [2 * hour], [4]))
    probe = batch([0, 2], [1, 1], [3 * hour, 3 * hour], [2, -1])
    history = model._history(probe)
    assert history.which.tolist() == [0, 0] and history.lengths.tolist() == [2, 0]
    by_item = dict(zip(history.item.tolist(), range(2)))
    assert set(by_item) == {2, 4}
    moves, out_degree = model._moves(probe)
    assert moves[0].tolist() == [0, 0, 0, 1, 1, 0]  # from item 2: to 3 (user 1), 4 (user 0)
    assert moves[1].sum() == 0 and out_degree.tolist() == [2.0, 1.0]
    affinity = torch.arange(12.0).view(2, 6)
    total = torch.tensor([3.0, 0.0])
    stay = torch.tensor([0.25, 0.5])
    trend = torch.arange(6.0) / 10
    feats = pair_features(
        history, probe.t, probe.prev_item, affinity, moves, out_degree, total, stay, trend
    )
    two, four = feats[by_item[2]], feats[by_item[4]]
    log2, log3 = torch.log1p(torch.tensor(1.0)), torch.log1p(torch.tensor(2.0))
    expected_two = [log2, 1 / (1 + log2), log3, 2 / 3, 1.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.25, 0.2]
    expected_four = [log3, 1 / (1 + log3), log2, 1 / 3, 0.0, 4.0, 0.5, 1.0, log2, 0.5, 0.0, 0.4]
    torch.testing.assert_close(two, torch.tensor(expected_two))
    torch.testing.assert_close(four, torch.tensor(expected_four))
