"""DeePRed on tiny hand-made streams: histories, co-attention, buffer, training."""

import numpy as np
import pytest
import torch

from tempint.data.batch import Interactions
from tempint.data.features import partner_history
from tempint.errors import ConfigError
from tempint.models.base import Mode
from tempint.models.deepred import DeePRed
from tests.streams import assert_reset_replays_the_same, hand_made
from tests.streams import replay as replay_outputs

NUM_USERS, NUM_ITEMS = 3, 4


def make_stream(events: list[tuple[int, int, float]], k: int = 3) -> Interactions:
    """An Interactions stream with k-histories from (user, item, t) rows in time order."""
    user, item, t = (np.asarray(c) for c in zip(*events))
    user, item, t = user.astype(np.int64), item.astype(np.int64), t.astype(np.float64)
    uh, uh_dt = partner_history(user, item, t, k)
    ih, ih_dt = partner_history(item, user, t, k)
    return hand_made(
        torch.from_numpy(user),
        torch.from_numpy(item),
        torch.from_numpy(t),
        user_history=torch.from_numpy(uh),
        user_history_dt=torch.from_numpy(uh_dt).float() / 10,
        item_history=torch.from_numpy(ih),
        item_history_dt=torch.from_numpy(ih_dt).float() / 10,
    )


# every user walks the items in a cycle, offset by its id
EVENTS = [(u, (u + step) % NUM_ITEMS, 3.0 * step + u) for step in range(6) for u in range(3)]


def model(**kwargs) -> DeePRed:
    torch.manual_seed(0)
    return DeePRed(NUM_USERS, NUM_ITEMS, dim=8, dropout=0.0, **kwargs)


def replay(m: DeePRed, stream: Interactions, size: int = 3) -> list[torch.Tensor]:
    """Query/candidate distances of consecutive batches of `size`, state carried."""
    return replay_outputs(m, stream, size, read=distances)


def distances(out) -> torch.Tensor:
    """l2 distances [B, I] of each query to its candidate table ([I, d] or [B, I, d])."""
    candidates = out.candidates
    if candidates.dim() == 2:
        candidates = candidates.expand(out.query.shape[0], -1, -1)
    return torch.cdist(out.query[:, None], candidates).squeeze(1)


def test_encoder_reads_history_oldest_first_and_masks_padding():
    m = model().eval()
    partners = torch.tensor([[2, 0, -1], [1, -1, -1]])  # most recent first: 2 after 0
    gaps = torch.tensor([[0.5, 1.5, 0.0], [0.25, 0.0, 0.0]])
    hidden, valid = m.encode(partners, gaps, torch.tensor([0, 0]))
    assert valid.tolist() == [[True, True], [True, False]]  # cut to the longest history
    steps = torch.stack(
        (
            torch.cat((m.embedding.weight[0], torch.tensor([1.5]))),
            torch.cat((m.embedding.weight[2], torch.tensor([0.5]))),
        )
    )[None]
    expected, _ = m.encoder(steps)
    torch.testing.assert_close(hidden[:1], expected)
    alone, _ = m.encoder(torch.cat((m.embedding.weight[1], torch.tensor([0.25])))[None, None])
    torch.testing.assert_close(hidden[1, :1], alone[0])


def test_single_partner_attention_is_that_partner_state():
    m = model().eval()
    f = torch.randn(2, 3, 8)
    valid = torch.tensor([[True, False, False], [True, True, False]])
    u_t, i_t = m.co_attention(f[:1], valid[:1], f[1:], valid[1:])
    torch.testing.assert_close(u_t, f[0, :1])  # one valid position gets weight 1
    alone = m.self_attention(f, valid)
    torch.testing.assert_close(alone[0], f[0, 0])


def test_item_side_consumes_the_item_history():
    """i(t) stored for the item is encoded from its user partners, not the user's items."""
    m = model(learn_theta=False).eval()
    batch = make_stream([(0, 1, 0.0)], k=3)
    batch.user_history = torch.tensor([[3, 2, -1]])  # the user's items
    batch.user_history_dt = torch.tensor([[1.0, 2.0, 0.0]])
    batch.item_history = torch.tensor([[2, -1, -1]])  # the item's users: only user 2
    batch.item_history_dt = torch.tensor([[0.7, 0.0, 0.0]])
    with torch.no_grad():
        m(batch, Mode.SCORE)
        expected, _ = m.encoder(torch.cat((m.embedding.weight[2], torch.tensor([0.7])))[None, None])
        wrong, _ = m.encoder(
            torch.cat((m.embedding.weight[NUM_USERS + 3], torch.tensor([1.0])))[None, None]
        )
    torch.testing.assert_close(m.item_short[1], expected[0, 0])
    assert not torch.allclose(m.item_short[1], wrong[0, 0])
    assert m.item_index.tolist() == [-1, 0, -1, -1]


def test_query_and_candidates_without_history_are_long_term_embeddings():
    m = model().eval()
    stream = make_stream(EVENTS)
    with torch.no_grad():
        out = m(stream.select(torch.arange(3)), Mode.SCORE)  # every user's first interaction
    torch.testing.assert_close(out.query, m.embedding.weight[:3])
    torch.testing.assert_close(out.candidates, m.embedding.weight[NUM_USERS:])
    assert out.query.shape == (3, 8) and out.candidates.shape == (NUM_ITEMS, 8)


def test_buffer_keeps_the_latest_interaction_whatever_the_row_order():
    stream = make_stream(EVENTS)
    forward, backward = model().eval(), model().eval()
    with torch.no_grad():
        forward(stream, Mode.SCORE)
        backward(stream.select(torch.arange(len(stream) - 1, -1, -1)), Mode.SCORE)
    torch.testing.assert_close(forward.item_short, backward.item_short)
    torch.testing.assert_close(forward.user_short, backward.user_short)
    assert forward.user_index.tolist() == [15, 16, 17]
    last = {}
    for n, (_, i, _) in enumerate(EVENTS):
        last[i] = n
    assert forward.item_index.tolist() == [last[i] for i in range(NUM_ITEMS)]
    # an older interaction never overwrites a newer one
    with torch.no_grad():
        forward(stream.select(torch.arange(3)), Mode.SCORE)
    torch.testing.assert_close(forward.item_short, backward.item_short)


def test_reset_and_replay_reproduce_the_scores():
    m = model().eval()
    assert_reset_replays_the_same(m, make_stream(EVENTS), read=distances)
    assert {"item_short", "item_index", "user_short", "user_index"} <= set(m.state_dict())


def test_training_lowers_the_loss():
    stream = make_stream(EVENTS)
    m = model(pooling="mean")
    optimiser = torch.optim.Adam(m.parameters(), lr=0.02)
    m.train()
    losses = []
    for _ in range(40):
        m.reset_state()
        optimiser.zero_grad()
        loss = m(stream, Mode.TRAIN).loss
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert set(m(stream, Mode.TRAIN).losses) == {"objective", "orthogonality"}


def test_latest_query_is_the_users_short_term_embedding_from_its_last_interaction():
    """u(t) of the user's previous interaction, the vector trained to meet that item."""
    stream = make_stream(EVENTS)
    m = model().eval()
    with torch.no_grad():
        m(stream.select(torch.arange(6)), Mode.SCORE)  # each user's first two interactions
        u_second = m.user_short.clone()
        out = m(stream.select(torch.arange(6, 9)), Mode.SCORE)
    torch.testing.assert_close(out.query, u_second)
    assert not torch.allclose(out.query, m.embedding.weight[:3])  # not the long-term E(u)
    # the history query is the self-attention over the partners, another vector
    h = model(query="history").eval()
    with torch.no_grad():
        h(stream.select(torch.arange(6)), Mode.SCORE)
        assert not torch.allclose(h(stream.select(torch.arange(6, 9)), Mode.SCORE).query, out.query)


@pytest.mark.parametrize("query", ["latest", "history"])
def test_a_contiguous_step_with_repeats_scores_as_single_interactions_do(query):
    """Repeated users and items in a step: exact whatever the step."""
    stream = make_stream(EVENTS + [(0, 2, 20.0), (1, 2, 21.0), (2, 0, 22.0), (0, 2, 23.0)])
    one_by_one = torch.cat(replay(model(query=query).eval(), stream, size=1))
    m = model(query=query).eval()
    whole = torch.cat(replay(m, stream, size=len(stream)))
    torch.testing.assert_close(whole, one_by_one)
    shuffled = model(query=query).eval()
    with torch.no_grad():
        out = shuffled(stream.select(torch.arange(len(stream) - 1, -1, -1)), Mode.SCORE)
    torch.testing.assert_close(distances(out).flip(0), one_by_one)
    with torch.no_grad():
        out = model(query=query).eval()(stream, Mode.SCORE)
    assert out.candidates.shape == (len(stream), NUM_ITEMS, 8)
    # a step without repeats keeps the shared table
    with torch.no_grad():
        assert m(stream.select(torch.arange(3)), Mode.SCORE).candidates.shape == (NUM_ITEMS, 8)


def test_unknown_query_is_a_config_error():
    with pytest.raises(ConfigError, match="model.query"):
        model(query="future")


def test_reads_only_its_history_k_partners():
    """The data may hold more partners than the model reads (the larger k wins there)."""
    a = replay(model(history_k=2).eval(), make_stream(EVENTS, k=3))
    b = replay(model(history_k=2).eval(), make_stream(EVENTS, k=2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
