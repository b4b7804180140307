"""The LightningDataModule: event log -> features -> split -> sampler -> chunks."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import lightning as L
import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from tempint.data.batch import Chunk, Interactions, TimeBatch
from tempint.data.features import (
    DeltaScale,
    cyclic_time,
    earlier_rows,
    interaction_tags,
    node_deltas,
    partner_history,
    previous_item,
)
from tempint.data.samplers import (
    ChunkPlan,
    SequenceSampler,
    TBatchSampler,
    block_plans,
    exact_segments,
    user_step_plans,
)
from tempint.data.splits import Split, make_split
from tempint.errors import ConfigError

__all__ = ["InteractionDataModule", "build_stream", "plan_to_chunk"]

log = logging.getLogger(__name__)

# Scores ranked at once in evaluation (`eval.max_scores_per_block`): a step or block of
# rows is cut so that rows × items stays under it, whatever the catalogue. 2^25 float64
# scores are 256 MB; a model's own [rows, items] temporaries are a few times that.
MAX_SCORES_PER_BLOCK = 1 << 25

# Scores of a run of exact steps replayed at once (`run_plans`): runs this small keep their
# [rows, items] temporaries in cache, which made Wikipedia's heuristics 2-3x faster than
# runs sized by the bound above.
RUN_SCORES = 1 << 18

# Interactions per chunk of per-user steps (`user_step_plans`): a step's size is bounded
# by eval_max_batch_size whatever the chunk, so this only bounds the plan's memory.
USER_BLOCK_ROWS = 8192


def eval_block_rows(num_items: int, max_scores: int = MAX_SCORES_PER_BLOCK) -> int:
    """Interactions per evaluation block: more rows mean fewer t-batches, more memory.

    A block's predictions may be [rows, items] (JODIE's one-hot part), so rows × items
    stays within `max_scores`.
    """
    return max(1, min(8192, int(max_scores) // max(int(num_items), 1)))


def build_stream(
    frame: pl.DataFrame,
    split: Split,
    history_k: int = 0,
    edge_features: np.ndarray | None = None,
) -> Interactions:
    """All feature columns of the stream as CPU tensors; scaling fitted on training rows."""
    users = frame["user_id"].to_numpy().astype(np.int64)
    items = frame["item_id"].to_numpy().astype(np.int64)
    t = frame["timestamp"].to_numpy().astype(np.float64)
    log.info("features of %s interactions", f"{len(t):,}")
    # each node's earlier rows, shared by the features below (one sort per side)
    user_rows, item_rows = earlier_rows(users), earlier_rows(items)
    du, di = node_deltas(frame, user_rows, item_rows)
    train = slice(0, split.train_end)
    user_scale = DeltaScale.fit(du[train])
    item_scale = DeltaScale.fit(di[train])
    columns: dict[str, Any] = {}
    if history_k > 0:
        gap_scale = DeltaScale(0.0, user_scale.std)
        uh, uh_dt = partner_history(users, items, t, history_k)
        ih, ih_dt = partner_history(items, users, t, history_k)
        columns.update(
            user_history=torch.from_numpy(uh),
            user_history_dt=torch.from_numpy(gap_scale(uh_dt)),  # gaps are 0 at padding
            item_history=torch.from_numpy(ih),
            item_history_dt=torch.from_numpy(gap_scale(ih_dt)),
        )
    if edge_features is not None:
        columns["edge_features"] = torch.from_numpy(np.ascontiguousarray(edge_features, np.float32))
    tags = interaction_tags(frame, split.train_end, user_rows, item_rows)
    tags = {k: torch.from_numpy(v) for k, v in tags.items()}
    label = frame["state_label"].to_numpy() if "state_label" in frame.columns else np.zeros(len(t))
    return Interactions(
        user=torch.from_numpy(users),
        item=torch.from_numpy(items),
        t=torch.from_numpy(t),
        state_label=torch.from_numpy(label.astype(np.int64)),
        delta_user=torch.from_numpy(user_scale(du)),
        delta_item=torch.from_numpy(item_scale(di)),
        prev_item=torch.from_numpy(previous_item(frame, user_rows)),
        cyclic=torch.from_numpy(cyclic_time(t)),
        index=torch.arange(len(t)),
        tags=tags,
        **columns,
    )


def plan_to_chunk(stream: Interactions, plan: ChunkPlan) -> Chunk:
    """Gather the columns of a plan's interactions (and its window-local row layout)."""
    # one gather for the whole chunk, then a view per step: a t-batch chunk of a dense
    # stream holds thousands of steps, and a gather per step and column cost more than
    # the model's step
    sizes = [len(idx) for idx in plan.steps]
    parts = []
    if sizes:
        gathered = stream.select(torch.from_numpy(np.concatenate(plan.steps)))
        parts = gathered.split(sizes) if len(sizes) > 1 else [gathered]
    steps = []
    for s, step in enumerate(parts):
        if plan.user_rows is not None:
            step = step.with_rows(
                torch.from_numpy(plan.user_rows[s]), torch.from_numpy(plan.item_rows[s])
            )
        steps.append(step)

    def tensor(x):
        return None if x is None else torch.from_numpy(np.ascontiguousarray(x))

    return Chunk(
        steps=steps,
        local_users=tensor(plan.local_users),
        local_items=tensor(plan.local_items),
        row_window=tensor(plan.row_window),
        scored=None if plan.scored is None else [torch.from_numpy(s) for s in plan.scored],
        block=plan.block,
        run=plan.run,
    )


class _ChunkStream(IterableDataset):
    """The chunks of an epoch, made lazily (shuffled samplers reseed by epoch).

    `count(epoch)` is the number of chunks the epoch yields: its length, so a progress
    bar shows a total and an ETA (Lightning ends an epoch after that many batches).
    """

    def __init__(self, make_chunks, epoch_of=lambda: 0, count=None):
        self.make_chunks = make_chunks
        self.epoch_of = epoch_of
        self.count = count

    def __iter__(self) -> Iterator[Chunk]:
        yield from self.make_chunks(self.epoch_of())

    def __len__(self) -> int:
        if self.count is None:
            raise TypeError("this chunk stream has no length")
        return int(self.count(self.epoch_of()))


class InteractionDataModule(L.LightningDataModule):
    """Loads one event log, splits it 80/10/10 in time and serves chunks per sampler.

    Training chunks come from `sampler`; validation and test are served for streaming
    evaluation: exact steps with no repeated node for global-memory models, or sliding
    windows with `eval_context` unscored context steps for the `sequence` sampler.
    """

    def __init__(
        self,
        name: str = "wikipedia",
        path: str | None = None,
        root: str | None = None,
        columns: Mapping[str, str] | None = None,
        num_users: int | None = None,
        num_items: int | None = None,
        ids: str | None = None,
        separator: str | None = None,
        header: bool | None = None,
        names: list[str] | None = None,
        val: float = 0.1,
        test: float = 0.1,
        history_k: int = 0,
        edge_features: bool = False,
        synthetic: Mapping[str, Any] | None = None,
        sampler: Any = None,
        eval_max_batch_size: int = 512,
        eval_context: int | None = None,
        download: bool = True,
        split: str = "position",
    ) -> None:
        super().__init__()
        if history_k < 0:
            raise ConfigError(f"data.history_k={history_k} must be >= 0 (0 turns histories off)")
        self.name = name
        self.path = path
        self.root = root
        self.columns = dict(columns) if columns else None
        self.declared_users = num_users
        self.declared_items = num_items
        # how the file is read (None: the loader's or the registry's default)
        self.read_options = {
            key: value
            for key, value in dict(ids=ids, separator=separator, header=header, names=names).items()
            if value is not None
        }
        if "names" in self.read_options:
            self.read_options["names"] = list(self.read_options["names"])
        self.val_fraction = val
        self.test_fraction = test
        self.history_k = int(history_k)
        self.use_edge_features = bool(edge_features)
        self.synthetic = dict(synthetic) if synthetic else None
        self.sampler = sampler if sampler is not None else TBatchSampler()
        self.eval_max_batch_size = int(eval_max_batch_size)
        # bound on rows × items of an evaluation step or block (set from the eval config)
        self.max_scores_per_block = MAX_SCORES_PER_BLOCK
        # chunks validation during fit replays (`eval_chunks` kinds); the trainer's
        # entry point sets "blocks" for models ranked in blocks
        self.val_kind = "eval"
        self.eval_context = eval_context
        self.download = download
        self.split_mode = split
        self.stream: Interactions | None = None
        self.split: Split | None = None
        self.source = ""
        # the source's id of each user / item index (None: ids used as given)
        self.user_ids: pl.Series | None = None
        self.item_ids: pl.Series | None = None
        self._train_plans: list[ChunkPlan] | None = None
        self._eval_plans: dict[tuple[str, str], list[ChunkPlan]] = {}
        self._eval_cache: dict[tuple[str, str], list[Chunk]] = {}

    # ---- loading -------------------------------------------------------------------
    def _load_frame(self) -> tuple[pl.DataFrame, np.ndarray | None, int, int]:
        if self.synthetic is not None:
            from tempint.data.synthetic import generate_shape, generate_stream

            spec = dict(self.synthetic)
            shape = spec.pop("shape", None)
            log.info("generating the %s stream (%s)", shape or "custom", spec)
            frame = generate_shape(shape, **spec) if shape else generate_stream(**spec)
            self.source = f"synthetic:{shape or 'custom'}"
            users = int(frame["user_id"].max()) + 1
            items = int(frame["item_id"].max()) + 1
            return frame, None, users, items
        from tempint.data.events import load_events

        options = dict(keep_features=self.use_edge_features, **self.read_options)
        for key, value in (
            ("columns", self.columns),
            ("num_users", self.declared_users),
            ("num_items", self.declared_items),
        ):
            if value is not None:
                options[key] = value
        if self.path:
            log_ = load_events(self.path, **options)
        else:
            from tempint.data.registry import load_dataset

            log_ = load_dataset(self.name, root=self.root, download=self.download, **options)
        self.source = log_.source
        self.user_ids, self.item_ids = log_.user_ids, log_.item_ids
        features = log_.features if self.use_edge_features else None
        return log_.frame, features, log_.num_users, log_.num_items

    def setup(self, stage: str | None = None) -> None:
        if self.stream is not None:
            return
        frame, features, self.num_users, self.num_items = self._load_frame()
        t = frame["timestamp"].to_numpy()
        self.split = make_split(
            self.split_mode,
            frame.height,
            self.val_fraction,
            self.test_fraction,
            timestamps=t,
            source=self.source,
        )
        self.stream = build_stream(frame, self.split, self.history_k, features)
        du, di = node_deltas(frame)
        self._scales = (
            DeltaScale.fit(du[: self.split.train_end]),
            DeltaScale.fit(di[: self.split.train_end]),
        )
        self._users = self.stream.user.numpy()
        self._items = self.stream.item.numpy()
        self._t = self.stream.t.numpy()
        self._node_keys: dict[str, np.ndarray] = {}  # made on first use by `probe`
        log.info(
            "%s: %d users, %d items, %d interactions (train %d, val %d, test %d)",
            self.source,
            self.num_users,
            self.num_items,
            frame.height,
            len(self.split.train),
            len(self.split.val),
            len(self.split.test),
        )

    # ---- plans -----------------------------------------------------------------------
    def train_plans(self, epoch: int = 0) -> list[ChunkPlan]:
        """The training chunks of an epoch; deterministic samplers are planned once."""
        deterministic = not hasattr(self.sampler, "seed")
        if deterministic and self._train_plans is not None:
            return self._train_plans
        plans = self.sampler.plan(
            self._users, self._items, self._t, 0, self.split.train_end, epoch=epoch
        )
        if deterministic:
            self._train_plans = plans
        return plans

    def num_train_chunks(self, epoch: int = 0) -> int:
        """Chunks of a training epoch, counted without planning it where the sampler can."""
        if self._train_plans is not None:
            return len(self._train_plans)
        if hasattr(self.sampler, "num_chunks"):
            return self.sampler.num_chunks(self._t, 0, self.split.train_end)
        return len(self.train_plans(epoch))

    @property
    def windowed(self) -> bool:
        return isinstance(self.sampler, SequenceSampler)

    def _rows(self, stage: str) -> range:
        return {"train": self.split.train, "val": self.split.val, "test": self.split.test}[stage]

    def eval_plans(self, stage: str) -> list[ChunkPlan]:
        rows = self._rows(stage)
        if self.windowed:
            context = self.eval_context
            if context is None:
                context = self.sampler.length // 2
            return self.sampler.eval_plan(
                self._users, self._items, rows.start, rows.stop, context, self.eval_step_rows()
            )
        return self.exact_plans(stage)

    def bound_scores(self, max_scores: int) -> None:
        """Set `max_scores_per_block`; chunks gathered under another bound are dropped."""
        if int(max_scores) != self.max_scores_per_block:
            self.max_scores_per_block = int(max_scores)
            self._eval_cache.clear()
            self._eval_plans.clear()

    def eval_step_rows(self) -> int:
        """Interactions per evaluation step: `eval_max_batch_size`, fewer when the
        catalogue is so large that their [rows, items] scores would pass the bound."""
        by_scores = int(self.max_scores_per_block) // max(int(self.num_items), 1)
        return max(1, min(self.eval_max_batch_size, by_scores))

    def exact_plans(self, stage: str) -> list[ChunkPlan]:
        """Exact streaming steps over a split, whatever the training sampler."""
        rows = self._rows(stage)
        return exact_segments(
            self._users, self._items, rows.start, rows.stop, self.eval_step_rows()
        )

    def run_plans(self, stage: str) -> list[ChunkPlan]:
        """Exact steps grouped into runs of consecutive steps of `RUN_SCORES` scores (or
        the bound, if lower): for models that replay a run at once (`replays_steps`)."""
        rows = eval_block_rows(self.num_items, min(RUN_SCORES, self.max_scores_per_block))
        runs: list[ChunkPlan] = []
        size = rows
        for plan in self.exact_plans(stage):
            step = plan.steps[0]
            if size + len(step) > rows:
                runs.append(ChunkPlan(steps=[], run=True))
                size = 0
            runs[-1].steps.append(step)
            size += len(step)
        return runs

    def block_plans(self, stage: str) -> list[ChunkPlan]:
        """Blocks replayed in t-batches and ranked together (`tempint.eval.blocks`)."""
        rows = self._rows(stage)
        return block_plans(
            self._users,
            self._items,
            rows.start,
            rows.stop,
            eval_block_rows(self.num_items, self.max_scores_per_block),
        )

    def user_plans(self, stage: str) -> list[ChunkPlan]:
        """Steps with no user twice, items free: for models whose state is per user only."""
        rows = self._rows(stage)
        return user_step_plans(
            self._users, rows.start, rows.stop, USER_BLOCK_ROWS, self.eval_step_rows()
        )

    def contiguous_plans(self, stage: str, size: int | None = None) -> list[ChunkPlan]:
        """Plain consecutive steps, for models whose scores are exact whatever a step holds."""
        rows = self._rows(stage)
        size = size or self.eval_step_rows()
        return [
            ChunkPlan(steps=[np.arange(lo, min(lo + size, rows.stop))])
            for lo in range(rows.start, rows.stop, size)
        ]

    def warmup_plans(self, size: int = 50_000) -> list[ChunkPlan]:
        """Large consecutive chunks of the training split, for order-free heuristics."""
        end = self.split.train_end
        return [ChunkPlan(steps=[np.arange(lo, min(lo + size, end))]) for lo in range(0, end, size)]

    def chunks(self, plans: list[ChunkPlan]) -> Iterator[Chunk]:
        for plan in plans:
            yield plan_to_chunk(self.stream, plan)

    # gathered evaluation chunks are kept when they fit in this many bytes
    EVAL_CACHE_BYTES = 512 * 2**20

    def eval_chunks(
        self, stage: str, kind: str = "eval", device: torch.device | str | None = None
    ) -> Iterable[Chunk]:
        """Evaluation chunks of a split, gathered once and reused by every pass.

        `kind`: "eval" (the protocol's steps for this sampler), "exact" (exact steps
        whatever the sampler), "runs" (exact steps grouped in runs replayed at once),
        "contiguous" (plain consecutive steps), "blocks" (t-batches
        of consecutive blocks, for models ranked in blocks) or "users" (steps with no user
        twice, for models whose state is per user). With `device`, the chunks are kept
        there: a GPU run copies its evaluation stream once, not at every validation.
        """
        device = torch.device("cpu" if device is None else device)
        key = (stage, kind, str(device))
        if key in self._eval_cache:
            return self._eval_cache[key]
        plans = self.eval_plans_of(stage, kind)
        rows = sum(p.num_interactions for p in plans)
        features = self.stream.edge_features
        per_row = (2 * self.history_k + 24) * 8 + (0 if features is None else features[0].nbytes)
        if rows * per_row > self.EVAL_CACHE_BYTES:
            return (chunk.to(device) for chunk in self.chunks(plans))
        self._eval_cache[key] = [chunk.to(device) for chunk in self.chunks(plans)]
        return self._eval_cache[key]

    def eval_plans_of(self, stage: str, kind: str = "eval") -> list[ChunkPlan]:
        """The plans behind `eval_chunks(stage, kind)`, made once."""
        key = (stage, kind)
        if key not in self._eval_plans:
            planner = {
                "eval": self.eval_plans,
                "exact": self.exact_plans,
                "runs": self.run_plans,
                "contiguous": self.contiguous_plans,
                "blocks": self.block_plans,
                "users": self.user_plans,
            }[kind]
            self._eval_plans[key] = planner(stage)
        return self._eval_plans[key]

    def probe(
        self,
        users: np.ndarray,
        items: np.ndarray,
        position: np.ndarray,
        before: np.ndarray | None = None,
    ) -> Interactions:
        """Interactions (user, item) at the time of the stream rows `position`, with the
        columns the data layer would give them from the stream strictly before the rows
        `before` (default: `position`): gaps and previous item. For negative pairs of
        another user (DyGLib), and for a batch scored from the state before it (TGB),
        whose rows may not read the batch's earlier interactions. Partner histories are
        not rebuilt."""
        if self.history_k > 0:
            raise ConfigError(
                "negative pairs of other users need no partner histories; "
                "DyGLib's protocol does not run models with history_k > 0"
            )
        n = len(self._t)
        t = self._t[position]
        cutoff = position if before is None else before

        def last_before(nodes, side):
            sorted_keys = self._sorted_node_keys(side)
            idx = np.searchsorted(sorted_keys, nodes.astype(np.int64) * n + cutoff) - 1
            found = idx >= 0
            found[found] &= sorted_keys[idx[found]] // n == nodes[found]
            return np.where(found, sorted_keys[np.maximum(idx, 0)] % n, -1)

        last_u = last_before(users, "user")
        last_i = last_before(items, "item")
        du = np.where(last_u >= 0, t - self._t[np.maximum(last_u, 0)], 0.0)
        di = np.where(last_i >= 0, t - self._t[np.maximum(last_i, 0)], 0.0)
        base = self.stream.select(torch.from_numpy(position))
        edge = base.edge_features
        return Interactions(
            user=torch.from_numpy(users.astype(np.int64)),
            item=torch.from_numpy(items.astype(np.int64)),
            t=base.t,
            state_label=torch.zeros_like(base.state_label),
            delta_user=torch.from_numpy(self._scales[0](du)),
            delta_item=torch.from_numpy(self._scales[1](di)),
            prev_item=torch.from_numpy(
                np.where(last_u >= 0, self._items[np.maximum(last_u, 0)], -1)
            ),
            cyclic=base.cyclic,
            index=base.index,
            edge_features=None if edge is None else torch.zeros_like(edge),
            tags=base.tags,
        )

    def _sorted_node_keys(self, side: str) -> np.ndarray:
        """node · N + position of every interaction of one side, sorted: one sort of the
        stream, searched by every probe (one per evaluation batch and strategy)."""
        if side not in self._node_keys:
            column = self._users if side == "user" else self._items
            order = np.argsort(column, kind="stable")
            self._node_keys[side] = column[order].astype(np.int64) * len(self._t) + order
        return self._node_keys[side]

    def _batch_step(self, lo: int, hi: int) -> Interactions:
        """Rows [lo, hi) as one step whose columns read the stream before `lo` only: a
        batch scored from the state before it must not learn, from its rows' previous
        item or gaps, what happened earlier in the batch. Models reading partner
        histories (history_k > 0) keep the stream's columns, which do."""
        rows = np.arange(lo, hi)
        real = self.stream.select(torch.from_numpy(rows))
        if self.history_k > 0:
            return real
        step = self.probe(self._users[rows], self._items[rows], rows, np.full_like(rows, lo))
        step.state_label = real.state_label
        step.edge_features = real.edge_features
        return step

    def negatives_path(self, stage: str):
        """Where a split's fixed negatives live: `<name>_<stage>_ns.npy` beside the data
        (the data root for registered datasets); None for synthetic streams."""
        from pathlib import Path

        from tempint.data.registry import data_root

        if self.synthetic is not None:
            return None
        if self.path:
            return Path(self.path).with_name(f"{Path(self.path).stem}_{stage}_ns.npy")
        return data_root(self.root) / f"{self.name}_{stage}_ns.npy"

    def eval_batches(
        self, stage: str, batch_size: int, replay: str | None = "exact"
    ) -> list[TimeBatch]:
        """Batches of `batch_size` consecutive interactions of a split, each scored at once
        from the state before it, then fed to the model in `replay` chunks ("exact" or
        "contiguous" steps; None: the scored step itself updates the model)."""
        if self.windowed:
            raise ConfigError(
                "eval.batch_size > 1 scores global memory; the sequence sampler's windows "
                "have none: use eval.batch_size=1 or another sampler"
            )
        rows = self._rows(stage)
        out = []
        for lo in range(rows.start, rows.stop, batch_size):
            hi = min(lo + batch_size, rows.stop)
            scored = Chunk(steps=[self._batch_step(lo, hi)])
            chunks = None
            if replay == "exact":
                plans = exact_segments(self._users, self._items, lo, hi, self.eval_step_rows())
                chunks = list(self.chunks(plans))
            elif replay == "contiguous":  # the batch as it happened
                chunks = [plan_to_chunk(self.stream, ChunkPlan(steps=[np.arange(lo, hi)]))]
            out.append(TimeBatch(scored, chunks))
        return out

    # ---- loaders ---------------------------------------------------------------------
    def _current_epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    def _device(self) -> torch.device:
        """The device of the trainer this datamodule serves (the CPU without one)."""
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _loader(self, make_chunks, count, pin_memory: bool = False) -> DataLoader:
        dataset = _ChunkStream(make_chunks, self._current_epoch, count)
        return DataLoader(dataset, batch_size=None, num_workers=0, pin_memory=pin_memory)

    def train_dataloader(self) -> DataLoader:
        # pinned chunks let the module's non-blocking copies overlap with queued GPU work
        pin = self._device().type == "cuda"
        return self._loader(
            lambda epoch: self.chunks(self.train_plans(epoch)), self.num_train_chunks, pin
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(
            lambda epoch: self.eval_chunks("val", self.val_kind, self._device()),
            lambda epoch: len(self.eval_plans_of("val", self.val_kind)),
        )

    def test_dataloader(self) -> DataLoader:
        return self._loader(
            lambda epoch: self.eval_chunks("test", device=self._device()),
            lambda epoch: len(self.eval_plans_of("test")),
        )
