"""JODIE: coupled user/item RNN memory, time projection and item-embedding prediction.

Kumar, Zhang and Leskovec, "Predicting Dynamic Embedding Trajectory in Temporal
Interaction Networks", KDD'19. Every interaction (u, i) at time t, with Δ the time since
the node's previous interaction and f the optional edge features:

    u(t) = norm(tanh(W_u [i(t⁻); Δ_u; f] + U_u u(t⁻) + b_u))      Eq. 1, user RNN
    i(t) = norm(tanh(W_i [u(t⁻); Δ_i; f] + U_i i(t⁻) + b_i))      Eq. 2, item RNN
    û    = (1 + w Δ_u + w₀) ⊙ u(t⁻)                              Eq. 3, projection
    ĵ    = W [û; j(t⁻); j̄; ū] + B                                 Eq. 4, prediction

j is the item of the user's previous interaction, bars are static (one-hot) embeddings,
and ĵ predicts the next item's [dynamic; static] vector. Where the published code and
the paper differ, the code is followed: the projection layer has a bias w₀ and N(0, 1)
init (its `NormalLinear(1, d)`), each loss term is an `nn.MSELoss` per t-batch (mean over
batch and dimensions) with the pre-update vectors as detached targets, and a user with
no previous item reads a padding item: the initial item vector and its own static column.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tempint.data.batch import Chunk, Interactions
from tempint.errors import ConfigError
from tempint.models.base import (
    Capabilities,
    InteractionModel,
    Mode,
    Output,
    Replayed,
    at_least_float32,
    exact_scores,
)
from tempint.models.memory import LocalMemory, MemoryState, RowStore

__all__ = ["JODIE", "CoupledUpdate", "REDUCTIONS"]

REDUCTIONS = ("mean", "sum")
# The one-hot identities make the prediction layer's static block (U + I + 1) × (d + I):
# a users × items table by nature (each user's row scores every item). Above this many
# entries (512 MB of weights, 2 GB with gradient and Adam state) it is refused.
MAX_STATIC_ENTRIES = 1 << 27


class CoupledUpdate(nn.Module):
    """JODIE's user and item RNN cells (Eq. 1-2) as one matmul per step.

    Both cells read the states *before* the interaction. `weight` [2d + F, 2d] acts on
    [u; i; f]: output columns [0, d) are the user cell (U_u over u, W_u over i and f),
    columns [d, 2d) the item cell (W_i over u, U_i over i and f). `time_weight` [2, d]
    holds the Δ_u column of W_u and the Δ_i column of W_i, so a side never sees the
    other side's Δ. `bias` [2d] is b_ih + b_hh of the two `nn.RNNCell`s.
    """

    def __init__(self, dim: int, num_features: int = 0) -> None:
        super().__init__()
        self.dim = int(dim)
        self.num_features = int(num_features)
        self.weight = nn.Parameter(torch.empty(2 * dim + num_features, 2 * dim))
        self.time_weight = nn.Parameter(torch.empty(2, dim))
        self.bias = nn.Parameter(torch.empty(2 * dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.dim)  # nn.RNNCell's init; its two biases are summed
        for p in (self.weight, self.time_weight):
            p.uniform_(-bound, bound)
        self.bias.uniform_(-bound, bound).add_(torch.empty_like(self.bias).uniform_(-bound, bound))

    def forward(
        self, user: Tensor, item: Tensor, delta: Tensor, features: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """New unit-norm states u(t), i(t) [B, d] from u(t⁻), i(t⁻) [B, d], Δ [B, 2]."""
        parts = (user, item) if features is None else (user, item, features)
        new_user, new_item = self.pairs(torch.cat(parts, dim=1), delta).unbind(1)
        return new_user, new_item

    def pairs(self, x: Tensor, delta: Tensor) -> Tensor:
        """New states [B, 2, d] (user, item) from x = [u(t⁻); i(t⁻); f] [B, 2d + F]."""
        pre = torch.addmm(self.bias, x, self.weight).view(-1, 2, self.dim)
        pre = pre.addcmul(delta[:, :, None], self.time_weight)
        return F.normalize(torch.tanh(pre), dim=-1)


class _DenseGradHook:
    """Post-accumulate hook: a sparse `.grad` becomes dense, in one buffer reused each step.

    Row lookups emit sparse gradients, cheap to build and to sum over steps; Adam needs a
    dense one. Filling a kept buffer instead of allocating [U + I + 1, d + I] afresh every
    optimiser step (page faults included) removes the largest per-chunk cost on CPU.
    The parameter is held weakly, so a deep copy of the model (whose new parameter has no
    hook) is detected and hooked again.
    """

    def __init__(self, param: nn.Parameter) -> None:
        self.param = weakref.ref(param)
        self.buffer: Tensor | None = None
        param.register_post_accumulate_grad_hook(self)

    def __getstate__(self) -> dict:  # copies and pickles drop the hook; the model re-hooks
        return {}

    def __setstate__(self, state: dict) -> None:
        self.param = lambda: None
        self.buffer = None

    def __call__(self, param: Tensor) -> None:
        grad = param.grad
        if grad is None or grad.layout == torch.strided:
            return
        buffer = self.buffer
        if buffer is None or buffer.shape != param.shape or buffer.dtype != param.dtype:
            buffer = self.buffer = torch.empty_like(param, memory_format=torch.contiguous_format)
        elif buffer.device != param.device:
            buffer = self.buffer = buffer.to(param.device)
        buffer.zero_().index_add_(0, grad._indices()[0], grad._values())
        param.grad = buffer


@dataclass
class _Rows:
    """Everything the losses need about a set of interactions, [N] or [N, ...]."""

    user: Tensor  # global user ids
    item: Tensor  # global item ids
    prev_item: Tensor  # -1 if none
    delta: Tensor  # [N, 2] scaled Δ_u, Δ_i
    state_label: Tensor
    step_of: Tensor | None = None  # t-batch of each row, for per-t-batch means
    step_size: Tensor | None = None  # [N] size of the row's t-batch


@dataclass
class _Query:
    """What the prediction layer reads besides the states, [N] or [N, 2]."""

    user: Tensor
    prev_item: Tensor
    delta: Tensor


@dataclass
class _Pending:
    """What a replayed block step leaves for `block_queries`: u(t⁻) [n, d], the scaled
    deltas [n, 2], the user and previous-item ids and the stream positions [n]."""

    user_state: Tensor
    delta: Tensor
    user: Tensor
    prev_item: Tensor
    position: Tensor


@dataclass
class _PlannedChunk:
    """A training chunk whose losses are computed once, at its last step.

    The losses of a t-batch need only what the step read (pre-update states) and what
    it wrote, so the steps stash those and the prediction layer, the projection and
    every loss run once over the whole chunk: the same sums of per-t-batch means, with
    a fraction of the kernel launches (a Wikipedia epoch has ~12k t-batches of ~10).
    """

    rows: _Rows
    written_users: Tensor  # global ids
    written_items: Tensor
    stash: list[tuple[Tensor, ...]] = field(default_factory=list)


@dataclass
class _PlannedStep:
    delta: Tensor  # [n, 2]
    chunk: _PlannedChunk
    last: bool
    reads: Tensor  # [3n] store slots: (u(t⁻), i(t⁻)) pairs, then j(t⁻)
    writes: int  # slot of the step's first written row: (u(t), i(t)) pairs


class _GraphCache:
    """The node rows touched since the last detach, kept with their graph (`RowStore`).

    Reading and writing the global [U, d] buffers inside autograd makes every step's
    backward build [U, d] gradients; the store's backward costs the rows a step touches.
    Users and items share one store: user u is id u, item i is id U + i, and id U + I is
    the padding item (the initial vector, never written). A chunk's steps are planned when
    it is added: every row a step writes gets its slot, and every row a step reads is the
    slot its node was last written to before the step (or held before the chunk), so a
    step is one read and one append. Rows are added chunk by chunk, so gradient flows
    across chunks until `detach_state` (online evaluation steps once per time window).
    """

    def __init__(self, memory: MemoryState) -> None:
        self.memory = memory
        dim, dtype, device = memory.dim, memory.user.dtype, memory.user.device
        self.items_from = memory.num_users
        self.padding = memory.num_users + memory.num_items
        self.store = RowStore(self.padding + 1, dim, dtype, device)
        self.store.append(torch.tensor([self.padding], device=device), memory.item_init[None])
        self.chunks: list[_PlannedChunk] = []

    def add(self, chunk: Chunk) -> list[_PlannedStep]:
        """Plan a chunk's steps; their reads and writes, in the steps' order."""
        steps = chunk.steps
        rows = _Rows(
            user=torch.cat([s.user for s in steps]),
            item=torch.cat([s.item for s in steps]),
            prev_item=torch.cat([s.prev_item for s in steps]),
            delta=torch.stack(
                (
                    torch.cat([s.delta_user for s in steps]),
                    torch.cat([s.delta_item for s in steps]),
                ),
                dim=1,
            ).to(self.memory.user.dtype),
            state_label=torch.cat([s.state_label for s in steps]),
        )
        device = rows.user.device
        sizes = torch.tensor([len(s) for s in steps], device=device)
        rows.step_of = torch.repeat_interleave(
            torch.arange(len(steps), device=device), sizes, output_size=len(rows.user)
        )
        rows.step_size = sizes[rows.step_of]
        users = torch.unique(rows.user)
        items = torch.unique(rows.item)
        prev = rows.prev_item
        known = torch.unique(torch.cat((items, prev[prev >= 0])))
        store = self.store
        # nodes not in the store yet start from the memory (with the graph to the init)
        new_users = users[store.slot[users] < 0]
        new_items = known[store.slot[self.items_from + known] < 0]
        store.reserve(new_users.shape[0] + new_items.shape[0] + 2 * rows.user.shape[0])
        if new_users.numel() + new_items.numel():
            store.append(
                torch.cat((new_users, self.items_from + new_items)),
                torch.cat((self.memory.read_users(new_users), self.memory.read_items(new_items))),
            )
        reads, writes = self._plan(rows, sizes)
        planned = _PlannedChunk(rows=rows, written_users=users, written_items=items)
        self.chunks.append(planned)
        out, start = [], 0
        for k, step in enumerate(steps):
            n = len(step)
            part = slice(start, start + n)
            out.append(_PlannedStep(
                rows.delta[part], planned, k == len(steps) - 1,
                reads[3 * start : 3 * (start + n)], int(writes[k]),
            ))  # fmt: skip
            start += n
        return out

    def _plan(self, rows: _Rows, sizes: Tensor) -> tuple[Tensor, Tensor]:
        """Slots every step reads ([3N]: per step its users, items, previous items) and
        the first slot each step writes ([S]); points the store's ids at their last row."""
        store, num_steps = self.store, sizes.shape[0]
        n = rows.user.shape[0]
        offsets = torch.cumsum(sizes, 0) - sizes
        writes = store.size + 2 * offsets  # a step appends (user, item) row pairs
        # every write: (id, step, slot); a node twice in a step keeps its later row
        position = torch.arange(n, device=sizes.device) - offsets[rows.step_of]
        first = writes[rows.step_of] + 2 * position
        w_id = torch.cat((rows.user, self.items_from + rows.item))
        w_step = torch.cat((rows.step_of, rows.step_of))
        w_slot = torch.cat((first, first + 1))
        key = w_id * (num_steps + 1) + w_step
        key, order = torch.sort(key, stable=True)  # a repeat in a step: its later row last
        w_slot = w_slot[order]
        # what each step reads, in step order: its users, items and previous items
        prev = torch.where(rows.prev_item >= 0, self.items_from + rows.prev_item, self.padding)
        r_id = torch.stack((rows.user, self.items_from + rows.item, prev))  # [3, N]
        r_key = r_id * (num_steps + 1) + rows.step_of
        at = torch.searchsorted(key, r_key) - 1  # the last write strictly before the step
        found = at >= 0
        found &= key[at.clamp(min=0)] // (num_steps + 1) == r_id
        found_slots = torch.where(found, w_slot[at.clamp(min=0)], store.slot[r_id])
        # laid out step by step: (user, item) row pairs, then the previous items, so that
        # a step's reads are its update's input [n, 2d] as a view
        base = 3 * offsets[rows.step_of]
        reads = torch.empty_like(found_slots.reshape(-1))
        reads[base + 2 * position] = found_slots[0]
        reads[base + 2 * position + 1] = found_slots[1]
        reads[base + 2 * sizes[rows.step_of] + position] = found_slots[2]
        # after the chunk each id points at its last row
        last = torch.ones_like(key, dtype=torch.bool)
        last[:-1] = key[1:] // (num_steps + 1) != key[:-1] // (num_steps + 1)
        store.slot[key[last] // (num_steps + 1)] = w_slot[last]
        return reads, writes

    def read(self, step: _PlannedStep) -> tuple[Tensor, Tensor]:
        """[u(t⁻); i(t⁻)] [n, 2d] and j(t⁻) [n, d] of a planned step, with their graph."""
        rows = self.store.read_slots(step.reads)
        n = rows.shape[0] // 3
        pairs, previous = rows.split((2 * n, n))  # backward: one cat, not zero-filled slices
        return pairs.view(n, -1), previous

    def write(self, step: _PlannedStep, new: Tensor) -> None:
        """The step's new states [n, 2, d] (user, item)."""
        start = self.store.append_rows(new.reshape(-1, new.shape[-1]))
        if start != step.writes:
            raise RuntimeError("a planned step was written out of order")

    @torch.no_grad()
    def flush(self, planned: _PlannedChunk) -> None:
        """Write the chunk's nodes' latest states to the global memory, detached."""
        ids = planned.written_users
        self.memory.write_users(ids, self.store.latest(ids))
        ids = planned.written_items
        self.memory.write_items(ids, self.store.latest(self.items_from + ids))


class JODIE(InteractionModel):
    """JODIE with every component a switch, for ablations that bridge it to plain memories.

    - `static_embeddings`: one-hot user and item identities in the prediction layer's
      input and target. A one-hot times W is a column of W, so they are row lookups in
      `static_weight` [U + I + 1, D] (rows: users, previous items, no previous item),
      and the target's one-hot block is never built for ranking.
    - `time_projection`: Eq. 3; off, û = u(t⁻).
    - `prediction_layer`: Eq. 4; off, the query is û itself (d-dimensional), scored
      against the dynamic item vectors, and the MSE pulls û to the target's vector.
      Static embeddings need the prediction layer.
    - `smoothness_loss`: λ_U ||u(t) − u(t⁻)||² + λ_I ||i(t) − i(t⁻)||² (MSE form).
    - `state_change_head`: MLP(d → 50 → 2) on u(t), cross-entropy on `state_label` with
      class weights [1, `state_change_weight`] (the published code uses N / (1 + #positives)).

    Output: `query` ĵ's dynamic part [B, d] with `candidates` the dynamic item table, and
    native `scores` [B, I]: minus the squared L2 distance of ĵ to every item's
    [dynamic; one-hot] vector (rank-equivalent to the code's PairwiseDistance), computed as
    ||ĵ_d − e_d||² + ||ĵ_s||² − 2 ĵ_s[i] + 1. Scores are built in the modes that score:
    training needs only the target rows.

    `run_chunk` in `Mode.TRAIN` returns a chunk's losses with its last step and no query
    (see `_PlannedChunk`); modes without losses compute none.
    """

    capabilities = Capabilities(
        scorers=("native", "dot", "l2"),
        block_scorers=("native", "dot", "l2"),
    )

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int = 128,
        static_embeddings: bool = True,
        time_projection: bool = True,
        prediction_layer: bool = True,
        smoothness_loss: bool = True,
        lambda_user: float = 1.0,
        lambda_item: float = 1.0,
        use_edge_features: bool = False,
        num_edge_features: int = 0,
        state_change_head: bool = False,
        state_change_weight: float = 1.0,
        state_hidden: int = 50,
        loss_reduction: str = "mean",
        warm_start: bool = False,
    ) -> None:
        super().__init__(num_users, num_items)
        if int(dim) < 1:
            raise ConfigError(f"model.dim={dim} must be at least 1")
        if loss_reduction not in REDUCTIONS:
            raise ConfigError(
                f"model.loss_reduction={loss_reduction!r} is unknown; use mean or sum"
            )
        if static_embeddings and not prediction_layer:
            raise ConfigError(
                "model.static_embeddings=true needs model.prediction_layer=true (static "
                "embeddings only enter through the prediction layer); set both to false"
            )
        static_entries = (num_users + num_items + 1) * (int(dim) + num_items)
        if static_embeddings and static_entries > MAX_STATIC_ENTRIES:
            raise ConfigError(
                f"model.static_embeddings=true needs a one-hot block of (users + items + 1) "
                f"x (dim + items) = {static_entries:,} weights for {num_users:,} users and "
                f"{num_items:,} items (at most {MAX_STATIC_ENTRIES:,}); set "
                "model.static_embeddings=false for a catalogue this large"
            )
        if use_edge_features and int(num_edge_features) < 1:
            raise ConfigError(
                f"model.use_edge_features=true needs model.num_edge_features >= 1, "
                f"got {num_edge_features}"
            )
        if lambda_user < 0 or lambda_item < 0 or not state_change_weight > 0:
            raise ConfigError(
                "model.lambda_user and model.lambda_item must be >= 0 and "
                "model.state_change_weight > 0"
            )
        self.dim = int(dim)
        self.static_embeddings = bool(static_embeddings)
        self.time_projection = bool(time_projection)
        self.prediction_layer = bool(prediction_layer)
        self.smoothness_loss = bool(smoothness_loss)
        self.lambda_user = float(lambda_user)
        self.lambda_item = float(lambda_item)
        self.use_edge_features = bool(use_edge_features)
        self.num_edge_features = int(num_edge_features) if use_edge_features else 0
        self.state_change_head = bool(state_change_head)
        self.loss_reduction = loss_reduction
        self.warm_start = bool(warm_start)

        d = self.dim
        self.memory = MemoryState(num_users, num_items, d)
        with torch.no_grad():  # the published code: normalised uniform initial vectors
            self.memory.user_init.copy_(F.normalize(torch.rand(d), dim=0))
            self.memory.item_init.copy_(F.normalize(torch.rand(d), dim=0))
        self.memory.reset_state()
        self.update = CoupledUpdate(d, self.num_edge_features)

        if self.time_projection:  # NormalLinear(1, d): normal, std 1/sqrt(in) = 1
            self.projection_weight = nn.Parameter(torch.randn(d))
            self.projection_bias = nn.Parameter(torch.randn(d))

        self.out_dim = d + (num_items if self.static_embeddings else 0)
        if self.prediction_layer:
            fan_in = 2 * d + (num_users + num_items + 1 if self.static_embeddings else 0)
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's init over the whole input

            def uniform(*shape: int) -> nn.Parameter:
                return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))

            self.predict_weight = uniform(2 * d, self.out_dim)
            self.predict_bias = uniform(self.out_dim)
            if self.static_embeddings:
                self.static_weight = uniform(num_users + num_items + 1, self.out_dim)

        if self.state_change_head:
            hidden = int(state_hidden)
            self.state_head = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 2))
            weight = torch.tensor([1.0, float(state_change_weight)])
            self.register_buffer("state_class_weight", weight, persistent=False)

        self._local: LocalMemory | None = None
        self._cache: _GraphCache | None = None
        self._grad_hook: _DenseGradHook | None = None
        # Sparse gradients for the static table (turned into dense ones by a hook); off
        # for tools that take gradients without accumulating them (gradcheck).
        self.sparse_gradients = True
        self._window_keys: Tensor | None = None
        self._window_rows: Tensor | None = None

    # ---- stream state ------------------------------------------------------------------

    def reset_state(self) -> None:
        self.memory.reset_state()
        self._local = None
        self._cache = None

    def detach_state(self) -> None:
        self.memory.detach_state()
        if self._local is not None:
            self._local.detach_state()
        self._drop_cache()

    def _drop_cache(self) -> None:
        """Forget the cached rows (their graph), first writing unflushed chunks back."""
        if self._cache is not None:
            for planned in self._cache.chunks:
                if planned.stash:
                    self._cache.flush(planned)
            self._cache = None

    def run_chunk(self, chunk: Chunk, mode: Mode) -> Iterator[Output]:
        """Modes with losses over the global memory plan the chunk's reads and writes in
        a row store first (`_GraphCache`), then run each step on its plan."""
        if not mode.losses or chunk.local_users is not None or not chunk.steps:
            yield from super().run_chunk(chunk, mode)
            return
        self.begin_chunk(chunk, mode)
        if self._cache is None:
            self._cache = _GraphCache(self.memory)
        planned = zip(chunk.steps, self._cache.add(chunk), strict=True)
        if mode is Mode.TRAIN:
            outputs = (self._train_step(batch, step) for batch, step in planned)
        else:
            outputs = (self._step(batch, mode, step) for batch, step in planned)
        yield from self.closing(chunk, mode, outputs)

    def begin_chunk(self, chunk: Chunk, mode: Mode) -> None:
        """Window-local memory for the sequence sampler; a frozen block's unseen rows."""
        if chunk.local_users is None:
            if mode is Mode.REPLAY:
                self._drop_cache()
                self.memory.fill_unseen(chunk)  # then rows are read with one gather
            return
        self._drop_cache()
        row_window = chunk.row_window
        if row_window is None:  # window b owns rows [b·L, (b+1)·L), L = number of steps
            rows = chunk.local_users.shape[0]
            row_window = torch.arange(rows, device=chunk.local_users.device) // len(chunk.steps)
        num_windows = int(row_window.max()) + 1 if row_window.numel() else 0
        self._local = self.memory.localize(
            chunk.local_users, chunk.local_items, row_window, num_windows, warm=self.warm_start
        )
        # (window, item) -> local row, over the rows the steps use: previous-item lookups
        used = torch.unique(torch.cat([s.item_rows for s in chunk.steps]))
        keys = row_window[used] * self.num_items + chunk.local_items[used].long()
        self._window_keys, order = torch.sort(keys)
        self._window_rows = used[order]

    def end_chunk(self, chunk: Chunk, mode: Mode) -> None:
        if self._local is not None:
            self._local.commit()
            self._local = None
            self._window_keys = self._window_rows = None

    # ---- reading and writing node states -----------------------------------------------

    def _read(self, batch: Interactions, step: _PlannedStep | None) -> tuple[Tensor, ...]:
        """u(t⁻), i(t⁻) and j(t⁻), the previous item's current state (padding: init)."""
        if step is not None:
            pairs, previous = self._cache.read(step)
            return pairs[:, : self.dim], pairs[:, self.dim :], previous
        prev = batch.prev_item
        safe = prev.clamp(min=0)
        if self._local is not None:
            memory = self._local
            item = memory.read_items(batch.item_rows)
            previous = self._window_previous_items(batch, safe)
        else:
            memory = self.memory
            both = memory.read_items(torch.cat((batch.item_rows, safe)))
            item, previous = both[: len(batch)], both[len(batch) :]
        previous = torch.where((prev >= 0)[:, None], previous, self.memory.item_init)
        return memory.read_users(batch.user_rows), item, previous

    def _window_previous_items(self, batch: Interactions, safe: Tensor) -> Tensor:
        """The previous item's row in this entry's window, else its state outside windows.

        Outside the window's rows an item is at its initial vector (cold windows) or at
        its global state (warm windows), exactly what a window row of it would read.
        """
        local, keys = self._local, self._window_keys
        key = local.row_window[batch.user_rows] * self.num_items + safe
        pos = torch.searchsorted(keys, key).clamp(max=keys.numel() - 1)
        inside = local.read_items(self._window_rows[pos])
        if local.warm:
            outside = self.memory.read_items(safe)
        else:
            outside = self.memory.item_init.expand_as(inside)
        return torch.where((keys[pos] == key)[:, None], inside, outside)

    def _write(
        self, batch: Interactions, step: _PlannedStep | None, user: Tensor, item: Tensor
    ) -> None:
        if step is not None:  # the store holds the graph; the global rows, the values
            self._cache.write(step, torch.stack((user, item), dim=1))
            user, item = user.detach(), item.detach()
        memory = self._local if self._local is not None else self.memory
        memory.write_users(batch.user_rows, user)
        memory.write_items(batch.item_rows, item)

    def _item_table(self, batch: Interactions, mode: Mode) -> Tensor:
        """Candidate dynamic item vectors before the step: [I, d], or [B, I, d] per window."""
        if self._local is None and mode.losses:
            return self.memory.item_table()  # with the graph of rows written since the detach
        if self._local is None:  # a masked copy is ~3x faster than a broadcast where
            table = self.memory.item.clone()
            table[~self.memory.item_seen] = self.memory.item_init
            return table
        tables = self._local.item_tables()
        windows = self._local.row_window[batch.user_rows]
        if windows.shape[0] == tables.shape[0] and bool(
            (windows == torch.arange(windows.shape[0], device=windows.device)).all()
        ):
            return tables
        return tables.index_select(0, windows)

    # ---- prediction, scores, losses ----------------------------------------------------

    def _sparse_static(self, grad: bool) -> bool:
        if not (self.sparse_gradients and grad):
            return False
        hook = self._grad_hook
        if hook is None or hook.param() is not self.static_weight:
            self._grad_hook = _DenseGradHook(self.static_weight)
        return True

    def _predict(
        self, user: Tensor, previous: Tensor, rows: _Rows | _Query, grad: bool = True
    ) -> Tensor:
        """ĵ [N, D] (Eq. 3-4), or û [N, d] without the prediction layer; `grad`: the
        static table's gradient is wanted (then sparse, see `_DenseGradHook`)."""
        if self.time_projection:
            scale = torch.addcmul(
                self.projection_bias + 1.0, rows.delta[:, :1], self.projection_weight
            )
            user = user * scale
        if not self.prediction_layer:
            return user
        x = torch.cat((user, previous), dim=1)
        if not self.static_embeddings:
            return torch.addmm(self.predict_bias, x, self.predict_weight)
        prev_row = rows.prev_item.remainder(self.num_items + 1) + self.num_users  # -1 -> pad
        index = torch.stack((rows.user, prev_row), dim=1)
        static = F.embedding_bag(
            index, self.static_weight, mode="sum", sparse=self._sparse_static(grad)
        )
        return torch.addmm(static + self.predict_bias, x, self.predict_weight)

    def _native_scores(self, query: Tensor, table: Tensor) -> Tensor:
        """−||ĵ − [e; onehot]||² for every item [B, I], the identity block never built.

        = 2 ĵ_d·e + 2 ĵ_s[i] − ||ĵ||² − 1 − ||e||² (without static embeddings, no ĵ_s
        and no 1). `table` [I, d], or [B, I, d] with one table per query.
        """
        q = query[:, : self.dim]
        norms = query.square().sum(dim=1, keepdim=True)  # ||ĵ||² [B, 1]
        if self.static_embeddings:
            base = query[:, self.dim :].mul(2.0).sub_(norms + 1.0)
        else:
            base = norms.neg()
        if table.dim() == 2:
            base = base - table.square().sum(dim=1)
            return torch.addmm(base, q, table.t(), alpha=2.0)
        base = base - table.square().sum(dim=2)
        return torch.baddbmm(base[:, None], q[:, None], table.transpose(1, 2), alpha=2.0)[:, 0]

    def _native_bias(self, query: Tensor) -> Tensor:
        """Native score minus the l2 one: −||ĵ_s − onehot||² = 2 ĵ_s[i] − ||ĵ_s||² − 1."""
        if not self.static_embeddings:
            return query.new_zeros(query.shape[0], 1)
        static = query[:, self.dim :]
        return static.mul(2.0).sub_(static.square().sum(dim=1, keepdim=True) + 1.0)

    def _replay_step(self, batch: Interactions) -> Replayed:
        """A frozen replay step of a block: update memory, leave the prediction for later.

        The previous item's state j(t⁻) is not read here: in t-batch order the item may
        already hold a later update (or miss an earlier one), so `block_queries` reads it
        as of the interaction's own position.
        """
        memory = self.memory
        users, items = batch.user_rows, batch.item_rows
        user = memory.user.index_select(0, users)
        item = memory.item.index_select(0, items)
        delta = torch.stack((batch.delta_user, batch.delta_item), dim=1).to(user.dtype)
        new_user, new_item = self.update(user, item, delta, self._features(batch))
        memory.user.index_copy_(0, users, new_user)
        memory.item.index_copy_(0, items, new_item)
        memory.user_seen.index_fill_(0, users, True)
        memory.item_seen.index_fill_(0, items, True)
        pending = _Pending(user, delta, batch.user, batch.prev_item, batch.index)
        return Replayed(written=new_item, pending=pending)

    def block_queries(self, outputs, versions) -> tuple[Tensor, Tensor]:
        """ĵ of a block in one prediction-layer matmul (its weight read once per block)."""
        # every replayed step's `_Pending` fields, in their declared order, laid end to end
        parts = [vars(o.pending).values() for o in outputs]
        user, delta, users, prev, position = (torch.cat(column) for column in zip(*parts))
        previous = versions.rows_at(prev.clamp(min=0), position)
        previous = torch.where((prev >= 0)[:, None], previous, self.memory.item_init)
        query = self._predict(user, previous, _Query(users, prev, delta), grad=False)
        return query[:, : self.dim], self._native_bias(query)

    def candidate_table(self) -> Tensor:
        return self._item_table(None, Mode.REPLAY)

    def _mse(self, x: Tensor, target: Tensor, rows: _Rows) -> Tensor:
        """nn.MSELoss of every t-batch (mean over its rows and columns), summed over t-batches."""
        if self.loss_reduction == "sum":
            return F.mse_loss(x, target.detach(), reduction="sum")
        if rows.step_size is None:
            return F.mse_loss(x, target.detach())
        per_row = (x - target.detach()).square().sum(dim=1)
        return (per_row / rows.step_size).sum() / x.shape[1]

    def _losses(
        self, query: Tensor, user: Tensor, item: Tensor, new_user: Tensor, new_item: Tensor,
        rows: _Rows,
    ) -> dict[str, Tensor]:  # fmt: skip
        target = item
        if self.prediction_layer and self.static_embeddings:
            onehot = F.one_hot(rows.item, self.num_items).to(item.dtype)
            target = torch.cat((item, onehot), dim=1)
        losses = {"prediction": self._mse(query, target, rows)}
        if self.smoothness_loss:
            losses["smooth_user"] = self.lambda_user * self._mse(new_user, user, rows)
            losses["smooth_item"] = self.lambda_item * self._mse(new_item, item, rows)
        if self.state_change_head:
            logits = self.state_head(new_user)
            weight = self.state_class_weight.to(logits.dtype)
            if self.loss_reduction == "sum" or rows.step_of is None:
                reduction = self.loss_reduction
                loss = F.cross_entropy(logits, rows.state_label, weight=weight, reduction=reduction)
            else:  # nn.CrossEntropyLoss(weight) per t-batch: sum w·nll / sum w
                nll = F.cross_entropy(logits, rows.state_label, weight=weight, reduction="none")
                w = weight[rows.state_label]
                totals = torch.zeros(int(rows.step_of.max()) + 1, dtype=w.dtype, device=w.device)
                totals = totals.index_add(0, rows.step_of, w)
                loss = (nll / totals[rows.step_of]).sum()
            losses["state_change"] = loss
        return losses

    def _features(self, batch: Interactions) -> Tensor | None:
        if not self.use_edge_features:
            return None
        if batch.edge_features is None:
            raise ConfigError(
                "model.use_edge_features=true but the data has no edge features; "
                "set data.edge_features=true or model.use_edge_features=false"
            )
        return batch.edge_features.to(self.update.weight.dtype)

    # ---- one step ----------------------------------------------------------------------

    def _train_step(self, batch: Interactions, step: _PlannedStep) -> Output:
        """A t-batch of a planned training chunk: one read, one update, one append; the
        losses of the whole chunk at its last step (see `_PlannedChunk`)."""
        pairs, previous = self._cache.read(step)
        features = self._features(batch)
        x = pairs if features is None else torch.cat((pairs, features), dim=1)
        new = self.update.pairs(x, step.delta)
        self._cache.write(step, new)
        planned = step.chunk
        planned.stash.append((pairs, previous, new))
        if not step.last:
            return Output()
        pairs, previous, new = (torch.cat(parts) for parts in zip(*planned.stash))
        planned.stash.clear()
        self._cache.flush(planned)
        user, item = pairs[:, : self.dim], pairs[:, self.dim :]
        query = self._predict(user, previous, planned.rows)
        losses = self._losses(query, user, item, new[:, 0], new[:, 1], planned.rows)
        return Output(losses=losses)

    def forward(self, batch: Interactions, mode: Mode) -> Output:
        """Predict from the states before the batch, then update them (Eq. 1-4)."""
        if mode is Mode.REPLAY:
            return self._replay_step(batch)
        if self._cache is not None and self._local is None:
            self._drop_cache()  # a step of no planned chunk: the global rows are current
        return self._step(batch, mode, None)

    def _step(self, batch: Interactions, mode: Mode, step: _PlannedStep | None) -> Output:
        """One step read from the global or window memory, or from its plan (`step`)."""
        user, item, previous = self._read(batch, step)
        delta = step.delta if step is not None else None
        if delta is None:
            delta = torch.stack((batch.delta_user, batch.delta_item), dim=1).to(user.dtype)
        new_user, new_item = self.update(user, item, delta, self._features(batch))

        rows = _Rows(batch.user, batch.item, batch.prev_item, delta, batch.state_label)
        query = self._predict(user, previous, rows, grad=mode.losses)
        out = Output(query=query[:, : self.dim])
        if mode.scores:
            out.candidates = self._item_table(batch, mode)
            with exact_scores(query.device):  # expanded distances in bf16 tie tens of items
                out.scores = self._native_scores(
                    at_least_float32(query), at_least_float32(out.candidates)
                )
        if mode.losses:
            out.losses = self._losses(query, user, item, new_user, new_item, rows)
        self._write(batch, step, new_user, new_item)
        return out
