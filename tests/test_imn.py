"""Iterative Memory Network on tiny hand-made streams: attention, sequences, training."""

import pytest
import torch

from tempint.data.batch import Interactions
from tempint.errors import ConfigError
from tempint.models.base import Mode
from tempint.models.imn import IterativeMemoryNetwork, MultiWayAttention, multiway_features
from tests.streams import assert_reset_replays_the_same, hand_made, replay

NUM_USERS, NUM_ITEMS = 3, 6


def make_stream(events: list[tuple[int, int, float]]) -> Interactions:
    return hand_made(*(list(c) for c in zip(*events)))


# every user walks the items in a cycle, offset by twice its id
EVENTS = [(u, (2 * u + step) % NUM_ITEMS, 3.0 * step + u) for step in range(10) for u in range(3)]


def model(**kwargs) -> IterativeMemoryNetwork:
    torch.manual_seed(0)
    kwargs = {"dim": 8, "length": 4, "attention_hidden": 5, "num_negatives": 3} | kwargs
    return IterativeMemoryNetwork(NUM_USERS, NUM_ITEMS, **kwargs)


def test_multiway_features_have_the_documented_layout():
    e = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]])  # [B=1, L=3, d=2]
    v = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # [B=1, C=2, d]
    m = torch.tensor([[[0.5, 0.5], [1.0, 1.0]]])
    features = multiway_features(e, v, m)
    assert features.shape == (1, 2, 3, 8)  # [B, C, L, 4d]
    torch.testing.assert_close(
        features[0, 1, 1], torch.tensor([2.0, 3.0, 3.0, 2.0, 3.0, 4.0, 0.0, 8.0])
    )


def test_attention_without_the_features_equals_the_reference():
    torch.manual_seed(1)
    attention = MultiWayAttention(dim=4, hidden=6)
    e, v, m = torch.randn(2, 5, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    logits = attention(e, v, m)
    assert logits.shape == (2, 3, 5)
    torch.testing.assert_close(logits, attention.reference(e, v, m))


def test_sequence_register_is_most_recent_first_and_keeps_a_repeated_users_last_row():
    m = model(length=3).eval()
    replay(m, make_stream([(0, 1, 0.0), (1, 2, 1.0), (0, 3, 2.0), (0, 4, 5.0)]), size=1)
    assert m.seq_item.tolist() == [[4, 3, 1], [2, -1, -1], [-1, -1, -1]]
    assert m.seq_t[0].tolist() == [5.0, 2.0, 0.0]
    with torch.no_grad():
        m(make_stream([(1, 5, 7.0), (1, 0, 8.0)]), Mode.SCORE)  # one step, user 1 twice
    assert m.seq_item[1].tolist() == [0, 2, -1]


def test_time_and_position_encodings_of_the_sequence():
    m = model(length=3).eval()
    replay(m, make_stream([(0, 1, 0.0), (0, 3, 2.0)]), size=1)
    e, valid = m.sequence(torch.tensor([0]), torch.tensor([9.0], dtype=torch.float64))
    assert valid.tolist() == [[True, True, False]]
    # gaps 7 and 9 seconds: buckets floor(log2(8)) = 3 and floor(log2(10)) = 3
    w = m.item_embedding.weight
    torch.testing.assert_close(e[0, 0], w[3] + m.position.weight[0] + m.time.weight[3])
    torch.testing.assert_close(e[0, 1], w[1] + m.position.weight[1] + m.time.weight[3])
    assert torch.equal(e[0, 2], torch.zeros(8))


@pytest.mark.parametrize("eval_mode", ["factorised", "full"])
def test_evaluation_scores_every_item_and_training_returns_losses(eval_mode):
    stream = make_stream(EVENTS)
    m = model(eval_mode=eval_mode, full_weight=1.0).eval()
    scores = replay(m, stream)
    assert all(s.shape == (3, NUM_ITEMS) and bool(s.isfinite().all()) for s in scores)
    m.train()
    out = m(stream.select(torch.arange(3)), Mode.TRAIN)
    assert out.scores is None and set(out.losses) == {"factorised", "full"}


def test_full_evaluation_is_the_paper_score_of_each_candidate():
    stream = make_stream(EVENTS)
    m = model(eval_mode="full", eval_chunk_elements=1).eval()  # one item per chunk
    replay(m, stream.select(torch.arange(12)))
    batch = stream.select(torch.arange(12, 15))
    with torch.no_grad():
        e, valid = m.sequence(batch.user, batch.t)
        expected = m.full_scores(e, valid, torch.arange(NUM_ITEMS).expand(3, -1))
        got = m(batch, Mode.SCORE).scores
    torch.testing.assert_close(got, expected)


def test_reset_and_replay_reproduce_the_scores():
    m = model().eval()
    assert_reset_replays_the_same(m, make_stream(EVENTS))
    assert {"seq_item", "seq_t"} <= set(m.state_dict())


PAPER = {"factorised_weight": 0.0, "full_weight": 1.0, "eval_mode": "full"}


@pytest.mark.parametrize(
    "options", [{"loss": "softmax"}, {"loss": "bpr"}, PAPER], ids=["softmax", "bpr", "paper"]
)
def test_training_lowers_the_loss(options):
    stream = make_stream(EVENTS)
    m = model(**options)
    optimiser = torch.optim.Adam(m.parameters(), lr=0.03)
    m.train()
    epochs = []
    for _ in range(15):
        m.reset_state()
        torch.manual_seed(2)  # the same negatives every epoch
        total = 0.0
        for lo in range(0, len(stream), 3):
            optimiser.zero_grad()
            out = m(stream.select(torch.arange(lo, lo + 3)), Mode.TRAIN)
            out.loss.backward()
            optimiser.step()
            total += float(out.loss.detach())
        epochs.append(total)
    assert epochs[-1] < 0.5 * epochs[0]


def test_unknown_options_are_config_errors():
    with pytest.raises(ConfigError, match="model.loss"):
        model(loss="hinge")
    with pytest.raises(ConfigError, match="model.eval_mode"):
        model(eval_mode="exact")
    with pytest.raises(ConfigError, match="nothing to train"):
        model(factorised_weight=0.0)
