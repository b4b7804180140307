"""Consecutive steps computed at once, every row from the state as of its own step.

A model whose state is counts and latest times (per pair, per user, per item) can score
many small steps together: a row's state before its step is the state at the start of
the run plus the run's rows of *earlier* steps, and those are found with one sort (rows
of the same key) or one exclusive cumulative sum over steps. Rows of the same step never
see each other, exactly as when the steps are fed one at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tempint.data.batch import Interactions

__all__ = [
    "StepRun",
    "earlier_pairs",
    "versioned_cosine",
    "last_rows",
    "decayed_counts_per_step",
]

# beyond this many decay times between a run's first and last event, the vectorised
# decayed counts could overflow float64: they are then replayed step by step
MAX_DECAY_SPAN = 600.0
# rows of a run whose queries are overlaid with the candidate rows written before them
# at once (`versioned_cosine`): bounds the [rows, versions] overlay
BLOCK_ROWS = 128


@dataclass
class StepRun:
    """Consecutive steps laid end to end, the columns a model scores them from at once.

    `step` [N] is each interaction's step (0..num_steps-1, non-decreasing), `step_size`
    [N] the number of interactions of that step and `sizes` those numbers, one per step.
    """

    user: Tensor
    item: Tensor
    t: Tensor  # float64
    prev_item: Tensor
    step: Tensor
    step_size: Tensor
    num_steps: int
    sizes: list[int]

    @classmethod
    def of(cls, steps: Sequence[Interactions]) -> StepRun:
        device = steps[0].user.device
        lengths = [len(s) for s in steps]
        sizes = torch.tensor(lengths, device=device)
        if len(steps) == 1:
            step = torch.zeros(lengths[0], dtype=torch.long, device=device)
        else:
            step = torch.repeat_interleave(torch.arange(len(steps), device=device), sizes)

        def column(name: str) -> Tensor:
            parts = [getattr(s, name) for s in steps]
            return parts[0] if len(parts) == 1 else torch.cat(parts)

        return cls(
            user=column("user"),
            item=column("item"),
            t=column("t").to(torch.float64),
            prev_item=column("prev_item"),
            step=step,
            step_size=sizes[step],
            num_steps=len(steps),
            sizes=lengths,
        )

    def before_steps(self, start: Tensor, per_step: Tensor) -> Tensor:
        """[S] running maximum of `start` and `per_step` over the steps before each."""
        shifted = torch.cat((start.reshape(1), per_step[:-1]))
        return torch.cummax(shifted, 0).values

    def step_max(self, values: Tensor) -> Tensor:
        """[S] the largest of `values` [N] in each step."""
        out = values.new_full((self.num_steps,), float("-inf"))
        return out.scatter_reduce_(0, self.step, values, reduce="amax")

    def __len__(self) -> int:
        return int(self.user.shape[0])


def earlier_pairs(key: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
    """(later [P], earlier [P]): every pair of rows with the same key whose `earlier` row
    belongs to a strictly earlier step than its `later` row. Costs one sort and the
    number of pairs (the sum over keys of the square of their rows, halved)."""
    size = key.shape[0]
    if size == 0:
        return key.new_zeros(0), key.new_zeros(0)
    order = torch.argsort(step, stable=True)
    order = order[torch.argsort(key[order], stable=True)]
    k, s = key[order], step[order]
    position = torch.arange(size, device=key.device)
    first = torch.ones(size, dtype=torch.bool, device=key.device)
    new_key = first.clone()
    new_key[1:] = k[1:] != k[:-1]
    new_step = new_key.clone()
    new_step[1:] |= s[1:] != s[:-1]
    zero = torch.zeros_like(position)
    key_start = torch.cummax(torch.where(new_key, position, zero), 0).values
    step_start = torch.cummax(torch.where(new_step, position, zero), 0).values
    counts = step_start - key_start  # rows of the same key in earlier steps
    later = torch.repeat_interleave(position, counts)
    offsets = torch.arange(later.shape[0], device=key.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts
    )
    earlier = key_start[later] + offsets
    return order[later], order[earlier]


def versioned_cosine(
    query: Tensor,
    table: Tensor,
    item: Tensor,
    step: Tensor,
    written: Tensor,
    block_rows: int = BLOCK_ROWS,
) -> Tensor:
    """Cosine [N, I] of each row's query with every item's candidate row as of its step.

    `table` [I, d] is the candidate table before the first step; each row's step rewrote
    its own item's candidate row, to `written` [W, d] for the first W rows (the rows of
    the last step may be left out: no later step reads them). Row n sees the version of
    item i written by the latest row of a step before its own, else the table's row.
    Rows go in blocks of `block_rows`, each against the table as of its first step with
    the versions written since the start of that step laid over it: a [rows, versions]
    overlay per block, not per run.
    """
    q = F.normalize(query, dim=-1)
    table = F.normalize(table, dim=-1)
    written = F.normalize(written, dim=-1)
    size, versions = q.shape[0], written.shape[0]
    # the step of the next row that rewrites the same item (never: past the last step)
    order = torch.argsort(step, stable=True)
    order = order[torch.argsort(item[order], stable=True)]
    following = torch.full_like(step, int(step.max()) + 1 if size else 0)
    same = item[order[1:]] == item[order[:-1]]
    following[order[:-1]] = torch.where(same, step[order[1:]], following[order[:-1]])
    # rows are in step order: a block's versions start with the first row of its step
    block_starts = torch.arange(0, size, block_rows, device=step.device)
    step_starts = torch.searchsorted(step, step[block_starts]).tolist()
    parts, applied = [], 0
    for lo, start in zip(block_starts.tolist(), step_starts, strict=True):
        hi = min(lo + block_rows, size)
        upto = min(start, versions)
        if upto > applied:  # rows of earlier steps: their latest version of each item
            last = last_rows(item[applied:upto]) + applied
            table = table.index_copy(0, item[last], written[last])
            applied = upto
        scores = q[lo:hi] @ table.T
        if min(hi, versions) > start:
            v_step, v_following = step[start : min(hi, versions)], following[start:versions]
            here = step[lo:hi, None]
            visible = (v_step[None, :] < here) & (here <= v_following[None, : v_step.shape[0]])
            row, version = visible.nonzero(as_tuple=True)
            if row.numel():
                fresh = (q[lo:hi] @ written[start : min(hi, versions)].T)[row, version]
                scores = scores.index_put((row, item[start:][version]), fresh)
        parts.append(scores)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def last_rows(keys: Tensor) -> Tensor:
    """Positions of the last occurrence of each distinct key."""
    order = torch.argsort(keys, stable=True)
    sorted_keys = keys[order]
    last = torch.ones_like(sorted_keys, dtype=torch.bool)
    last[:-1] = sorted_keys[1:] != sorted_keys[:-1]
    return order[last]


def decayed_counts_per_step(
    score: Tensor, ref_t: Tensor, rows: StepRun, num_items: int, decay_seconds: float
) -> Tensor:
    """[S, I] time-decayed item counts before each step (`RecentPopularity`'s scores).

    The counts are kept at a reference time, the latest event seen: before step s that is
    ref_s = max(ref_t, latest time of steps < s), and an event at t_j of an earlier step
    weighs exp(−(ref_s − t_j)/τ) there, as many step-by-step decays compose to.
    """
    num_steps, device = rows.num_steps, score.device
    t = rows.t
    step_latest = torch.full((num_steps,), float("-inf"), dtype=torch.float64, device=device)
    step_latest = step_latest.scatter_reduce(0, rows.step, t, reduce="amax")
    after = torch.cummax(torch.maximum(step_latest, ref_t), 0).values
    before = torch.cat((ref_t.reshape(1), after[:-1]))
    decayed = score[None, :] * torch.exp(-(before - ref_t) / decay_seconds)[:, None]
    if num_steps == 1:
        return decayed
    end = after[-1]
    if float((end - before[0]) / decay_seconds) > MAX_DECAY_SPAN:
        return _decayed_counts_stepwise(score, ref_t, rows, num_items, decay_seconds)
    weight = torch.exp((t - end) / decay_seconds)
    added = score.new_zeros(num_steps * num_items)
    added = added.index_add_(0, rows.step * num_items + rows.item, weight).view(num_steps, -1)
    earlier = torch.cumsum(added, 0) - added
    return decayed + earlier * torch.exp((end - before) / decay_seconds)[:, None]


def _decayed_counts_stepwise(
    score: Tensor, ref_t: Tensor, rows: StepRun, num_items: int, decay_seconds: float
) -> Tensor:
    """The same counts one step at a time: for runs too long for one reference time."""
    out = score.new_empty(rows.num_steps, num_items)
    score, ref = score.clone(), ref_t.clone()
    bounds = list(itertools.accumulate(rows.sizes))
    lo = 0
    for s, hi in enumerate(bounds):
        out[s] = score
        t, item = rows.t[lo:hi], rows.item[lo:hi]
        if hi > lo:
            latest = torch.maximum(t.max(), ref)
            score.mul_(torch.exp(-(latest - ref) / decay_seconds))
            score.index_add_(0, item, torch.exp(-(latest - t) / decay_seconds))
            ref = latest
        lo = hi
    return out
