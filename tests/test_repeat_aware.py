"""The repeat-aware mixture: two proper distributions, a gate in [0, 1], all items ranked."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from tempint.data.batch import Interactions
from tempint.models.base import Mode
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
    model(batch([0, 1], [2, 3], [0.0, 1.0], [-1, -1]), Mode.SCORE)
    model(batch([0, 1], [4, 3], [5.0, 6.0], [2, 3]), Mode.SCORE)
    probe = batch([0, 1, 2], [1, 1, 1], [10.0, 11.0, 12.0], [4, 3, -1])
    output = model.base(probe, Mode.SCORE)
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
    scores = model(probe, Mode.SCORE).scores
    assert scores.shape == (3, 6) and torch.isfinite(scores).all()
    mixture = scores.exp().sum(1)
    assert torch.allclose(mixture, torch.ones(3), atol=1e-5)


def test_scores_are_taken_before_the_batch_is_observed(model):
    model.eval()
    model(batch([0], [2], [0.0], [-1]), Mode.SCORE)
    first = model(batch([0], [5], [1.0], [2]), Mode.SCORE).scores
    model.reset_state()
    model(batch([0], [2], [0.0], [-1]), Mode.SCORE)
    other_target = model(batch([0], [1], [1.0], [2]), Mode.SCORE).scores
    assert torch.equal(first, other_target)


def test_training_loss_is_the_mixture_nll_plus_the_base_losses(model):
    model.train()
    out = model(batch([0, 1], [2, 3], [0.0, 1.0], [-1, -1]), Mode.TRAIN)
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
    model(batch([0, 1], [2, 2], [0.0, 100.0], [-1, -1]), Mode.SCORE)
    model(batch([0, 1], [4, 3], [hour, 200.0], [2, 2]), Mode.SCORE)
    model(batch([0], [2], [2 * hour], [4]), Mode.SCORE)
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


# ---- steps scored together equal steps scored one at a time ---------------------------


def repeating_stream(num_users=5, num_items=7, length=90, seed=3):
    """Users who mostly go back to one of their last two items, with time ties, and the
    previous-item column of the stream; cut into exact steps (no user or item twice)."""
    gen = torch.Generator().manual_seed(seed)
    users = torch.randint(num_users, (length,), generator=gen)
    items, prev, last = [], [], {}
    for u in users.tolist():
        history = last.setdefault(u, [])
        roll = float(torch.rand((), generator=gen))
        if history and roll < 0.6:
            item = history[-1] if roll < 0.35 or len(history) < 2 else history[-2]
        else:
            item = int(torch.randint(num_items, (), generator=gen))
        prev.append(history[-1] if history else -1)
        history.append(item)
        items.append(item)
    t = torch.cumsum(torch.randint(0, 3, (length,), generator=gen).double() * 1800.0, 0)
    stream = hand_made(users, torch.tensor(items), t, prev_item=torch.tensor(prev))
    steps, lo, seen = [], 0, set()
    for n in range(length):
        u, i = int(users[n]), items[n]
        if ("u", u) in seen or ("i", i) in seen:
            steps.append(stream.select(torch.arange(lo, n)))
            lo, seen = n, set()
        seen |= {("u", u), ("i", i)}
    steps.append(stream.select(torch.arange(lo, length)))
    return steps


def limnet_base(num_users, num_items):
    from tempint.models.limnet import LiMNet

    return LiMNet(num_users, num_items, dim=8)


def static_base(num_users, num_items):
    return StaticEmbedding(num_users, num_items, dim=8)


@pytest.mark.parametrize("base", [limnet_base, static_base])
def test_a_chunk_scored_at_its_end_equals_its_steps_scored_one_by_one(base):
    """Training: the chunk's NLL (each step's mean, summed), its gradients and the counts
    it leaves equal those of every step scored alone, chunk after chunk."""
    from tempint.data.batch import Chunk

    torch.manual_seed(0)
    chunked = RepeatAware(num_users=5, num_items=7, base=base)
    stepwise = copy.deepcopy(chunked)
    chunked.train()
    stepwise.train()
    steps = repeating_stream()
    assert len(steps) > 20 and max(len(s) for s in steps) > 1
    for lo in range(0, len(steps), 8):
        chunk = Chunk(steps=steps[lo : lo + 8])
        outputs = list(chunked.run_chunk(chunk, Mode.TRAIN))
        assert all(o.scores is None for o in outputs)  # scored at the chunk's end
        assert "chunk/nll" in outputs[-1].losses
        chunk_loss = sum(o.loss for o in outputs)
        step_loss = sum(stepwise(step, Mode.TRAIN).loss for step in chunk.steps)
        torch.testing.assert_close(chunk_loss, step_loss, rtol=1e-6, atol=1e-6)
        chunk_loss.backward()
        step_loss.backward()
        for (name, a), (_, b) in zip(
            chunked.named_parameters(), stepwise.named_parameters(), strict=True
        ):
            if name == "explore_scorer.bias":  # a softmax ignores it: its gradient is noise
                continue
            if b.grad is None:
                assert a.grad is None or not a.grad.any(), name
                continue
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)
        for model in (chunked, stepwise):
            model.zero_grad(set_to_none=True)
            model.detach_state()
    for (name, a), (_, b) in zip(chunked.named_buffers(), stepwise.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("base", [limnet_base, static_base])
@pytest.mark.parametrize("replay_rows", [5, 512])
def test_replay_steps_equals_one_forward_per_step(base, replay_rows, monkeypatch):
    """Frozen evaluation: a run of steps (in groups of `replay_rows` rows) scores every
    interaction as the forward of its step does, and leaves the same state."""
    import tempint.models.repeat_aware as repeat_aware
    from tempint.data.batch import Chunk

    monkeypatch.setattr(repeat_aware, "REPLAY_ROWS", replay_rows)
    torch.manual_seed(1)
    model = RepeatAware(num_users=5, num_items=7, base=base)
    steps = repeating_stream(seed=5)
    model.train()
    replay(model, Interactions.concat(steps[:10]), size=1)  # some history before the run
    reference = copy.deepcopy(model)
    model.eval()
    reference.eval()
    run = Chunk(steps=steps[10:], run=True)
    with torch.no_grad():
        model.begin_chunk(run, Mode.SCORE)
        scores = model.replay_steps(run.steps).scores
        model.end_chunk(run, Mode.SCORE)
        expected = []
        for step in run.steps:
            (output,) = reference.run_chunk(Chunk(steps=[step]), Mode.SCORE)
            expected.append(output.scores)
    torch.testing.assert_close(scores, torch.cat(expected), rtol=1e-5, atol=1e-5)
    for (name, a), (_, b) in zip(model.named_buffers(), reference.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)


def test_earlier_pairs_lists_the_rows_of_earlier_steps_with_the_same_key():
    from tempint.models.components.steps import earlier_pairs

    key = torch.tensor([4, 2, 4, 4, 2, 9])
    step = torch.tensor([0, 0, 1, 1, 2, 2])
    later, earlier = earlier_pairs(key, step)
    pairs = sorted(zip(later.tolist(), earlier.tolist()))
    # rows 2 and 3 (key 4, step 1) see row 0 but not each other; row 4 sees row 1
    assert pairs == [(2, 0), (3, 0), (4, 1)]


@pytest.mark.parametrize("decay", [86_400.0, 60.0])
def test_decayed_counts_per_step_equal_the_heuristic_fed_step_by_step(decay):
    """Both the one-reference-time formula and the step-by-step fallback (a run longer
    than hundreds of decay times) give `RecentPopularity`'s counts before each step."""
    from tempint.models.components.steps import StepRun, decayed_counts_per_step
    from tempint.models.heuristics import RecentPopularity

    steps = repeating_stream(seed=7)
    heuristic = RecentPopularity(5, 7, decay)
    for step in steps[:5]:
        heuristic.observe(step)
    rows = StepRun.of(steps[5:])
    got = decayed_counts_per_step(heuristic.decayed, heuristic.ref_t, rows, 7, decay)
    for s, step in enumerate(steps[5:]):
        torch.testing.assert_close(got[s], heuristic.decayed, rtol=1e-9, atol=1e-12)
        heuristic.observe(step)


@pytest.mark.parametrize("block_rows", [1, 3, 128])
def test_versioned_cosine_reads_each_items_row_as_of_the_rows_step(block_rows):
    """Against a plain replay: row n's table is the start table with every row of an
    earlier step written over it, in order."""
    from tempint.models.components.steps import versioned_cosine

    gen = torch.Generator().manual_seed(2)
    step = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6, 6])
    item = torch.tensor([0, 1, 0, 2, 3, 1, 0, 3, 2, 3, 1, 0])
    query, table = torch.randn(12, 4, generator=gen), torch.randn(4, 4, generator=gen)
    written = torch.randn(10, 4, generator=gen)  # the last step's rows left out
    got = versioned_cosine(query, table, item, step, written, block_rows=block_rows)
    for n in range(12):
        current = table.clone()
        for m in range(10):
            if step[m] < step[n]:
                current[item[m]] = written[m]
        expected = torch.nn.functional.normalize(query[n], dim=0) @ (
            torch.nn.functional.normalize(current, dim=1).T
        )
        torch.testing.assert_close(got[n], expected)
