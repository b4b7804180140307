"""Time-aware LSTM on tiny hand-made streams: gates, FM input, deferred update, training."""

import math

import torch

from tempint.data.batch import Interactions
from tempint.models.base import Mode
from tempint.models.tlstm import TimeAwareLSTM, fm_pool, time_aware_gates
from tests.streams import assert_reset_replays_the_same, hand_made, replay

NUM_USERS, NUM_ITEMS = 3, 5


def make_stream(events: list[tuple[int, int, float]]) -> Interactions:
    """Columns of (user, item, t) rows in time order; gaps in units of 10 seconds."""
    prev, gap, last_item, last_t = [], [], {}, {}
    for u, i, t in events:
        prev.append(last_item.get(u, -1))
        gap.append((t - last_t[u]) / 10 if u in last_t else 0.0)
        last_item[u], last_t[u] = i, t
    user, item, t = (list(c) for c in zip(*events))
    angle = 2 * math.pi * torch.tensor(t, dtype=torch.float64) / 40
    return hand_made(
        user,
        item,
        t,
        delta_user=torch.tensor(gap),
        prev_item=torch.tensor(prev),
        cyclic=torch.stack((angle.cos(), angle.sin(), angle.cos(), angle.sin()), 1).float(),
    )


# every user walks the items in a cycle, offset by its id: the next item is prev + 1
EVENTS = [(u, (u + step) % NUM_ITEMS, 3.0 * step + u) for step in range(10) for u in range(3)]


def model(**kwargs) -> TimeAwareLSTM:
    torch.manual_seed(0)
    return TimeAwareLSTM(NUM_USERS, NUM_ITEMS, dim=8, attention_size=3, **kwargs)


def test_time_aware_gates_follow_the_formulas():
    pre = torch.tensor([[0.0, math.log(3.0)]])  # sigmoid: 0.5, 0.75
    i, f = time_aware_gates(pre, pre, torch.tensor([math.log(2.0)]))  # e^{-Δt} = 1/2
    torch.testing.assert_close(i, torch.tensor([[0.25, 0.375]]))
    torch.testing.assert_close(f, torch.tensor([[0.25, 0.375]]))
    # no gap: nothing is written, the forget gate is the LSTM's
    i, f = time_aware_gates(pre, pre, torch.tensor([0.0]))
    assert torch.equal(i, torch.zeros(1, 2))
    torch.testing.assert_close(f, torch.tensor([[0.5, 0.75]]))
    # an endless gap: the input gate is the LSTM's, the old cell is forgotten
    i, f = time_aware_gates(pre, pre, torch.tensor([200.0]))
    torch.testing.assert_close(i, torch.tensor([[0.5, 0.75]]))
    assert torch.equal(f, torch.zeros(1, 2))


def test_gap_is_non_negative_and_increasing():
    m = model()
    z = torch.tensor([-50.0, -1.0, 0.0, 1.0, 50.0])
    gap = m.gap(z)
    assert bool((gap >= 0).all()) and bool((gap.diff() > 0).all())
    torch.testing.assert_close(gap[2], torch.tensor(math.log(2.0)))  # softplus(0)


def test_fm_pool_adds_first_order_terms_and_pairwise_products():
    fields = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [0.5, -1.0]]])
    # first order: [4.5, 5]; pairs: [3 + 0.5 + 1.5, 8 - 2 - 4] = [5, 2]
    torch.testing.assert_close(fm_pool(fields), torch.tensor([[9.5, 7.0]]))


def test_deferred_update_equals_the_eager_recurrence():
    """Scores of step n come from h after steps 0..n-1, as an eager LSTM would compute."""
    m = model().eval()
    events = [(0, 1, 0.0), (0, 3, 5.0), (0, 2, 30.0), (0, 3, 31.0), (0, 0, 90.0)]
    stream = make_stream(events)
    got = replay(m, stream, size=1)
    with torch.no_grad():
        h = c = torch.zeros(1, 8)
        ring_h, ring_x, expected = torch.zeros(1, 3, 8), torch.zeros(1, 3, 8), []
        for n in range(len(events)):
            expected.append(m.output(h))
            x = m.encode(
                stream.user[n : n + 1],
                stream.item[n : n + 1],
                stream.prev_item[n : n + 1],
                stream.cyclic[n : n + 1],
                torch.zeros(1, 0),
            )
            a = m.attend(x, ring_x, ring_h, torch.tensor([min(n, 3)]))
            h, c = m.cell(x, m.gap(stream.delta_user[n : n + 1]), h, c, a)
            ring_h = torch.cat((h[:, None], ring_h[:, :-1]), 1)
            ring_x = torch.cat((x[:, None], ring_x[:, :-1]), 1)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    assert int(m.ring_count[0]) == 3 and int(m.pending_item[0]) == 0


def test_memory_is_carried_and_detached():
    stream = make_stream(EVENTS)
    m = model().train()
    m(stream.select(torch.arange(3)), Mode.TRAIN)
    assert torch.equal(m.h, torch.zeros(NUM_USERS, 8))  # first interactions are pending
    assert m.pending_item.tolist() == [0, 1, 2]
    out = m(stream.select(torch.arange(3, 6)), Mode.TRAIN)
    assert m.h.grad_fn is not None and bool((m.h != 0).all())
    out.loss.backward()
    assert m.cell.input.weight.grad.abs().sum() > 0  # the folded-in step is in the loss
    carried = m.h.clone()
    m.detach_state()
    assert m.h.grad_fn is None and m.ring_h.grad_fn is None
    assert torch.equal(m.h, carried.detach())


def test_repeated_user_in_a_step_reads_once_and_keeps_its_last_row():
    m = model().eval()
    stream = make_stream([(0, 1, 0.0), (0, 2, 1.0), (1, 3, 2.0), (0, 4, 3.0)])
    with torch.no_grad():
        out = m(stream, Mode.SCORE)
    assert torch.equal(out.scores[0], out.scores[1]) and torch.equal(out.scores[0], out.scores[3])
    assert m.pending_item.tolist() == [4, 3, -1] and m.pending_prev.tolist() == [2, -1, -1]


def test_reset_and_replay_reproduce_the_scores():
    m = model().eval()
    assert_reset_replays_the_same(m, make_stream(EVENTS))
    buffers = {"h", "c", "ring_h", "ring_x", "ring_count", "pending_item", "pending_prev"}
    assert buffers <= set(m.state_dict())


def test_training_lowers_the_loss():
    stream = make_stream(EVENTS)
    m = model()
    optimiser = torch.optim.Adam(m.parameters(), lr=0.03)
    m.train()
    epochs = []
    for _ in range(15):
        m.reset_state()
        total = 0.0
        for lo in range(0, len(stream), 3):
            optimiser.zero_grad()
            loss = m(stream.select(torch.arange(lo, lo + 3)), Mode.TRAIN).loss
            loss.backward()
            optimiser.step()
            m.detach_state()
            total += float(loss.detach())
        epochs.append(total)
    assert epochs[-1] < 0.5 * epochs[0]
