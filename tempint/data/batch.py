"""Column tensors of an interaction stream, and the batches and chunks cut from it.

Everything a model may read about an interaction is a column here, computed once by
the data layer from the stream strictly before that interaction. A batch is the same
structure indexed by positions, so models never see the stream itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

__all__ = ["Interactions", "Chunk", "TimeBatch", "TAG_NAMES"]

# Buckets of the user's number of earlier interactions, (lo, hi) inclusive, hi None: open.
HISTORY_BUCKETS = ((0, 0), (1, 4), (5, 49), (50, None))


def history_tag(lo: int, hi: int | None) -> str:
    """The tag of a history bucket: hist_0, hist_1-4, ..., hist_50+."""
    return f"hist_{lo}" if hi == lo else (f"hist_{lo}+" if hi is None else f"hist_{lo}-{hi}")


# Per-interaction tags of the evaluation breakdown, each a boolean column in `tags`.
TAG_NAMES = (
    "repeat",  # the (user, item) pair occurred earlier in the stream
    "new",  # first occurrence of the pair
    "last",  # same item as the user's previous interaction
    *(history_tag(lo, hi) for lo, hi in HISTORY_BUCKETS),  # the user's earlier interactions
    "unseen_item",  # the item never occurred in the training split
)


@dataclass
class Interactions:
    """Columns of N interactions in time order (a whole stream or a batch of it).

    Shapes: [N] unless noted. `delta_*` are the time since the node's previous
    interaction, scaled with training-split statistics (0 for a node's first event).
    History columns are [N, k], partners before the interaction, most recent first,
    padded with -1 (partner) and 0 (gap). `user_row` / `item_row` address memory rows:
    equal to the ids for global memory, window-local slots for the sequence sampler.
    """

    user: Tensor  # long
    item: Tensor  # long
    t: Tensor  # float64 seconds
    state_label: Tensor  # long
    delta_user: Tensor  # float32
    delta_item: Tensor  # float32
    prev_item: Tensor  # long, -1 before the user's first interaction
    cyclic: Tensor  # [N, 4] float32: cos/sin day, cos/sin week
    index: Tensor  # long, position in the full stream
    edge_features: Tensor | None = None  # [N, F] float32
    user_history: Tensor | None = None  # [N, k] long (item ids)
    user_history_dt: Tensor | None = None  # [N, k] float32, scaled gaps
    item_history: Tensor | None = None  # [N, k] long (user ids)
    item_history_dt: Tensor | None = None  # [N, k] float32
    tags: dict[str, Tensor] = field(default_factory=dict)  # name -> [N] bool
    user_row: Tensor | None = None
    item_row: Tensor | None = None

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @property
    def user_rows(self) -> Tensor:
        return self.user if self.user_row is None else self.user_row

    @property
    def item_rows(self) -> Tensor:
        return self.item if self.item_row is None else self.item_row

    def select(self, idx: Tensor) -> Interactions:
        """The interactions at positions `idx` of this structure (any integer index)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                out[f.name] = None
            elif f.name == "tags":
                out[f.name] = {k: v[idx] for k, v in value.items()}
            else:
                out[f.name] = value[idx]
        return Interactions(**out)

    def split(self, sizes: Sequence[int]) -> list[Interactions]:
        """Consecutive parts of `sizes` rows each, as views of these columns."""
        columns = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                columns[f.name] = [None] * len(sizes)
            elif f.name == "tags":
                per_tag = {k: torch.split(v, list(sizes)) for k, v in value.items()}
                columns[f.name] = [{k: v[p] for k, v in per_tag.items()} for p in range(len(sizes))]
            else:
                columns[f.name] = torch.split(value, list(sizes))
        return [
            Interactions(**{name: parts[p] for name, parts in columns.items()})
            for p in range(len(sizes))
        ]

    @classmethod
    def concat(cls, parts: Sequence[Interactions]) -> Interactions:
        """The rows of several structures one after another (they share their columns)."""
        out = {}
        for f in fields(cls):
            values = [getattr(p, f.name) for p in parts]
            if values[0] is None:
                out[f.name] = None
            elif f.name == "tags":
                out[f.name] = {k: torch.cat([v[k] for v in values]) for k in values[0]}
            else:
                out[f.name] = torch.cat(values)
        return cls(**out)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Interactions:
        if self.user.device == torch.device(device):
            return self
        return self._apply(lambda x: x.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Interactions:
        """The columns in page-locked memory, so copies to a GPU can run asynchronously
        (DataLoader(pin_memory=True) calls this)."""
        return self._apply(lambda x: x.pin_memory())

    def _apply(self, fn) -> Interactions:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                out[f.name] = None
            elif f.name == "tags":
                out[f.name] = {k: fn(v) for k, v in value.items()}
            else:
                out[f.name] = fn(value)
        return Interactions(**out)

    def with_rows(self, user_row: Tensor, item_row: Tensor) -> Interactions:
        return replace(self, user_row=user_row, item_row=item_row)


@dataclass
class Chunk:
    """One optimiser step of training: `steps` are processed in order, each in parallel.

    t-batch: the t-batches of one time window. chrono: one step of consecutive events.
    sequence: L steps, step s holding interaction s of each of B windows; then
    `local_users` / `local_items` [R] give the global id of each window-local memory row
    (the steps' `user_row` / `item_row` index them; window b owns rows [b·L, (b+1)·L)
    on each side and `row_window` [R] names each row's window). In evaluation, `scored` marks the
    interactions to rank (the first steps of a sliding window are context only).
    """

    steps: list[Interactions]
    local_users: Tensor | None = None
    local_items: Tensor | None = None
    row_window: Tensor | None = None  # [R] window of each local row (both sides)
    scored: list[Tensor] | None = None  # per step, [B] bool: evaluate this interaction
    block: bool = False  # t-batches of one block, ranked together (tempint.eval.blocks)
    run: bool = False  # consecutive exact steps (InteractionModel.replay_steps)

    @property
    def num_windows(self) -> int:
        return len(self.steps[0]) if self.local_users is not None else 0

    @property
    def num_interactions(self) -> int:
        if self.scored is not None:
            return int(sum(int(s.sum()) for s in self.scored))
        return sum(len(s) for s in self.steps)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Chunk:
        if self.steps[0].user.device == torch.device(device):
            return self
        return self._apply(lambda x: x.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Chunk:
        """Every tensor of the chunk in page-locked memory (see `Interactions.pin_memory`)."""
        return self._apply(lambda x: x.pin_memory())

    def _apply(self, fn) -> Chunk:
        def move(x):
            return None if x is None else fn(x)

        return Chunk(
            steps=[s._apply(fn) for s in self.steps],
            local_users=move(self.local_users),
            local_items=move(self.local_items),
            row_window=move(self.row_window),
            scored=None if self.scored is None else [move(s) for s in self.scored],
            block=self.block,
            run=self.run,
        )


@dataclass
class TimeBatch:
    """One evaluation batch of B consecutive interactions (TGB's protocol).

    `scored` is one step holding all of them: the model scores it from its state before
    the batch, and its columns (previous item, gaps) read the stream before the batch
    too (`InteractionDataModule.eval_batches`). `replay` are the chunks that then feed the batch to the model exactly (its
    usual evaluation steps, unscored); None when one forward of `scored` updates the
    model as its interactions one by one would (`Capabilities.step_updates_commute`).
    """

    scored: Chunk
    replay: list[Chunk] | None = None

    @property
    def num_interactions(self) -> int:
        return self.scored.num_interactions

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TimeBatch:
        replay = None if self.replay is None else [c.to(device, non_blocking) for c in self.replay]
        return TimeBatch(self.scored.to(device, non_blocking), replay)
