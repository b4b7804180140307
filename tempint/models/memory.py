"""Per-node memory that evolves with the stream, not with gradient steps."""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

from tempint.data.batch import Chunk

__all__ = ["MemoryState", "LocalMemory", "RowStore", "last_occurrence"]


def last_occurrence(rows: Tensor, num_rows: int, scratch: Tensor | None = None) -> Tensor:
    """For each position p of `rows` [n], the last position q with rows[q] == rows[p].

    A step may hold a node twice (the chrono sampler allows it), and then the later
    interaction's state is the node's state: gathering `values[last_occurrence(rows)]`
    before a write gives every repeat of a row the same value, so the write's result no
    longer depends on which of the repeats an indexed copy applies last (unspecified on
    a GPU). `scratch` [num_rows] (long, all -1) is reused and left all -1; without it a
    fresh one is made. No host sync.
    """
    if scratch is None:
        scratch = torch.full((num_rows,), -1, dtype=torch.long, device=rows.device)
    position = torch.arange(rows.shape[0], device=rows.device)
    scratch.scatter_reduce_(0, rows, position, reduce="amax")
    last = scratch[rows]
    scratch.index_fill_(0, rows, -1)
    return last


class MemoryState(nn.Module):
    """User and item memory rows `[rows, dim]` with one learned initial vector per side.

    The rows are buffers, so `.to()`, `state_dict()` and checkpoints carry them. A row
    that has not been written since `reset_state` reads as the initial vector itself (not
    a copy of it), so every node's first read sends gradient to the initial vectors.

    The buffers always hold detached values, written in place. Rows written since the
    last `detach_state` keep their graph on the side and reads overlay them, so gradient
    flows from a read back through every earlier write of the same chunk, and backward
    costs O(written rows·dim): differentiating through in-place writes on the buffers
    instead would zero-fill a [rows, dim] gradient at every step.

    `init` (optional, on every read) replaces the vector unseen rows read: a model that
    keeps its embeddings on a manifold passes its projection of the initial vector, so
    gradient still reaches the parameter.
    """

    def __init__(self, num_users: int, num_items: int, dim: int, learn_init: bool = True):
        super().__init__()
        self.dim = int(dim)
        init = torch.randn(2, dim) / dim**0.5
        self.user_init = nn.Parameter(init[0], requires_grad=learn_init)
        self.item_init = nn.Parameter(init[1], requires_grad=learn_init)
        self.register_buffer("user", torch.zeros(num_users, dim))
        self.register_buffer("item", torch.zeros(num_items, dim))
        self.register_buffer("user_seen", torch.zeros(num_users, dtype=torch.bool))
        self.register_buffer("item_seen", torch.zeros(num_items, dtype=torch.bool))
        self._fresh_user = _Fresh()
        self._fresh_item = _Fresh()
        self.reset_state()

    @property
    def num_users(self) -> int:
        return int(self.user.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.item.shape[0])

    @torch.no_grad()
    def reset_state(self) -> None:
        self.user = self.user_init.detach().expand_as(self.user).clone()
        self.item = self.item_init.detach().expand_as(self.item).clone()
        self.user_seen.zero_()
        self.item_seen.zero_()
        self._fresh_user.clear()
        self._fresh_item.clear()

    def detach_state(self) -> None:
        self.user = self.user.detach()
        self.item = self.item.detach()
        self._fresh_user.clear()
        self._fresh_item.clear()

    def read_users(self, rows: Tensor, init: Tensor | None = None) -> Tensor:
        init = self.user_init if init is None else init
        base = torch.where(self.user_seen[rows, None], self.user[rows], init)
        return self._fresh_user.overlay(rows, base)

    def read_items(self, rows: Tensor, init: Tensor | None = None) -> Tensor:
        init = self.item_init if init is None else init
        base = torch.where(self.item_seen[rows, None], self.item[rows], init)
        return self._fresh_item.overlay(rows, base)

    def item_table(self, cols: slice | None = None, init: Tensor | None = None) -> Tensor:
        """All item rows `[num_items, dim]` as they stand (initial vector where unseen).

        `cols` picks a slice of the columns, so a model that keeps several vectors side by
        side in one row pays only for the one it ranks with.
        """
        return _table(self.item, self.item_seen, self.item_init, init, self._fresh_item, cols)

    @torch.no_grad()
    def fill_unseen(
        self, chunk: Chunk, user_init: Tensor | None = None, item_init: Tensor | None = None
    ) -> None:
        """Write the initial vectors into the unseen rows the chunk's steps use.

        The rows stay unseen; a no-grad replay of the chunk can then read them with a
        plain gather (`user[rows]`) instead of a masked select per step.
        """
        users = torch.cat([s.user_rows for s in chunk.steps])
        items = torch.cat([s.item_rows for s in chunk.steps])
        for table, seen, init, rows in (
            (self.user, self.user_seen, self.user_init if user_init is None else user_init, users),
            (self.item, self.item_seen, self.item_init if item_init is None else item_init, items),
        ):
            # every repeat of a row writes the same value; no mask select (a host sync)
            fresh = torch.where(seen[rows, None], table[rows], init.to(table.dtype))
            table.index_copy_(0, rows, fresh)

    def write_users(self, rows: Tensor, values: Tensor) -> None:
        values = self._fresh_user.write(rows, values, self.num_users)
        self.user.index_copy_(0, rows, values.detach().to(self.user.dtype))
        self.user_seen.index_fill_(0, rows, True)

    def write_items(self, rows: Tensor, values: Tensor) -> None:
        values = self._fresh_item.write(rows, values, self.num_items)
        self.item.index_copy_(0, rows, values.detach().to(self.item.dtype))
        self.item_seen.index_fill_(0, rows, True)

    def localize(
        self,
        local_users: Tensor,
        local_items: Tensor,
        row_window: Tensor,
        num_windows: int,
        warm: bool,
    ) -> LocalMemory:
        """Window-local memory over rows mapped to global ids (the sequence sampler's chunks).

        `local_users` / `local_items` [R] give each local row's global id (negative: unused
        row), `row_window` [R] its window. Cold (`warm=False`) rows start unseen, so they
        read as the learned initial vectors and send them gradient; warm rows start from
        this memory's rows as they stand now, detached (unseen ones still read the
        initial vector).
        """
        return LocalMemory(self, local_users, local_items, row_window, num_windows, warm)


class LocalMemory:
    """Memory of B windows processed in parallel, none seeing another's updates.

    Each window owns its own rows (a node active in two windows has two rows), so the
    windows of a chunk are independent streams. Speaks MemoryState's read/write API over
    local rows; reads and writes are O(rows·dim). A plain object, not a module: it lives
    for one chunk and must not enter `state_dict`.
    """

    def __init__(
        self,
        parent: MemoryState,
        local_users: Tensor,
        local_items: Tensor,
        row_window: Tensor,
        num_windows: int,
        warm: bool,
    ) -> None:
        self.parent = parent
        self.warm = bool(warm)
        self.num_windows = int(num_windows)
        self.row_window = row_window.long()
        self.local_users = local_users.long()
        self.local_items = local_items.long()
        self.user, self.user_seen = self._start(self.local_users, parent.user, parent.user_seen)
        self.item, self.item_seen = self._start(self.local_items, parent.item, parent.item_seen)
        self.user_written = torch.zeros_like(self.user_seen)
        self.item_written = torch.zeros_like(self.item_seen)
        self._fresh_user = _Fresh()
        self._fresh_item = _Fresh()

    def _start(self, ids: Tensor, table: Tensor, seen: Tensor) -> tuple[Tensor, Tensor]:
        valid = ids >= 0
        if not self.warm:
            rows = torch.zeros(ids.shape[0], table.shape[1], dtype=table.dtype, device=table.device)
            return rows, torch.zeros_like(valid)
        safe = ids.clamp(min=0)
        return table.detach()[safe], seen[safe] & valid

    @property
    def dim(self) -> int:
        return self.parent.dim

    @property
    def num_items(self) -> int:
        return self.parent.num_items

    def detach_state(self) -> None:
        self._fresh_user.clear()
        self._fresh_item.clear()

    def read_users(self, rows: Tensor, init: Tensor | None = None) -> Tensor:
        init = self.parent.user_init if init is None else init
        base = torch.where(self.user_seen[rows, None], self.user[rows], init)
        return self._fresh_user.overlay(rows, base)

    def read_items(self, rows: Tensor, init: Tensor | None = None) -> Tensor:
        init = self.parent.item_init if init is None else init
        base = torch.where(self.item_seen[rows, None], self.item[rows], init)
        return self._fresh_item.overlay(rows, base)

    def write_users(self, rows: Tensor, values: Tensor) -> None:
        values = self._fresh_user.write(rows, values, self.user.shape[0])
        self.user.index_copy_(0, rows, values.detach().to(self.user.dtype))
        self.user_seen.index_fill_(0, rows, True)
        self.user_written.index_fill_(0, rows, True)

    def write_items(self, rows: Tensor, values: Tensor) -> None:
        values = self._fresh_item.write(rows, values, self.item.shape[0])
        self.item.index_copy_(0, rows, values.detach().to(self.item.dtype))
        self.item_seen.index_fill_(0, rows, True)
        self.item_written.index_fill_(0, rows, True)

    def item_tables(self, cols: slice | None = None, init: Tensor | None = None) -> Tensor:
        """Each window's candidate table `[num_windows, num_items, dim]`.

        The base table (the global one if warm, else the initial vector for every item)
        overlaid with the window's own written rows; a row only read already equals the
        base. O(num_windows·num_items·dim): meant for evaluation.
        """
        cols = slice(None) if cols is None else cols
        init = self.parent.item_init if init is None else init
        if self.warm:
            parent = self.parent
            base = torch.where(parent.item_seen[:, None], parent.item[:, cols], init[cols])
        else:
            base = init[cols].expand(self.num_items, -1)
        tables = base.expand(self.num_windows, -1, -1).clone()
        rows = self.item_written.nonzero().squeeze(1)
        if rows.numel() > 0:
            index = (self.row_window[rows], self.local_items[rows])
            tables = tables.index_put(index, self.read_items(rows, init)[:, cols])
        return tables

    def item_table(self, cols: slice | None = None, init: Tensor | None = None) -> Tensor:
        """Same as `item_tables`: a window-local memory has one table per window."""
        return self.item_tables(cols, init)

    @torch.no_grad()
    def commit(self) -> None:
        """Write the written rows back to the global memory, detached.

        A node written in several windows keeps its state from the latest one (rows are
        ordered by window, windows by time), so the global memory follows the stream and
        a later warm window starts from it.
        """
        parent = self.parent
        sides = (
            (self.local_users, self.user, self.user_written, parent.user_seen, parent.write_users),
            (self.local_items, self.item, self.item_written, parent.item_seen, parent.write_items),
        )
        for ids, values, written, seen, write in sides:
            rows = (written & (ids >= 0)).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            targets = ids[rows]
            latest = torch.full_like(seen, -1, dtype=rows.dtype)
            latest = latest.scatter_reduce(0, targets, rows, reduce="amax")
            keep = latest[targets] == rows
            write(targets[keep], values[rows[keep]])


class _Fresh:
    """Rows written since the last detach, with their graph: `values` [K, dim] and the
    position `slot` [rows] of each row's latest write (-1: none since the detach).

    Also settles repeated rows in one write: the last by position wins, on any device.
    """

    def __init__(self) -> None:
        self.values: Tensor | None = None
        self.slot: Tensor | None = None
        self._scratch: Tensor | None = None

    def _last(self, rows: Tensor, num_rows: int) -> Tensor:
        scratch = self._scratch
        if scratch is None or scratch.shape[0] != num_rows or scratch.device != rows.device:
            scratch = self._scratch = torch.full(
                (num_rows,), -1, dtype=torch.long, device=rows.device
            )
        return last_occurrence(rows, num_rows, scratch)

    def clear(self) -> None:
        if self.values is not None:
            self.slot.fill_(-1)
            self.values = None

    def write(self, rows: Tensor, values: Tensor, num_rows: int) -> Tensor:
        """Record a write; returns the values the table must store for `rows`, the
        last repeat's value at every repeat of a row (see `last_occurrence`)."""
        last = self._last(rows, num_rows)
        if not values.requires_grad:  # nothing to differentiate: the table's value is it
            if self.values is not None:
                self.slot.index_fill_(0, rows, -1)
            return values[last]
        if self.slot is None or self.slot.shape[0] != num_rows or self.slot.device != rows.device:
            self.slot = torch.full((num_rows,), -1, dtype=torch.long, device=rows.device)
        start = 0 if self.values is None else self.values.shape[0]
        self.values = values if self.values is None else torch.cat((self.values, values))
        self.slot.index_copy_(0, rows, last + start)  # every repeat writes the same slot
        return values[last]

    def overlay(self, rows: Tensor | None, base: Tensor, cols: slice | None = None) -> Tensor:
        """`base` (rows read from the table) with rows written since the detach replaced
        by their graph-carrying values; `rows=None` means every row, in order."""
        if self.values is None or not torch.is_grad_enabled():
            return base
        pos = self.slot if rows is None else self.slot[rows]
        values = self.values if cols is None else self.values[:, cols]
        return torch.where((pos >= 0)[:, None], values[pos.clamp(min=0)], base)


def _table(
    table: Tensor,
    seen: Tensor,
    own_init: Tensor,
    init: Tensor | None,
    fresh: _Fresh,
    cols: slice | None,
) -> Tensor:
    init = own_init if init is None else init
    if cols is not None:
        table, init = table[:, cols], init[cols]
    return fresh.overlay(None, torch.where(seen[:, None], table, init), cols)


class RowStore:
    """Node rows that thousands of small steps read and rewrite inside one autograd graph,
    at a backward cost per step of the rows the step touches.

    Rows are only ever appended: a node's row is the latest one appended for it
    (`slot[id]`), and a step reads the slots as they stand, so the values live in one
    plain buffer and no step copies the table. Writing rows in place into a
    differentiable table instead makes every step's backward build a gradient of the
    whole table: on a t-batch chunk of a dense stream (thousands of t-batches over
    thousands of rows) that was nine tenths of the epoch.

    Gradients: a read adds its rows' gradient into `grad`; the append that produced
    those rows hands `grad` of its rows to its values once every later read has run.
    The order is guaranteed by a chain of empty `token` tensors: every read depends on
    the token of the latest append, and every append on the one before it.
    """

    def __init__(self, num_ids: int, dim: int, dtype: torch.dtype, device) -> None:
        self.values = torch.empty(0, dim, dtype=dtype, device=device)
        self.grad = torch.empty(0, dim, dtype=dtype, device=device)
        self.slot = torch.full((num_ids,), -1, dtype=torch.long, device=device)
        self.size = 0
        self.token = torch.zeros(0, dtype=dtype, device=device, requires_grad=True)
        self._scratch = torch.full((num_ids,), -1, dtype=torch.long, device=device)

    def reserve(self, rows: int) -> None:
        """Room for `rows` more rows; a buffer that must grow at least doubles, so steps
        appending without a reservation copy it O(log) times, not at every step."""
        capacity = self.values.shape[0]
        if capacity - self.size >= rows:
            return
        grown = max(self.size + rows, 2 * capacity)
        extra = self.values.new_zeros(grown - capacity, self.values.shape[1])
        self.values = torch.cat((self.values, extra))
        self.grad = torch.cat((self.grad, torch.zeros_like(extra)))

    def append(self, ids: Tensor, values: Tensor) -> None:
        """Rows `values` [n, d] for `ids` [n]; a repeated id keeps its last row."""
        start = self.append_rows(values)
        last = last_occurrence(ids, self.slot.shape[0], self._scratch)
        self.slot.index_copy_(0, ids, start + last)

    def append_rows(self, values: Tensor) -> int:
        """Append rows without pointing any id at them (a caller that planned its slots
        points them itself); returns the first row's slot."""
        n = values.shape[0]
        self.reserve(n)
        start = self.size
        self.token = _Append.apply(self, start, values, self.token)
        self.size += n
        return start

    def read(self, ids: Tensor) -> Tensor:
        """The latest rows of `ids` (every id must have been appended)."""
        return self.read_slots(self.slot[ids])

    def read_slots(self, slots: Tensor) -> Tensor:
        """The rows at `slots`, with their graph."""
        return _Read.apply(self, slots, self.token)

    def latest(self, ids: Tensor) -> Tensor:
        """The latest rows of `ids`, detached."""
        return self.values[self.slot[ids]]


def _alive(ref) -> RowStore:
    store = ref()
    if store is None:
        raise RuntimeError("backward through a RowStore that was already released")
    return store


# The graph holds its store weakly: the store holds the graph (its token), and a strong
# reference back would make a cycle through autograd nodes that is never collected.
class _Append(torch.autograd.Function):
    @staticmethod
    def forward(ctx, store: RowStore, start: int, values: Tensor, token: Tensor) -> Tensor:
        ctx.store, ctx.start, ctx.rows = weakref.ref(store), start, values.shape[0]
        ctx.dtype = values.dtype
        store.values.narrow(0, start, values.shape[0]).copy_(values.detach())
        return token.new_zeros(0)

    @staticmethod
    def backward(ctx, grad_token: Tensor):
        grad = _alive(ctx.store).grad[ctx.start : ctx.start + ctx.rows].to(ctx.dtype)
        return None, None, grad, grad_token


class _Read(torch.autograd.Function):
    @staticmethod
    def forward(ctx, store: RowStore, slots: Tensor, token: Tensor) -> Tensor:
        ctx.store = weakref.ref(store)
        ctx.save_for_backward(slots)
        return store.values.index_select(0, slots)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (slots,) = ctx.saved_tensors
        store = _alive(ctx.store)
        store.grad.index_add_(0, slots, grad.to(store.grad.dtype))
        return None, None, grad.new_zeros(0).to(store.values.dtype)
