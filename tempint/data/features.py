"""Per-interaction features, each computed from the stream strictly before the interaction.

Pure functions of a time-sorted event frame (columns `user_id`, `item_id`, `timestamp`).
Nothing here looks ahead: every column at row n depends on rows < n only, and scaling
statistics come from the training split alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from numpy.lib.stride_tricks import sliding_window_view

from tempint.data.batch import HISTORY_BUCKETS, history_tag

__all__ = [
    "DAY",
    "WEEK",
    "DeltaScale",
    "node_deltas",
    "previous_item",
    "cyclic_time",
    "partner_history",
    "interaction_tags",
]

DAY = 86_400.0
WEEK = 7 * DAY


@dataclass(frozen=True)
class DeltaScale:
    """z-score of time gaps with training-split statistics (JODIE scales gaps the same way)."""

    mean: float
    std: float

    @classmethod
    def fit(cls, deltas: np.ndarray) -> DeltaScale:
        if deltas.size == 0:
            return cls(0.0, 1.0)
        std = float(deltas.std())
        return cls(float(deltas.mean()), std if std > 0 and math.isfinite(std) else 1.0)

    def __call__(self, deltas: np.ndarray) -> np.ndarray:
        return ((deltas - self.mean) / self.std).astype(np.float32)


def node_deltas(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Raw seconds since the user's / item's previous interaction; 0 at a node's first."""
    out = frame.select(
        (pl.col("timestamp") - pl.col("timestamp").shift(1).over("user_id"))
        .fill_null(0.0)
        .alias("du"),
        (pl.col("timestamp") - pl.col("timestamp").shift(1).over("item_id"))
        .fill_null(0.0)
        .alias("di"),
    )
    return out["du"].to_numpy(), out["di"].to_numpy()


def previous_item(frame: pl.DataFrame) -> np.ndarray:
    """Item of the user's previous interaction, -1 before the user's first."""
    return (
        frame.select(pl.col("item_id").shift(1).over("user_id").fill_null(-1))
        .to_series()
        .to_numpy()
        .astype(np.int64)
    )


def cyclic_time(t: np.ndarray) -> np.ndarray:
    """[N, 4]: cos/sin of 2πt/day and of 2πt/week (time of day and day of week)."""
    day = 2 * np.pi * (t % DAY) / DAY
    week = 2 * np.pi * (t % WEEK) / WEEK
    return np.stack([np.cos(day), np.sin(day), np.cos(week), np.sin(week)], axis=1).astype(
        np.float32
    )


def partner_history(
    owner: np.ndarray, partner: np.ndarray, t: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k most recent partners of each row's owner strictly before the row.

    Returns partners [N, k] (most recent first, -1 padded) and raw gaps t_n - t_partner
    [N, k] (0 padded). Rows are grouped by owner with a stable sort and laid out newest
    first in one buffer with k padding slots after each owner's block, so a row's
    history is the k slots right after its own: one strided gather, O(N·k), no loop.
    """
    n = owner.shape[0]
    if n == 0 or k == 0:
        return np.full((n, k), -1, dtype=np.int64), np.zeros((n, k), dtype=np.float64)
    order = np.argsort(owner, kind="stable")
    owner_sorted = owner[order]
    first = np.ones(n, dtype=bool)
    first[1:] = owner_sorted[1:] != owner_sorted[:-1]
    group = np.cumsum(first) - 1
    size = n + k * (int(group[-1]) + 1)
    slot = size - 1 - (np.arange(n) + k * (group + 1))  # reversed: newest first
    partner_buf = np.full(size, -1, dtype=np.int64)
    partner_buf[slot] = partner[order]
    t_buf = np.zeros(size, dtype=np.float64)
    t_buf[slot] = t[order]
    begin = np.empty(n, dtype=np.int64)
    begin[order] = slot + 1
    partners = sliding_window_view(partner_buf, k)[begin]
    gaps = sliding_window_view(t_buf, k)[begin]
    np.subtract(t[:, None], gaps, out=gaps)
    rank = np.empty(n, dtype=np.int64)  # earlier rows of the same owner
    rank[order] = np.arange(n) - np.flatnonzero(first)[group]
    np.copyto(gaps, 0.0, where=np.arange(1, k + 1) > rank[:, None])
    return partners, gaps


def interaction_tags(frame: pl.DataFrame, train_end: int) -> dict[str, np.ndarray]:
    """Boolean tags of every row from the stream strictly before it.

    `repeat`/`new`: the (user, item) pair occurred earlier or not; `last`: same item as
    the user's previous interaction; `hist_*`: how many earlier interactions the user
    has; `unseen_item`: the item has no interaction among the first `train_end` rows.
    """
    n = frame.height
    pos = np.arange(n)
    cols = frame.select(
        pl.int_range(pl.len()).over(["user_id", "item_id"]).alias("pair_rank"),
        pl.int_range(pl.len()).over("user_id").alias("user_rank"),
        pl.col("item_id").shift(1).over("user_id").fill_null(-1).alias("prev_item"),
    )
    item = frame["item_id"].to_numpy()
    first_pos = np.full(int(item.max()) + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first_pos, item, pos)
    pair_rank = cols["pair_rank"].to_numpy()
    user_rank = cols["user_rank"].to_numpy()
    tags = {
        "repeat": pair_rank > 0,
        "new": pair_rank == 0,
        "last": cols["prev_item"].to_numpy() == item,
    }
    for lo, hi in HISTORY_BUCKETS:
        upper = user_rank <= hi if hi is not None else np.ones(n, dtype=bool)
        tags[history_tag(lo, hi)] = (user_rank >= lo) & upper
    tags["unseen_item"] = first_pos[item] >= train_end
    return tags
