"""Ways to cut a stretch of the stream into chunks of parallel steps, never reordering time.

Each sampler returns plans: a chunk is a list of steps, a step an index array of
interactions processed in parallel. Per-node order is always kept: an interaction never
lands in a step before an earlier interaction of its user or its item.

`num_chunks` says how many chunks `plan` will return without planning (cheap, from the
timestamps alone), so an epoch's progress bar has a total and an ETA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tempint.errors import ConfigError

__all__ = [
    "ChunkPlan",
    "TBatchSampler",
    "ChronoSampler",
    "SequenceSampler",
    "ShuffleSampler",
    "exact_segments",
    "block_plans",
    "user_step_plans",
    "tbatch_assign",
]


@dataclass
class ChunkPlan:
    """Index arrays of one chunk; for windows also the window-local row layout.

    `steps[s]` [B] stream positions; `user_rows[s]` / `item_rows[s]` [B] local rows;
    `local_users` / `local_items` [R] the global id of each local row; `row_window` [R]
    the window of each row;
    `scored[s]` [B] bool, False for context-only interactions of evaluation windows.
    `block`: the steps are the t-batches of one block of consecutive interactions, to be
    ranked together with candidates as of each interaction's position (`block_plans`).
    `run`: the steps are consecutive exact steps, for models that replay them at once
    (`InteractionModel.replay_steps`).
    """

    steps: list[np.ndarray]
    user_rows: list[np.ndarray] | None = None
    item_rows: list[np.ndarray] | None = None
    local_users: np.ndarray | None = None
    local_items: np.ndarray | None = None
    row_window: np.ndarray | None = None
    scored: list[np.ndarray] | None = None
    block: bool = False
    run: bool = False

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.steps))


def _positive(name: str, value: int, hint: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer; {hint}")
    return int(value)


def tbatch_assign(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """JODIE's t-batch of every interaction of one window: max(last[u], last[i]) + 1.

    The greedy rule puts each interaction in the earliest batch after every earlier
    interaction of its user and of its item, so no node appears twice in a batch and
    per-node order is kept. The recurrence is sequential; lists indexed by id keep the
    loop at about half a microsecond per interaction.
    """
    if len(users) == 0:
        return np.empty(0, dtype=np.int64)
    last_user = [-1] * (int(users.max()) + 1)
    last_item = [-1] * (int(items.max()) + 1)
    out = [0] * len(users)
    for n, (u, i) in enumerate(zip(users.tolist(), items.tolist())):
        a = last_user[u]
        b = last_item[i]
        b = (a if a > b else b) + 1
        last_user[u] = b
        last_item[i] = b
        out[n] = b
    return np.asarray(out, dtype=np.int64)


class TBatchSampler:
    """JODIE's t-batches (Kumar et al. KDD'19, Sec. 3.3), one chunk per time window.

    The window span is (t_last − t_first) / num_windows of the stretch, or `timespan`
    seconds. Every interaction lands in exactly one t-batch, including the last partial
    window (JODIE's published code skips it, so its last users start evaluation cold).
    """

    name = "tbatch"

    def __init__(self, num_windows: int = 500, timespan: float | None = None):
        self.num_windows = _positive("sampler.num_windows", num_windows, "JODIE uses 500")
        if timespan is not None and not timespan > 0:
            raise ConfigError(f"sampler.timespan={timespan!r} must be positive seconds or null")
        self.timespan = timespan

    def _window_bounds(self, times: np.ndarray) -> np.ndarray:
        """Offsets where a new non-empty time window starts (after the first)."""
        span = self.timespan or max((times[-1] - times[0]) / self.num_windows, 1e-12)
        window = np.floor((times - times[0]) / span).astype(np.int64)
        if self.timespan is None:  # the last event closes the last window, not a new one
            window = np.minimum(window, self.num_windows - 1)
        return np.flatnonzero(np.diff(window)) + 1

    def num_chunks(self, t, start: int, end: int) -> int:
        return 0 if end <= start else len(self._window_bounds(t[start:end])) + 1

    def plan(self, users, items, t, start: int, end: int, epoch: int = 0) -> list[ChunkPlan]:
        if end <= start:
            return []
        times = t[start:end]
        bounds = self._window_bounds(times)
        chunks = []
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(times)]):
            pos = np.arange(start + lo, start + hi)
            batch_of = tbatch_assign(users[pos], items[pos])
            order = np.argsort(batch_of, kind="stable")
            cuts = np.flatnonzero(np.diff(batch_of[order])) + 1
            chunks.append(ChunkPlan(steps=np.split(pos[order], cuts)))
        return chunks


class ChronoSampler:
    """Consecutive interactions: steps of `batch_size`, `steps` of them per chunk.

    A node may occur twice in a step: all reads happen before the step's writes, the
    accepted approximation of chronological batching with global memory. Several steps
    per chunk let backward reach the updates that produced a step's memory (with one
    step per chunk and losses on pre-update memory, the cells would get no gradient).
    """

    name = "chrono"

    def __init__(self, batch_size: int = 200, steps: int = 8):
        self.batch_size = _positive(
            "sampler.batch_size", batch_size, "use a positive integer or sampler=tbatch"
        )
        self.steps = _positive("sampler.steps", steps, "steps per optimiser step")

    def num_chunks(self, t, start: int, end: int) -> int:
        return max(0, -(-(end - start) // (self.batch_size * self.steps)))

    def plan(self, users, items, t, start: int, end: int, epoch: int = 0) -> list[ChunkPlan]:
        span = self.batch_size * self.steps
        return [
            ChunkPlan(
                steps=[
                    np.arange(lo, min(lo + self.batch_size, end))
                    for lo in range(chunk, min(chunk + span, end), self.batch_size)
                ]
            )
            for chunk in range(start, end, span)
        ]


class ShuffleSampler:
    """Shuffled mini-batches, for non-recursive models (DeePRed) whose inputs are histories.

    Seeded by (seed, epoch) so a resumed run sees the same order.
    """

    name = "shuffle"

    def __init__(self, batch_size: int = 256, seed: int = 0):
        self.batch_size = _positive("sampler.batch_size", batch_size, "use a positive integer")
        self.seed = int(seed)

    def num_chunks(self, t, start: int, end: int) -> int:
        return max(0, -(-(end - start) // self.batch_size))

    def plan(self, users, items, t, start: int, end: int, epoch: int = 0) -> list[ChunkPlan]:
        order = start + np.random.default_rng([self.seed, epoch]).permutation(end - start)
        return [
            ChunkPlan(steps=[np.sort(order[lo : lo + self.batch_size])])
            for lo in range(0, end - start, self.batch_size)
        ]


class SequenceSampler:
    """Windows of `length` consecutive interactions; a chunk holds `batch_size` windows.

    Memory is window-local: the nodes of a window get their own rows (window b's rows are
    only ever touched by window b), so memory costs O(B·L·d) rather than O(B·N·d). Step s
    of a chunk holds interaction s of every window. Windows are full length: the last one
    starts at `end − length`, so each interaction is in at least one window.
    """

    name = "sequence"

    def __init__(self, length: int = 64, stride: int | None = None, batch_size: int = 64):
        if not isinstance(length, (int, np.integer)) or length < 2:
            raise ConfigError(
                f"sampler.length={length!r} must be an integer >= 2 (a window needs context)"
            )
        self.length = int(length)
        self.stride = _positive(
            "sampler.stride", stride if stride is not None else length, "at most sampler.length"
        )
        if self.stride > self.length:
            raise ConfigError(
                f"sampler.stride={self.stride} exceeds sampler.length={self.length}, which "
                "would skip interactions; use a stride of at most the length (or null)"
            )
        self.batch_size = _positive("sampler.batch_size", batch_size, "windows per chunk")

    def num_chunks(self, t, start: int, end: int) -> int:
        if end <= start:
            return 0
        return -(-len(self.window_starts(start, end)) // self.batch_size)

    def window_starts(self, start: int, end: int) -> np.ndarray:
        length = min(self.length, end - start)
        starts = np.arange(start, end - length + 1, self.stride)
        if starts.size == 0 or starts[-1] != end - length:
            starts = np.r_[starts, end - length]
        return starts

    def plan(self, users, items, t, start: int, end: int, epoch: int = 0) -> list[ChunkPlan]:
        if end <= start:
            return []
        starts = self.window_starts(start, end)
        length = min(self.length, end - start)
        return [
            window_chunk(users, items, starts[lo : lo + self.batch_size], length)
            for lo in range(0, len(starts), self.batch_size)
        ]

    def eval_plan(
        self, users, items, start: int, end: int, context: int, max_windows: int | None = None
    ) -> list[ChunkPlan]:
        """Sliding windows over [start, end) whose first `context` steps are not scored.

        Context may reach back before `start` (into earlier splits, which are the past).
        Every interaction of [start, end) is scored exactly once, with at most
        `length` − 1 earlier interactions of context. A chunk holds at most `max_windows`
        windows (default `batch_size`): each step ranks one row per window.
        """
        per_chunk = min(self.batch_size, max_windows or self.batch_size)
        length = min(self.length, end)
        context = min(context, length - 1)
        starts, scored_from = [], []
        next_unscored = start
        while next_unscored < end:
            s = min(max(next_unscored - context, 0), end - length)
            starts.append(s)
            scored_from.append(next_unscored)
            next_unscored = min(s + length, end)
        starts = np.asarray(starts, dtype=np.int64)
        scored_from = np.asarray(scored_from, dtype=np.int64)
        plans = []
        for lo in range(0, len(starts), per_chunk):
            plan = window_chunk(users, items, starts[lo : lo + per_chunk], length)
            win_start = starts[lo : lo + per_chunk]
            win_scored = scored_from[lo : lo + per_chunk]
            plan.scored = [
                (win_start + s >= win_scored) & (win_start + s < end) for s in range(length)
            ]
            plans.append(plan)
        return plans


def window_chunk(users, items, starts: np.ndarray, length: int) -> ChunkPlan:
    """The chunk of windows [s, s + length) for s in `starts`, with window-local rows.

    Window b owns rows [b·L, (b+1)·L) on each side; each distinct node of the window has
    one row there. Rows no node uses hold id 0 and are never touched.
    """
    pos = starts[:, None] + np.arange(length)[None, :]  # [B, L]
    user_rows, local_users = _local_rows(users[pos])
    item_rows, local_items = _local_rows(items[pos])
    return ChunkPlan(
        steps=[pos[:, s] for s in range(length)],
        user_rows=[user_rows[:, s] for s in range(length)],
        item_rows=[item_rows[:, s] for s in range(length)],
        local_users=local_users,
        local_items=local_items,
        row_window=np.repeat(np.arange(len(starts)), length),
    )


def _local_rows(node: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """rows [B, L] (b·L + slot of the node in window b) and the node id of each of B·L rows."""
    num_windows, length = node.shape
    order = np.argsort(node, axis=1, kind="stable")
    sorted_nodes = np.take_along_axis(node, order, axis=1)
    is_first = np.ones_like(sorted_nodes, dtype=bool)
    is_first[:, 1:] = sorted_nodes[:, 1:] != sorted_nodes[:, :-1]
    slot_sorted = np.cumsum(is_first, axis=1) - 1
    slots = np.empty_like(slot_sorted)
    np.put_along_axis(slots, order, slot_sorted, axis=1)
    rows = slots + (np.arange(num_windows) * length)[:, None]
    local = np.zeros(num_windows * length, dtype=np.int64)
    local[rows.ravel()] = node.ravel()
    return rows, local


def exact_segments(users, items, start: int, end: int, max_size: int = 512) -> list[ChunkPlan]:
    """Contiguous steps in which no user and no item occurs twice, for streaming evaluation.

    Every interaction of a step is scored from memory that already holds all earlier
    interactions of its user and item, and nothing later: scoring is exact and leak-free.
    A step ends before the first repeat of a node or at `max_size` interactions.
    """
    max_size = _positive("data.eval_max_batch_size", max_size, "use a positive integer")
    plans = []
    seen_users: set[int] = set()
    seen_items: set[int] = set()
    lo = start
    u_list = users[start:end].tolist()
    i_list = items[start:end].tolist()
    for offset, (u, i) in enumerate(zip(u_list, i_list)):
        n = start + offset
        if u in seen_users or i in seen_items or n - lo >= max_size:
            plans.append(ChunkPlan(steps=[np.arange(lo, n)]))
            seen_users.clear()
            seen_items.clear()
            lo = n
        seen_users.add(u)
        seen_items.add(i)
    if end > lo:
        plans.append(ChunkPlan(steps=[np.arange(lo, end)]))
    return plans


def block_plans(users, items, start: int, end: int, size: int) -> list[ChunkPlan]:
    """Blocks of `size` consecutive interactions, each replayed as its t-batches.

    T-batches keep every node's own order, so memory updates are exact; the candidate
    table is not (a t-batch may hold a later interaction of an item before an earlier
    one of another user), so these plans are only for evaluation that ranks a block
    with candidates versioned by stream position (`tempint.eval.blocks`). A block has
    far fewer t-batches than `exact_segments` has steps.
    """
    size = _positive("block size", size, "use a positive integer")
    plans = []
    for lo in range(start, end, size):
        pos = np.arange(lo, min(lo + size, end))
        batch_of = tbatch_assign(users[pos], items[pos])
        order = np.argsort(batch_of, kind="stable")
        cuts = np.flatnonzero(np.diff(batch_of[order])) + 1
        plans.append(ChunkPlan(steps=np.split(pos[order], cuts), block=True))
    return plans


def user_step_plans(users, start: int, end: int, size: int, max_step: int) -> list[ChunkPlan]:
    """Blocks of `size` consecutive interactions, each cut into steps with no user twice.

    Step k of a block holds each user's k-th interaction in it (at most `max_step` per
    step, in time order), so every user's own order is kept while items may repeat: exact
    for models whose only stream state is per user (`Capabilities.per_user_state`),
    and far fewer steps than `exact_segments` where users repeat consecutively.
    """
    size = _positive("block size", size, "use a positive integer")
    max_step = _positive("data.eval_max_batch_size", max_step, "use a positive integer")
    plans = []
    for lo in range(start, end, size):
        pos = np.arange(lo, min(lo + size, end))
        block_users = users[pos]
        by_user = np.argsort(block_users, kind="stable")
        sorted_users = block_users[by_user]
        first = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
        run_start = np.repeat(first, np.diff(np.r_[first, len(pos)]))
        occurrence = np.empty(len(pos), dtype=np.int64)
        occurrence[by_user] = np.arange(len(pos)) - run_start
        order = np.argsort(occurrence, kind="stable")  # by occurrence, then time
        cuts = np.flatnonzero(np.diff(occurrence[order])) + 1
        steps = []
        for step in np.split(pos[order], cuts):
            steps.extend(np.array_split(step, -(-len(step) // max_step)))
        plans.append(ChunkPlan(steps=steps))
    return plans
