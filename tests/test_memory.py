import pytest
import torch

from tempint.models.memory import LocalMemory, MemoryState, last_occurrence


def _memory(num_users=4, num_items=3, dim=2):
    torch.manual_seed(0)
    return MemoryState(num_users, num_items, dim)


def _rows(*ids):
    return torch.tensor(ids, dtype=torch.long)


def test_unseen_rows_read_the_initial_vector_and_send_it_gradient():
    memory = _memory()
    read = memory.read_users(_rows(0, 2))
    assert torch.equal(read, memory.user_init.expand(2, -1))
    read.sum().backward()
    assert torch.equal(memory.user_init.grad, torch.full((2,), 2.0))


def test_written_rows_read_back_and_mark_seen():
    memory = _memory()
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    memory.write_items(_rows(2, 0), values)
    assert memory.item_seen.tolist() == [True, False, True]
    assert torch.equal(memory.read_items(_rows(0, 2)), values.flip(0))
    table = memory.item_table()
    assert torch.equal(table[1], memory.item_init.detach())
    assert torch.equal(memory.item_table(slice(1, 2)), table[:, 1:2])


def test_repeated_rows_in_one_write_keep_the_last_value():
    memory = _memory()
    memory.write_users(_rows(1, 1), torch.tensor([[1.0, 1.0], [2.0, 2.0]], requires_grad=True))
    assert memory.read_users(_rows(1)).tolist() == [[2.0, 2.0]]
    assert memory.user[1].tolist() == [2.0, 2.0]


def test_gradient_flows_through_a_chain_of_writes_until_detach():
    """Same gradients as differentiating an out-of-place table update step by step."""
    memory = _memory()
    weight = torch.tensor(2.0, requires_grad=True)
    table = torch.where(torch.zeros(4, 1, dtype=torch.bool), 0.0, memory.user_init)
    rows = [_rows(0, 1), _rows(1, 2), _rows(2, 0)]
    total, reference = 0.0, 0.0
    for step in rows:
        read = memory.read_users(step)
        memory.write_users(step, read * weight + 1)
        total = total + read.pow(2).sum()
        ref_read = table[step]
        table = table.index_copy(0, step, ref_read * weight + 1)
        reference = reference + ref_read.pow(2).sum()
    grads = torch.autograd.grad(total, (weight, memory.user_init))
    ref_grads = torch.autograd.grad(reference, (weight, memory.user_init))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)

    memory.detach_state()
    read = memory.read_users(_rows(0, 1, 2))
    assert torch.equal(read, table.detach()[:3])
    assert torch.autograd.grad(read.sum(), weight, allow_unused=True)[0] is None


def test_table_overlays_graph_of_fresh_rows():
    memory = _memory()
    values = torch.tensor([[1.0, 2.0]], requires_grad=True)
    memory.write_items(_rows(1), values * 3)
    memory.item_table().sum().backward()
    assert values.grad.tolist() == [[3.0, 3.0]]


def test_write_without_graph_replaces_a_fresh_row():
    memory = _memory()
    memory.write_users(_rows(0), torch.ones(1, 2, requires_grad=True))
    with torch.no_grad():
        memory.write_users(_rows(0), torch.full((1, 2), 5.0))
    read = memory.read_users(_rows(0))
    assert read.tolist() == [[5.0, 5.0]]


def test_init_override_replaces_the_vector_unseen_rows_read():
    memory = _memory()
    init = torch.tensor([7.0, 8.0])
    memory.write_items(_rows(0), torch.zeros(1, 2))
    assert memory.read_items(_rows(0, 1), init).tolist() == [[0.0, 0.0], [7.0, 8.0]]
    assert memory.item_table(slice(0, 1), init).tolist() == [[0.0], [7.0], [7.0]]


def test_reset_state_forgets_the_stream():
    memory = _memory()
    memory.write_users(_rows(0), torch.ones(1, 2))
    memory.reset_state()
    assert not memory.user_seen.any()
    assert torch.equal(memory.read_users(_rows(0)), memory.user_init.detach()[None])


def test_buffers_are_in_state_dict():
    keys = set(_memory().state_dict())
    assert {"user", "item", "user_seen", "item_seen", "user_init", "item_init"} <= keys


# ---- window-local memory --------------------------------------------------------------


def _two_windows(memory, warm):
    # window 0: rows 0, 1 (user 0, unused); window 1: rows 2, 3 (user 0, user 3)
    return memory.localize(
        local_users=_rows(0, -1, 0, 3),
        local_items=_rows(0, 1, 0, -1),
        row_window=_rows(0, 0, 1, 1),
        num_windows=2,
        warm=warm,
    )


def test_cold_windows_start_from_the_initial_vectors():
    memory = _memory()
    memory.write_users(_rows(0), torch.ones(1, 2))
    local = _two_windows(memory, warm=False)
    assert isinstance(local, LocalMemory)
    read = local.read_users(_rows(0, 2, 3))
    assert torch.equal(read, memory.user_init.expand(3, -1))
    read.sum().backward()
    assert memory.user_init.grad.tolist() == [3.0, 3.0]


def test_warm_windows_start_from_the_global_rows_detached():
    memory = _memory()
    memory.write_users(_rows(0), torch.ones(1, 2, requires_grad=True))
    local = _two_windows(memory, warm=True)
    read = local.read_users(_rows(0, 2, 3))
    assert read.tolist()[:2] == [[1.0, 1.0], [1.0, 1.0]]
    assert torch.equal(read[2], memory.user_init.detach())  # user 3 never seen
    read.sum().backward()
    assert memory.user_init.grad.tolist() == [1.0, 1.0]


def test_windows_do_not_see_each_other():
    memory = _memory()
    local = _two_windows(memory, warm=False)
    local.write_users(_rows(0), torch.ones(1, 2))
    assert torch.equal(local.read_users(_rows(2)), memory.user_init.detach()[None])
    assert not memory.user_seen.any()  # the global memory is untouched


@pytest.mark.parametrize("warm", [False, True])
def test_item_tables_overlay_only_the_window_own_rows(warm):
    memory = _memory()
    memory.write_items(_rows(2), torch.full((1, 2), 9.0))
    local = _two_windows(memory, warm=warm)
    local.write_items(_rows(2), torch.full((1, 2), 5.0))  # window 1's row of item 0
    local.read_items(_rows(1))  # read only: must not overlay
    tables = local.item_tables()
    init = memory.item_init.detach()
    base = memory.item_table().detach() if warm else init.expand(3, -1)
    assert tables.shape == (2, 3, 2)
    assert torch.equal(tables[0], base)
    assert tables[1, 0].tolist() == [5.0, 5.0]
    assert torch.equal(tables[1, 1:], base[1:])
    assert tables[1, 2].tolist() == ([9.0, 9.0] if warm else init.tolist())
    assert torch.equal(local.item_tables(slice(1, 2)), tables[..., 1:2])


def test_commit_keeps_the_latest_window_state():
    memory = _memory()
    local = _two_windows(memory, warm=False)
    local.write_users(_rows(0, 1, 2), torch.tensor([[1.0, 1.0], [7.0, 7.0], [2.0, 2.0]]))
    local.commit()
    assert memory.user[0].tolist() == [2.0, 2.0]  # window 1 wins over window 0
    assert memory.user_seen.tolist() == [True, False, False, False]  # row 1 is unused (-1)


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ],
    ),
]


def test_last_occurrence_points_every_repeat_at_the_last_position():
    rows = torch.tensor([4, 1, 4, 0, 1, 4])
    scratch = torch.full((6,), -1)
    assert last_occurrence(rows, 6, scratch).tolist() == [5, 4, 5, 3, 4, 5]
    assert scratch.tolist() == [-1] * 6  # left ready for the next write
    assert last_occurrence(torch.tensor([2, 3]), 6).tolist() == [0, 1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad", [False, True])
def test_repeated_rows_keep_the_last_write_by_position(device, grad):
    """Many repeats of one row in one write, read back in the table, the graph overlay
    and the candidate table: the last by stream position wins everywhere, and only it
    receives gradient (the earlier repeats were overwritten)."""
    memory = MemoryState(num_users=8, num_items=8, dim=3).to(device)
    rows = torch.tensor([5, 2, 5, 5, 2, 7, 5] * 8, device=device)
    values = torch.arange(rows.numel() * 3, dtype=torch.float32, device=device).view(-1, 3)
    values.requires_grad_(grad)
    memory.write_items(rows, values)
    last = {5: 55, 2: 53, 7: 54}  # the last position of each row
    for row, pos in last.items():
        assert rows[pos].item() == row and (rows[pos + 1 :] != row).all()
        expected = values[pos].detach()
        assert torch.equal(memory.item[row], expected)
        assert torch.equal(memory.read_items(torch.tensor([row], device=device))[0], expected)
        assert torch.equal(memory.item_table()[row], expected)
    if grad:
        memory.read_items(torch.tensor([5, 2, 7], device=device)).sum().backward()
        used = torch.zeros(rows.numel(), dtype=torch.bool, device=device)
        used[list(last.values())] = True
        assert (values.grad[used] == 1).all() and (values.grad[~used] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_window_memory_keeps_the_last_repeat(device):
    memory = MemoryState(num_users=4, num_items=4, dim=2).to(device)
    ids = torch.tensor([0, 1, 2, 3], device=device)
    local = memory.localize(ids, ids, torch.zeros(4, dtype=torch.long, device=device), 1, False)
    values = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], device=device)
    local.write_users(torch.tensor([3, 3, 3], device=device), values)
    local.commit()
    assert memory.user[3].tolist() == [3.0, 3.0]


def test_row_store_gradients_equal_a_differentiable_table_with_in_place_writes():
    """Reads and appends over several reservations (chunks), repeated ids in a write:
    values and gradients equal those of a plain table written in place."""
    from tempint.models.memory import RowStore

    gen = torch.Generator().manual_seed(0)
    num_ids, dim = 6, 3
    init = torch.randn(num_ids, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(dim, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    steps = [torch.randint(num_ids, (4,), generator=gen) for _ in range(9)]
    results = []
    for kind in ("store", "table"):
        if kind == "store":
            store = RowStore(num_ids, dim, torch.float64, "cpu")
            store.append(torch.arange(num_ids), init)
        else:
            table = init.clone()
        total = 0.0
        for k, ids in enumerate(steps):
            if kind == "store" and k % 3 == 0:
                store.reserve(len(ids))  # a new chunk: the buffer may grow
            rows = store.read(ids) if kind == "store" else table[ids]
            new = torch.tanh(rows @ weight)
            total = total + new.square().sum() * (k + 1)
            if kind == "store":
                store.append(ids, new)
            else:  # each id once, from its last position (duplicates would add gradient)
                last = last_occurrence(ids, num_ids)
                keep = last == torch.arange(len(ids))
                table = table.index_copy(0, ids[keep], new[keep])
        grads = torch.autograd.grad(total, (init, weight))
        final = store.latest(torch.arange(num_ids)) if kind == "store" else table.detach()
        results.append((total.detach(), grads, final))
    (l1, g1, f1), (l2, g2, f2) = results
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(f1, f2)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b)


def test_a_row_store_is_freed_with_its_graph():
    """The graph refers to its store weakly: once the owner drops both, the store's
    buffers are freed at once (a per-chunk store must not pile up over an epoch)."""
    import gc
    import weakref

    from tempint.models.memory import RowStore

    init = torch.randn(4, 3, requires_grad=True)
    store = RowStore(4, 3, torch.float32, "cpu")
    store.append(torch.arange(4), init)
    store.append(torch.tensor([1]), store.read(torch.tensor([0])) * 2)
    loss = store.read(torch.tensor([1, 2])).sum()
    loss.backward()
    assert torch.equal(init.grad[0], torch.full((3,), 2.0))
    ref = weakref.ref(store)
    gc.disable()  # freed by reference counting alone: no cycle waits for a collection
    try:
        del store, loss
        assert ref() is None
    finally:
        gc.enable()
