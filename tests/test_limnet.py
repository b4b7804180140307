import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tempint.data.batch import Chunk, Interactions
from tempint.errors import ConfigError
from tempint.models.base import Mode
from tempint.models.limnet import LiMNet


def _batch(users, items, delta_user=None, delta_item=None, cyclic=None):
    users = torch.tensor(users, dtype=torch.long)
    size = users.shape[0]
    gen = torch.Generator().manual_seed(size)
    return Interactions(
        user=users,
        item=torch.tensor(items, dtype=torch.long),
        t=torch.zeros(size, dtype=torch.float64),
        state_label=torch.zeros(size, dtype=torch.long),
        delta_user=torch.randn(size, generator=gen) if delta_user is None else delta_user,
        delta_item=torch.randn(size, generator=gen) if delta_item is None else delta_item,
        prev_item=torch.full((size,), -1),
        cyclic=torch.randn(size, 4, generator=gen) if cyclic is None else cyclic,
        index=torch.arange(size),
    )


def _model(**kwargs):
    torch.manual_seed(0)
    options = {"num_users": 3, "num_items": 4, "dim": 3, "normalize": False, "spread_scope": "step"}
    options.update(kwargs)
    return LiMNet(**options)


def _gru(cell, group):
    """The group's weights in a torch GRUCell (weights stored transposed for bmm)."""
    gru = torch.nn.GRUCell(cell.input_size, cell.hidden_size)
    with torch.no_grad():
        gru.weight_ih.copy_(cell.weight_ih[group].T)
        gru.weight_hh.copy_(cell.weight_hh[group].T)
        gru.bias_ih.copy_(cell.bias_ih[group, 0])
        gru.bias_hh.copy_(cell.bias_hh[group, 0])
    return gru


def test_one_step_is_two_gru_cells_on_pre_update_states():
    model = _model(time_features="day", time_delta=True)
    batch = _batch([1], [2])
    m_u, m_i = model.memory.user_init.detach(), model.memory.item_init.detach()
    f_u = torch.cat((batch.cyclic[0, 0:2], batch.delta_user))
    f_i = torch.cat((batch.cyclic[0, 0:2], batch.delta_item))
    cell = model.cells[0]
    with torch.no_grad():
        want_u = _gru(cell, 0)(torch.cat((m_i, f_u))[None], m_u[None])
        want_i = _gru(cell, 1)(torch.cat((m_u, f_i))[None], m_i[None])
        out = model(batch, Mode.SCORE)
    torch.testing.assert_close(out.query, m_u[None])  # prediction from the state before
    torch.testing.assert_close(model.memory.user[1:2], want_u)
    torch.testing.assert_close(model.memory.item[2:3], want_i)

    # second step: both sides again from the states before it, not u's fresh update
    with torch.no_grad():
        next_u = _gru(cell, 0)(torch.cat((want_i[0], f_u))[None], want_u)
        next_i = _gru(cell, 1)(torch.cat((want_u[0], f_i))[None], want_i)
        out = model(batch, Mode.SCORE)
    torch.testing.assert_close(out.query, want_u)
    torch.testing.assert_close(out.candidates[2:3], want_i)
    torch.testing.assert_close(model.memory.user[1:2], next_u)
    torch.testing.assert_close(model.memory.item[2:3], next_i)


def test_normalize_gives_unit_norms_everywhere():
    model = _model(normalize=True, dim=4, layers=2)
    out = model(_batch([0, 1], [0, 1]), Mode.ONLINE)
    out = model(_batch([0, 2], [1, 3]), Mode.ONLINE)
    ones = torch.ones(2)
    torch.testing.assert_close(out.query.norm(dim=-1), ones)  # user 2 reads the initial vector
    torch.testing.assert_close(out.candidates.norm(dim=-1), torch.ones(4))
    for layer in range(2):
        cols = slice(4 * layer, 4 * layer + 4)
        written = model.memory.user[[0, 1, 2]][:, cols]
        torch.testing.assert_close(written.norm(dim=-1), torch.ones(3))


def test_stacked_layer_reads_leaky_relu_of_the_new_states():
    model = _model(layers=2, time_features="none", time_delta=False, negative_slope=0.2)
    batch = _batch([0], [1])
    init_u, init_i = model.memory.user_init.detach(), model.memory.item_init.detach()
    with torch.no_grad():
        model(batch, Mode.SCORE)
        u1, i1 = model.memory.user[0, :3], model.memory.item[1, :3]
        lower = F.leaky_relu(torch.cat((u1, i1)), 0.2)
        assert (torch.cat((u1, i1)) < 0).any()  # the activation matters
        top = model.cells[1]
        want_u = _gru(top, 0)(torch.cat((init_i[3:], lower))[None], init_u[None, 3:])
        want_i = _gru(top, 1)(torch.cat((init_u[3:], lower))[None], init_i[None, 3:])
    torch.testing.assert_close(model.memory.user[0:1, 3:], want_u)
    torch.testing.assert_close(model.memory.item[1:2, 3:], want_i)


def test_lstm_keeps_a_cell_state():
    model = _model(cell="lstm", time_features="none", time_delta=False)
    assert model.memory.dim == 6  # h then c
    cell = model.cells[0]
    lstm = torch.nn.LSTMCell(3, 3)
    with torch.no_grad():
        lstm.weight_ih.copy_(cell.weight_ih[0].T)
        lstm.weight_hh.copy_(cell.weight_hh[0].T)
        lstm.bias_ih.copy_(cell.bias[0, 0])
        lstm.bias_hh.zero_()
        init_u, init_i = model.memory.user_init, model.memory.item_init
        h, c = lstm(init_i[None, :3], (init_u[None, :3], init_u[None, 3:]))
        model(_batch([2], [0]), Mode.SCORE)
        torch.testing.assert_close(model.memory.user[2:3], torch.cat((h, c), dim=-1))
        out = model(_batch([2], [0]), Mode.SCORE)
    torch.testing.assert_close(out.query, h)  # ranks with h, not c


def test_fastgrnn_follows_its_update_rule():
    model = _model(cell="fastgrnn", time_features="none", time_delta=False)
    cell = model.cells[0]
    m_u, m_i = model.memory.user_init.detach(), model.memory.item_init.detach()
    with torch.no_grad():
        model(_batch([0], [0]), Mode.SCORE)
        pre = m_i @ cell.weight_ih[0] + m_u @ cell.weight_hh[0]
        z = torch.sigmoid(pre + cell.bias_z[0, 0])
        h_tilde = torch.tanh(pre + cell.bias_h[0, 0])
        zeta, nu = torch.sigmoid(cell.zeta[0, 0, 0]), torch.sigmoid(cell.nu[0, 0, 0])
        want = (zeta * (1 - z) + nu) * h_tilde + z * m_u
    torch.testing.assert_close(model.memory.user[0], want)


@pytest.mark.parametrize("cell", ["gru", "lstm", "fastgrnn"])
@pytest.mark.parametrize("layers", [1, 3])
def test_every_cell_trains(cell, layers):
    model = _model(cell=cell, layers=layers, normalize=True)
    first = model(_batch([0, 1], [0, 1]), Mode.ONLINE)
    second = model(_batch([0, 2], [1, 0]), Mode.ONLINE)
    (first.loss + second.loss).backward()
    grads = [p.grad for p in model.cells.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert second.query.shape == (2, 3) and second.candidates.shape == (4, 3)


@pytest.mark.parametrize(
    ("time_features", "time_delta", "features"),
    [("none", False, 0), ("day", False, 2), ("week", True, 3), ("both", True, 5)],
)
def test_time_options_set_the_input_sizes(time_features, time_delta, features):
    model = _model(time_features=time_features, time_delta=time_delta, layers=2, dim=8)
    assert model.cells[0].input_size == 8 + features
    assert model.cells[1].input_size == 8 + features + 16
    model(_batch([0], [0]), Mode.TRAIN)  # the feature tensor matches the declared size


def test_time_options_pick_the_cyclic_columns():
    model = _model(time_features="week", time_delta=False)
    batch = _batch([0, 1], [1, 2])
    features = model._features(batch)
    assert torch.equal(features[0], batch.cyclic[:, 2:4])
    assert torch.equal(features[1], batch.cyclic[:, 2:4])
    delta = _model(time_features="none", time_delta=True)._features(batch)
    assert torch.equal(delta[:, :, 0], torch.stack((batch.delta_user, batch.delta_item)))


def _seeded(model, users, items):
    with torch.no_grad():
        model.memory.write_users(torch.tensor([0, 1]), torch.tensor(users))
        model.memory.write_items(torch.tensor([0, 1]), torch.tensor(items))


@pytest.mark.parametrize(("loss", "objective"), [("mse", 1.0), ("dot", 0.5)])
def test_loss_values_on_two_interactions(loss, objective):
    # u0=[1,0], u1=[0,2]; i0=[1,1], i1=[0,1]
    # mse: (||u0-i0||² + ||u1-i1||²)/2 = (1 + 1)/2;  dot: ((1-1)² + (2-1)²)/2 = 0.5
    # spread: users u0·u1 = 0 -> 0; items i0·i1 = 1 -> (1² + 1²)/2 ordered pairs = 1
    model = _model(dim=2, loss=loss, objective_weight=2.0, spread_weight=0.5)
    _seeded(model, [[1.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [0.0, 1.0]])
    out = model(_batch([0, 1], [0, 1]), Mode.TRAIN)
    assert out.losses["objective"].item() == pytest.approx(2.0 * objective)
    assert out.losses["spread"].item() == pytest.approx(0.5 * 1.0)
    assert out.loss.item() == pytest.approx(2.0 * objective + 0.5)


def test_spread_is_one_per_side_for_collapsed_unit_embeddings():
    model = _model(dim=2, normalize=True, objective_weight=0.0)
    out = model(_batch([0, 1, 2], [0, 1, 2]), Mode.TRAIN)  # everyone reads the unit initial vectors
    assert out.losses["spread"].item() == pytest.approx(2.0)
    with torch.no_grad():
        assert model(_batch([0], [0]), Mode.SCORE).losses == {}  # scoring asks for no losses


def test_losses_train_cells_only_through_earlier_steps_of_the_chunk():
    model = _model()
    first = model(_batch([0], [0]), Mode.TRAIN)
    assert torch.autograd.grad(first.loss, model.cells[0].weight_ih, allow_unused=True)[0] is None
    second = model(_batch([0], [0]), Mode.TRAIN)
    grad = torch.autograd.grad(second.loss, model.cells[0].weight_ih)[0]
    assert grad.abs().sum() > 0


def test_detach_cuts_the_graph():
    model = _model()
    model(_batch([0], [0]), Mode.TRAIN)
    model.detach_state()
    second = model(_batch([0], [0]), Mode.TRAIN)
    assert torch.autograd.grad(second.loss, model.cells[0].weight_ih, allow_unused=True)[0] is None


def _stream():
    return [_batch([0, 1], [0, 1]), _batch([1, 2], [0, 3]), _batch([0, 2], [3, 1])]


def test_reset_state_and_replay_reproduce_outputs():
    model = _model(normalize=True).eval()
    with torch.no_grad():
        first = [model(b, Mode.SCORE) for b in _stream()]
        model.reset_state()
        again = [model(b, Mode.SCORE) for b in _stream()]
    for a, b in zip(first, again):
        assert torch.equal(a.query, b.query)
        assert torch.equal(a.candidates, b.candidates)


def test_state_dict_carries_the_memory():
    model = _model(normalize=True)
    with torch.no_grad():
        for b in _stream()[:2]:
            model(b, Mode.SCORE)
    state = model.state_dict()
    assert {"memory.user", "memory.item", "memory.user_seen", "memory.item_seen"} <= set(state)
    copy = _model(normalize=True)
    copy.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(
            model(_stream()[2], Mode.SCORE).query, copy(_stream()[2], Mode.SCORE).query
        )


def test_unknown_options_are_config_errors():
    for bad in ({"cell": "rnn"}, {"time_features": "hour"}, {"loss": "bpr"}, {"layers": 0}):
        with pytest.raises(ConfigError):
            _model(**bad)


def test_yaml_instantiates_with_every_option():
    cfg = OmegaConf.load("conf/model/limnet.yaml")
    model = instantiate(cfg, num_users=5, num_items=7)
    assert isinstance(model, LiMNet) and model.dim == 32
    options = set(inspect.signature(LiMNet).parameters) - {"num_users", "num_items"}
    assert options == set(cfg) - {"_target_"}


# ---- window-local memory (sequence sampler) ------------------------------------------


def _window_chunk(windows):
    """Chunk of B windows of L=2 steps from (users, items, seed) per window.

    Local rows: window b owns rows [2b, 2b+2) on each side, one per distinct node (-1
    pads); features depend on the window's seed only, so a window gives the same inputs
    whatever its position in the chunk.
    """
    length = 2
    local_users, local_items, steps = [], [], []
    for users, items, _ in windows:
        for ids, local in ((users, local_users), (items, local_items)):
            distinct = list(dict.fromkeys(ids))
            local.extend(distinct + [-1] * (length - len(distinct)))

    def rows(side, s):
        return [
            b * length + list(dict.fromkeys(w[side])).index(w[side][s])
            for b, w in enumerate(windows)
        ]

    for s in range(length):
        seeds = torch.tensor([float(w[2]) for w in windows])
        cyclic = torch.stack((0.1 * s + seeds, 0.2 - seeds, 0.3 * seeds, seeds * s), dim=-1)
        step = _batch(
            [w[0][s] for w in windows],
            [w[1][s] for w in windows],
            delta_user=seeds + s,
            delta_item=seeds - s,
            cyclic=cyclic,
        )
        steps.append(step.with_rows(torch.tensor(rows(0, s)), torch.tensor(rows(1, s))))
    return Chunk(
        steps=steps,
        local_users=torch.tensor(local_users),
        local_items=torch.tensor(local_items),
        row_window=torch.arange(len(windows)).repeat_interleave(length),
    )


def _run(model, chunk):
    return list(model.run_chunk(chunk, Mode.SCORE))


def test_windows_of_one_chunk_do_not_see_each_other():
    windows = [([0, 0], [0, 1], 1), ([0, 1], [0, 0], 2)]  # user 0, item 0 in both windows
    model = _model(normalize=True).eval()
    with torch.no_grad():
        both = _run(model, _window_chunk(windows))
        alone = [_run(model, _window_chunk([w])) for w in windows]
    for window in range(2):
        for step, out in enumerate(both):
            want = alone[window][step]
            torch.testing.assert_close(out.query[window : window + 1], want.query)
            torch.testing.assert_close(out.candidates[window : window + 1], want.candidates)
    assert not torch.equal(both[1].query[0], both[1].query[1])


def test_item_tables_overlay_only_the_window_own_rows():
    windows = [([0, 0], [0, 1], 1), ([1, 2], [2, 2], 2)]
    model = _model(normalize=True).eval()
    chunk = _window_chunk(windows)
    with torch.no_grad():
        model.begin_chunk(chunk, Mode.SCORE)
        model(chunk.steps[0], Mode.SCORE)
        rows = model._local.item.clone()  # rows 0-1 window 0, rows 2-3 window 1
        out = model(chunk.steps[1], Mode.SCORE)
    init = F.normalize(model.memory.item_init.detach(), dim=0)
    tables = out.candidates  # [2 windows, 4 items, 3], before step 1
    assert tables.shape == (2, 4, 3)
    torch.testing.assert_close(tables[0, 0], rows[0])  # window 0's item 0
    torch.testing.assert_close(tables[1, 2], rows[2])  # window 1's item 2
    for window, items in ((0, [1, 2, 3]), (1, [0, 1, 3])):
        torch.testing.assert_close(tables[window, items], init.expand(3, -1))


def test_row_window_comes_from_the_chunk_else_from_the_row_layout():
    chunk = _window_chunk([([0, 1], [0, 1], 1), ([1, 2], [2, 3], 2)])
    model = _model().eval()
    model.begin_chunk(chunk, Mode.SCORE)
    assert model._local.row_window.tolist() == [0, 0, 1, 1]
    assert model._local.num_windows == 2
    chunk.row_window = None
    model.begin_chunk(chunk, Mode.SCORE)
    assert model._local.row_window.tolist() == [0, 0, 1, 1]


def test_warm_windows_start_from_the_global_memory_and_commit_back():
    model = _model(warm_start=True).eval()
    with torch.no_grad():
        model(_batch([0], [0]), Mode.SCORE)
        global_user = model.memory.user[0].clone()
        chunk = _window_chunk([([0, 0], [0, 1], 1)])
        model.begin_chunk(chunk, Mode.SCORE)
        out = model(chunk.steps[0], Mode.SCORE)
        torch.testing.assert_close(out.query[0], global_user)
        model(chunk.steps[1], Mode.SCORE)
        final = model._local.user[0].clone()
        model.end_chunk(chunk, Mode.SCORE)
    assert model._local is None
    torch.testing.assert_close(model.memory.user[0], final)
    assert model.memory.item_seen[:2].tolist() == [True, True]


def test_cold_windows_start_from_the_initial_vectors_and_train():
    model = _model(normalize=False).train()
    with torch.no_grad():
        model(_batch([0], [0]), Mode.SCORE)  # the global memory is not read by cold windows
    chunk = _window_chunk([([0, 0], [0, 1], 1), ([1, 2], [2, 2], 2)])
    model.begin_chunk(chunk, Mode.TRAIN)
    first = model(chunk.steps[0], Mode.TRAIN)
    second = model(chunk.steps[1], Mode.TRAIN)
    torch.testing.assert_close(first.query, model.memory.user_init.expand(2, -1))
    assert first.candidates is None  # no per-window tables in training
    (first.loss + second.loss).backward()
    assert model.cells[0].weight_ih.grad.abs().sum() > 0
    model.end_chunk(chunk, Mode.TRAIN)


def test_training_makes_the_user_rank_its_item_first():
    model = _model(dim=4, normalize=True, spread_weight=0.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(40):
        model.reset_state()
        loss = sum(model(_batch([0], [2]), Mode.TRAIN).loss for _ in range(3))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.reset_state()
    with torch.no_grad():
        model(_batch([0], [2]), Mode.SCORE)
        out = model(_batch([0], [2]), Mode.SCORE)
    scores = out.query @ out.candidates.T
    assert int(scores.argmax()) == 2
    assert math.isfinite(float(scores.max()))


def test_chunk_spread_pools_the_pairs_of_every_step():
    """With spread_scope=chunk the regulariser sees all steps' embeddings at once."""
    step_model = _model(dim=2, normalize=True, objective_weight=0.0)
    both = step_model(_batch([0, 1, 2], [0, 1, 2]), Mode.TRAIN).losses["spread"]
    model = _model(dim=2, normalize=True, objective_weight=0.0, spread_scope="chunk")
    assert "spread" not in model(_batch([0], [0]), Mode.TRAIN).losses
    assert "spread" not in model(_batch([1, 2], [1, 2]), Mode.TRAIN).losses
    pooled = model.chunk_losses()["spread"]
    # three unit initial vectors per side, all equal: the same value as one step of three
    assert pooled.item() == pytest.approx(both.item())
    assert model.chunk_losses() == {}
