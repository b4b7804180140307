"""What each positive is ranked against under the field's protocols, fixed per stream.

TGB ranks a positive against every item except the other items its user interacts with
at the same timestamp (`same_time_exclusions`); TGB-Seq against 100 items drawn once and
stored beside the data (`sampled_negatives`), so that every model ranks the same
candidates. Both are keyed by stream position, so one table serves validation and test.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tempint.errors import DataError

__all__ = ["PositionPairs", "same_time_exclusions", "sampled_negatives", "draw_tgb_seq"]

log = logging.getLogger(__name__)


class PositionPairs:
    """Items attached to stream positions: any number per position, looked up per batch."""

    def __init__(self, position: Tensor, item: Tensor) -> None:
        order = torch.argsort(position, stable=True)
        self.position = position.long()[order]
        self.item = item.long()[order]

    def __len__(self) -> int:
        return int(self.position.numel())

    def lookup(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """(row, item) pairs: `row` indexes `positions` [B], `item` is attached to it."""
        table = self.position.to(positions.device)
        lo = torch.searchsorted(table, positions.long())
        hi = torch.searchsorted(table, positions.long(), right=True)
        counts = hi - lo
        rows = torch.repeat_interleave(
            torch.arange(len(positions), device=positions.device), counts
        )
        starts = torch.repeat_interleave(lo - (counts.cumsum(0) - counts), counts)
        slots = torch.arange(rows.numel(), device=positions.device) + starts
        return rows, self.item.to(positions.device)[slots]


def same_time_exclusions(users, items, t, ranges) -> PositionPairs:
    """For each interaction of `ranges` (row ranges, e.g. validation and test), the other
    items its user interacts with at the same timestamp in the same range.

    TGB draws a positive's negatives from all destinations minus those (its "conflicting"
    positives), computed within the split being evaluated.
    """
    pos_parts, item_parts = [], []
    for rows in ranges:
        lo, hi = rows.start, rows.stop
        u, i, ts = users[lo:hi], items[lo:hi], t[lo:hi]
        order = np.lexsort((ts, u))  # by user, then time
        key_u, key_t = u[order], ts[order]
        new_group = np.ones(len(order), dtype=bool)
        new_group[1:] = (key_u[1:] != key_u[:-1]) | (key_t[1:] != key_t[:-1])
        group = np.cumsum(new_group) - 1
        sizes = np.bincount(group)
        multi = sizes[group] > 1
        if not multi.any():
            continue
        members = order[multi]  # row offsets in groups of two or more, grouped
        g = group[multi]
        # all ordered pairs within a group: small groups, so a dense expansion per group
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        lengths = np.diff(np.r_[starts, len(g)])
        for size in np.unique(lengths):
            first = starts[lengths == size]
            block = members[first[:, None] + np.arange(size)[None, :]]  # [G, size]
            a = np.repeat(block, size, axis=1).reshape(-1)
            b = np.tile(block, (1, size)).reshape(-1)
            keep = i[a] != i[b]
            pos_parts.append(a[keep] + lo)
            item_parts.append(i[b[keep]])
    if not pos_parts:
        empty = torch.zeros(0, dtype=torch.long)
        return PositionPairs(empty, empty)
    return PositionPairs(
        torch.from_numpy(np.concatenate(pos_parts)), torch.from_numpy(np.concatenate(item_parts))
    )


def draw_tgb_seq(positives: np.ndarray, num_items: int, k: int = 100, seed: int = 0) -> np.ndarray:
    """TGB-Seq's rule: k destinations per positive drawn uniformly (seed 0), each drawn
    again only while it equals the positive. Returns [n, k] int64."""
    if num_items < 2:
        raise DataError("sampled negatives need at least two items")
    rng = np.random.default_rng(seed)
    out = rng.integers(0, num_items, size=(len(positives), k))
    clash = out == positives[:, None]
    while clash.any():
        out[clash] = rng.integers(0, num_items, size=int(clash.sum()))
        clash = out == positives[:, None]
    return out.astype(np.int64)


def sampled_negatives(
    path: Path | None, positives: np.ndarray, num_items: int, k: int = 100, seed: int = 0
) -> np.ndarray:
    """The fixed negatives [n, k] of a split: read from `path` when the dataset ships
    them, else drawn by `draw_tgb_seq` and stored there (atomically) for the next model."""
    if path is not None and path.exists():
        negatives = np.load(path)
        if negatives.shape != (len(positives), k):
            raise DataError(
                f"{path}: negatives of shape {negatives.shape}, expected {(len(positives), k)}; "
                "delete the file to draw them again or fix eval.num_negatives"
            )
        if negatives.min() < 0 or negatives.max() >= num_items:
            raise DataError(f"{path}: negative item ids outside [0, {num_items})")
        return negatives.astype(np.int64)
    negatives = draw_tgb_seq(positives, num_items, k, seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        with open(part, "wb") as f:
            np.save(f, negatives)
        os.replace(part, path)
        log.info("drew %d x %d negatives into %s", *negatives.shape, path)
    return negatives
