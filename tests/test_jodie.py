"""JODIE: the update reads pre-update states, the prediction reads the previous item, the
scores never see the batch's targets, and the fast paths equal the paper's formulas."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tempint.data.batch import Chunk, Interactions
from tempint.data.samplers import window_chunk
from tempint.errors import ConfigError
from tempint.models.base import Mode
from tempint.models.jodie import JODIE

USERS, ITEMS, DIM = 4, 5, 3


def stream(users, items, seed: int = 0) -> Interactions:
    """A tiny stream with its previous-item column computed by hand."""
    gen = torch.Generator().manual_seed(seed)
    n = len(users)
    last: dict[int, int] = {}
    prev = []
    for u, i in zip(users, items):
        prev.append(last.get(u, -1))
        last[u] = i
    return Interactions(
        user=torch.tensor(users),
        item=torch.tensor(items),
        t=torch.arange(n, dtype=torch.float64),
        state_label=torch.tensor([k % 2 for k in range(n)]),
        delta_user=torch.randn(n, generator=gen, dtype=torch.float64),
        delta_item=torch.randn(n, generator=gen, dtype=torch.float64),
        prev_item=torch.tensor(prev),
        cyclic=torch.zeros(n, 4, dtype=torch.float64),
        index=torch.arange(n),
    )


def model(**kw) -> JODIE:
    torch.manual_seed(0)
    return JODIE(USERS, ITEMS, dim=DIM, **kw).double()


def steps_of(s: Interactions, cuts) -> list[Interactions]:
    bounds = [0, *cuts, len(s)]
    return [s.select(torch.arange(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]


# users 0..3, items 0..4; t-batch-like steps with no node twice
STREAM = stream([0, 1, 2, 0, 1, 3, 0, 2, 1], [0, 1, 2, 1, 3, 1, 4, 0, 1])
CUTS = [3, 5, 7]


def paper_prediction(m: JODIE, user_state, prev_state, batch: Interactions):
    """Eq. 3-4 written as in the paper: one-hot identities and one dense W."""
    u_hat = user_state * (1 + m.projection_bias + m.projection_weight * batch.delta_user[:, None])
    prev_onehot = F.one_hot(batch.prev_item.remainder(ITEMS + 1), ITEMS + 1).double()  # -1 -> pad
    user_onehot = F.one_hot(batch.user, USERS).double()
    x = torch.cat((u_hat, prev_state, prev_onehot, user_onehot), dim=1)
    w = torch.cat((m.predict_weight, m.static_weight[USERS:], m.static_weight[:USERS]))
    return x @ w + m.predict_bias


def test_update_reads_pre_update_partner_states():
    m = model()
    m.eval()
    b = STREAM.select(torch.tensor([0, 1]))  # (0, 0) and (1, 1)
    with torch.no_grad():
        m.memory.write_users(torch.tensor([0, 1]), torch.randn(2, DIM, dtype=torch.float64))
        m.memory.write_items(torch.tensor([0, 1]), torch.randn(2, DIM, dtype=torch.float64))
        u, i = m.memory.read_users(b.user), m.memory.read_items(b.item)
        m(b, Mode.SCORE)
    w, a, bias = m.update.weight, m.update.time_weight, m.update.bias
    d = DIM
    for k in range(2):  # each side's RNN cell by hand, from the states before the step
        pre_u = w[:d, :d].T @ u[k] + w[d:, :d].T @ i[k] + a[0] * b.delta_user[k] + bias[:d]
        pre_i = w[:d, d:].T @ u[k] + w[d:, d:].T @ i[k] + a[1] * b.delta_item[k] + bias[d:]
        expect_u = F.normalize(torch.tanh(pre_u), dim=0)
        expect_i = F.normalize(torch.tanh(pre_i), dim=0)
        torch.testing.assert_close(m.memory.user[b.user[k]], expect_u)
        torch.testing.assert_close(m.memory.item[b.item[k]], expect_i)
        assert m.memory.user[b.user[k]].norm().item() == pytest.approx(1.0)


def test_a_side_never_sees_the_other_sides_delta():
    m = model()
    b = STREAM.select(torch.tensor([0]))
    other = copy.copy(b)
    other.delta_item = b.delta_item + 5.0
    with torch.no_grad():
        m(b, Mode.SCORE)
        first = m.memory.user[0].clone()
        m.reset_state()
        m(other, Mode.SCORE)
    torch.testing.assert_close(m.memory.user[0], first)


def test_prediction_reads_the_previous_item_not_the_target():
    m = model()
    m.eval()
    with torch.no_grad():
        for s in steps_of(STREAM, CUTS)[:2]:
            m(s, Mode.SCORE)
        b = STREAM.select(torch.tensor([3]))  # user 0 (previous item 0) -> item 1
        assert b.prev_item.item() == 0 and b.item.item() == 1
        before = m(b, Mode.SCORE).query
        m.reset_state()
        for s in steps_of(STREAM, CUTS)[:2]:
            m(s, Mode.SCORE)
        m.memory.write_items(torch.tensor([1]), torch.randn(1, DIM, dtype=torch.float64))
        assert torch.equal(m(b, Mode.SCORE).query, before)  # the target's state does not enter
        m.reset_state()
        for s in steps_of(STREAM, CUTS)[:2]:
            m(s, Mode.SCORE)
        m.memory.write_items(torch.tensor([0]), torch.randn(1, DIM, dtype=torch.float64))
        assert not torch.allclose(m(b, Mode.SCORE).query, before)  # the previous item's does


def test_prediction_and_native_scores_match_the_paper_form():
    m = model()
    m.eval()
    steps = steps_of(STREAM, CUTS)
    with torch.no_grad():
        for s in steps[:2]:
            m(s, Mode.SCORE)
        b = steps[2]
        user = m.memory.read_users(b.user)
        prev = torch.where(
            (b.prev_item >= 0)[:, None],
            m.memory.read_items(b.prev_item.clamp(min=0)),
            m.memory.item_init,
        )
        pred = paper_prediction(m, user, prev, b)
        full_items = torch.cat(
            (m.memory.item_table(), torch.eye(ITEMS, dtype=torch.float64)), dim=1
        )
        explicit = -torch.cdist(pred, full_items).square()
        out = m(b, Mode.SCORE)
    torch.testing.assert_close(out.query, pred[:, :DIM])
    torch.testing.assert_close(out.scores, explicit)
    torch.testing.assert_close(out.candidates, full_items[:, :DIM])


def test_loss_matches_the_published_formula_and_its_gradient():
    m = model(state_change_head=True, state_change_weight=3.0)
    m.sparse_gradients = False  # gradcheck takes gradients without accumulating them
    b = STREAM.select(torch.tensor([0, 1]))
    m.train()
    out = m(b, Mode.TRAIN)
    u0, i0 = m.memory.user_init.expand(2, DIM), m.memory.item_init.expand(2, DIM)
    pred = paper_prediction(m, u0, i0, b)  # no previous item: the padding item
    target = torch.cat((i0, F.one_hot(b.item, ITEMS).double()), dim=1)
    new_u, new_i = m.memory.read_users(b.user), m.memory.read_items(b.item)
    logits = m.state_head(new_u)
    w = torch.tensor([1.0, 3.0], dtype=torch.float64)[b.state_label]
    ce = -(w * logits.log_softmax(1).gather(1, b.state_label[:, None])[:, 0]).sum() / w.sum()
    torch.testing.assert_close(out.losses["prediction"], ((pred - target) ** 2).mean())
    torch.testing.assert_close(out.losses["smooth_user"], ((new_u - u0) ** 2).mean())
    torch.testing.assert_close(out.losses["smooth_item"], ((new_i - i0) ** 2).mean())
    torch.testing.assert_close(out.losses["state_change"], ce)

    # Gradients: the initial vectors also set the detached targets, which a finite
    # difference would see, so they are checked against the hand-written loss instead.
    hand = ((pred - target.detach()) ** 2).mean() + ((new_u - u0.detach()) ** 2).mean()
    hand = hand + ((new_i - i0.detach()) ** 2).mean() + ce
    inits = (m.memory.user_init, m.memory.item_init)
    expect = torch.autograd.grad(hand, inits, retain_graph=True)
    for got, want in zip(torch.autograd.grad(out.loss, inits), expect):
        torch.testing.assert_close(got, want)

    names = [n for n, _ in m.named_parameters() if not n.startswith("memory.")]
    params = tuple(m.get_parameter(n).detach().clone().requires_grad_() for n in names)

    def loss(*ps):
        m.reset_state()
        return torch.func.functional_call(m, dict(zip(names, ps)), (b, Mode.TRAIN)).loss

    assert torch.autograd.gradcheck(loss, params, fast_mode=True)


def test_scores_do_not_depend_on_the_batch_targets():
    m = model()
    m.eval()
    steps = steps_of(STREAM, CUTS)
    with torch.no_grad():
        for s in steps[:2]:
            m(s, Mode.SCORE)
        state = copy.deepcopy(m.state_dict())
        b = steps[2]
        scores = m(b, Mode.SCORE).scores
        m.load_state_dict(state)
        other = copy.copy(b)
        other.item = (b.item + 2) % ITEMS
        assert torch.equal(m(other, Mode.SCORE).scores, scores)


def test_training_builds_no_all_item_scores():
    m = model()
    m.train()
    out = m(STREAM.select(torch.tensor([0, 1])), Mode.TRAIN)
    assert out.scores is None and out.candidates is None and out.loss.requires_grad
    m.eval()
    with torch.no_grad():
        out = m(STREAM.select(torch.tensor([2])), Mode.SCORE)
    assert out.scores.shape == (1, ITEMS) and not out.losses


def test_reset_state_and_replay_reproduce_scores():
    m = model()
    m.eval()

    def replay():
        m.reset_state()
        with torch.no_grad():
            return torch.cat([m(s, Mode.SCORE).scores for s in steps_of(STREAM, CUTS)])

    first = replay()
    assert torch.equal(replay(), first)


def test_detach_state_cuts_the_graph():
    m = model()
    m.train()
    steps = steps_of(STREAM, CUTS)
    m(steps[0], Mode.TRAIN).loss.backward()
    with pytest.raises(RuntimeError):  # the memory still hangs on the freed graph
        m(steps[1], Mode.TRAIN).loss.backward()
    m.reset_state()
    m(steps[0], Mode.TRAIN).loss.backward()
    m.detach_state()
    m(steps[1], Mode.TRAIN).loss.backward()


def test_memory_buffers_are_in_the_state_dict():
    keys = model().state_dict().keys()
    assert {"memory.user", "memory.item", "memory.user_seen", "memory.item_seen"} <= set(keys)


def _planned_and_step_by_step(m: JODIE, chunks: list[Chunk]) -> list[tuple]:
    """(loss, gradients, user and item memory, per-step losses) of training `chunks` in one
    graph, first through the planned path (`run_chunk`), then step by step."""
    m.train()
    results = []
    for planned in (True, False):
        m.zero_grad(set_to_none=True)
        m.reset_state()
        total, step_losses = 0.0, []
        for chunk in chunks:
            if planned:
                losses = [out.loss for out in m.run_chunk(chunk, Mode.TRAIN)]
            else:
                losses = [m(step, Mode.TRAIN).loss for step in chunk.steps]
            step_losses.append(losses)
            total = total + sum(loss for loss in losses if loss is not None)
        total.backward()
        m.detach_state()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        memory = (m.memory.user.clone(), m.memory.item.clone())
        results.append((total.detach(), grads, memory, step_losses))
    return results


def _assert_paths_agree(results: list[tuple]) -> None:
    (l1, g1, m1, _), (l2, g2, m2, _) = results
    torch.testing.assert_close(l1, l2)
    assert g1.keys() == g2.keys()
    for name in g1:
        assert g1[name].layout == torch.strided
        torch.testing.assert_close(g1[name], g2[name])
    for a, b in zip(m1, m2, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"loss_reduction": "sum"},
        {"state_change_head": True, "state_change_weight": 3.0},
        {"static_embeddings": False},
        {"static_embeddings": False, "prediction_layer": False, "time_projection": False},
    ],
)
def test_chunk_path_equals_step_by_step(kw):
    """Losses gathered once per chunk equal the sum of per-t-batch losses, gradients too."""
    results = _planned_and_step_by_step(model(**kw), [Chunk(steps=steps_of(STREAM, CUTS))])
    (planned_losses,) = results[0][3]
    assert all(loss is None for loss in planned_losses[:-1])
    _assert_paths_agree(results)


def test_chunks_with_repeated_nodes_and_no_detach_equal_step_by_step():
    """Steps holding a node twice (the last write wins) and two chunks in one graph (as
    online evaluation keeps until its window ends): the planned path's losses, gradients
    and memory equal the step-by-step path's."""
    s = stream([0, 0, 1, 2, 2, 0, 3, 1, 1, 0], [1, 2, 1, 0, 3, 3, 4, 4, 0, 2])
    chunks = [
        Chunk(steps=steps_of(s.select(torch.arange(0, 5)), [2, 4])),
        Chunk(steps=steps_of(s.select(torch.arange(5, 10)), [1, 3])),
    ]
    _assert_paths_agree(_planned_and_step_by_step(model(static_embeddings=False), chunks))


def test_cold_window_equals_a_fresh_replay_of_its_interactions():
    m = model()
    m.eval()
    users, items = STREAM.user.numpy(), STREAM.item.numpy()
    length = 5
    starts = np.array([0, 4])
    plan = window_chunk(users, items, starts, length)
    chunk = Chunk(
        steps=[
            STREAM.select(torch.from_numpy(idx)).with_rows(
                torch.from_numpy(plan.user_rows[s]), torch.from_numpy(plan.item_rows[s])
            )
            for s, idx in enumerate(plan.steps)
        ],
        local_users=torch.from_numpy(plan.local_users),
        local_items=torch.from_numpy(plan.local_items),
        row_window=torch.from_numpy(plan.row_window),
    )
    with torch.no_grad():
        m.reset_state()
        outputs = m.run_chunk(chunk, Mode.SCORE)
        windowed = torch.stack([out.scores for out in outputs], dim=1)  # [B, L, ITEMS]
        for b, start in enumerate(starts):
            m.reset_state()
            fresh = torch.cat(
                [
                    m(STREAM.select(torch.tensor([start + k])), Mode.SCORE).scores
                    for k in range(length)
                ]
            )
            torch.testing.assert_close(windowed[b], fresh)


def test_static_embeddings_need_the_prediction_layer():
    with pytest.raises(ConfigError, match="prediction_layer"):
        JODIE(USERS, ITEMS, dim=DIM, prediction_layer=False)


def test_static_identities_are_row_lookups_equal_to_one_hot_times_weights():
    """The one-hot user and previous-item identities enter as rows of `static_weight`:
    exactly the prediction of the dense one-hot input times the same weights."""
    from tempint.models.jodie import _Query

    m = model(time_projection=False)
    gen = torch.Generator().manual_seed(1)
    user = torch.randn(len(STREAM), DIM, generator=gen, dtype=torch.float64)
    previous = torch.randn(len(STREAM), DIM, generator=gen, dtype=torch.float64)
    delta = torch.zeros(len(STREAM), 2, dtype=torch.float64)
    with torch.no_grad():
        got = m._predict(user, previous, _Query(STREAM.user, STREAM.prev_item, delta))
        rows = USERS + ITEMS + 1  # users, previous items, then "no previous item"
        onehot = F.one_hot(STREAM.user, rows) + F.one_hot(
            USERS + STREAM.prev_item.remainder(ITEMS + 1), rows
        )
        static = onehot.double() @ m.static_weight
        x = torch.cat((user, previous), dim=1)
        expected = torch.addmm(static + m.predict_bias, x, m.predict_weight)
    assert torch.equal(got, expected)


def test_one_hot_identities_for_a_huge_catalogue_are_refused_before_allocating():
    with pytest.raises(ConfigError, match="static_embeddings=false"):
        JODIE(10**6, 10**5, dim=DIM)
    assert JODIE(10**3, 10**3, dim=DIM, static_embeddings=False).out_dim == DIM
