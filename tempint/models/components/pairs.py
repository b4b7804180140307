"""Per-pair stream statistics stored only for the pairs seen: state linear in events.

A dense [rows, cols] table (users × items, items × items) cannot be built for real
catalogues: 10^6 users × 10^5 items is 10^11 entries. Every pair that ever occurred is
instead one entry of flat buffers kept sorted by the key row · cols + col, so a row's
pairs are one contiguous slice: all of a user's past items are found with two binary
searches, and every lookup and update is a vectorised torch op.

New pairs first go to a small sorted `recent` level that is merged into the main level
once it holds an eighth of it: inserting into one sorted array would copy all P pairs
at every step, which on a stream of small exact steps costs more than the step itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PairTable"]

FIELDS = ("keys", "last_t", "count")
# the recent level is merged into the main one beyond max(this, main size / 8) pairs
MIN_RECENT = 4096


class PairTable(nn.Module):
    """Last time and number of occurrences of each (row, col) pair seen so far.

    Buffers (carried by `.to()` and checkpoints, sized by the number of distinct pairs),
    per level (main, and `recent_*`): `keys` [P] int64 sorted, `last_t` [P] float64
    (-inf when no time was given), `count` [P] float32. A pair is in one level only.
    """

    def __init__(self, num_cols: int) -> None:
        super().__init__()
        self.num_cols = int(num_cols)
        for prefix in ("", "recent_"):
            self.register_buffer(prefix + "keys", torch.zeros(0, dtype=torch.long))
            self.register_buffer(prefix + "last_t", torch.zeros(0, dtype=torch.float64))
            self.register_buffer(prefix + "count", torch.zeros(0))

    def __len__(self) -> int:
        return int(self.keys.shape[0] + self.recent_keys.shape[0])

    def reset_state(self) -> None:
        for prefix in ("", "recent_"):
            for name in FIELDS:
                setattr(self, prefix + name, getattr(self, prefix + name).new_zeros(0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # a checkpoint holds as many pairs as its stream had: take its sizes, then load
        for name in list(self._buffers):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, getattr(self, name).new_empty(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _level(self, prefix: str) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(getattr(self, prefix + name) for name in FIELDS)

    # ---- reading ---------------------------------------------------------------------------
    def lookup(self, rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
        """(count [N], last time [N]) of each (row, col) pair: 0 and -inf if never seen."""
        key = rows.long() * self.num_cols + cols.long()
        count = torch.zeros(key.shape, dtype=self.count.dtype, device=key.device)
        last_t = torch.full(key.shape, float("-inf"), dtype=torch.float64, device=key.device)
        for keys, times, counts in (self._level(""), self._level("recent_")):
            if keys.numel():
                slot = torch.searchsorted(keys, key).clamp_(max=keys.numel() - 1)
                found = keys[slot] == key
                count = torch.where(found, counts[slot], count)
                last_t = torch.where(found, times[slot], last_t)
        return count, last_t

    def row_pairs(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Every seen pair of each row, in no particular order: (which input row [M],
        col [M], last time [M], count [M])."""
        parts = [self._row_slice(rows, *self._level(p)) for p in ("", "recent_")]
        return tuple(torch.cat(columns) for columns in zip(*parts))

    def _row_slice(self, rows: Tensor, keys: Tensor, last_t: Tensor, count: Tensor):
        rows = rows.long()
        bounds = torch.searchsorted(keys, torch.stack((rows, rows + 1)) * self.num_cols)
        lengths = bounds[1] - bounds[0]
        ends = torch.cumsum(lengths, 0)
        total = int(ends[-1]) if ends.numel() else 0
        position = torch.arange(total, device=rows.device)
        which = torch.searchsorted(ends, position, right=True)
        slot = position + (bounds[0] - ends + lengths)[which]
        col = keys[slot] - rows[which] * self.num_cols
        return which, col, last_t[slot], count[slot]

    def row_lengths(self, rows: Tensor) -> Tensor:
        """Number of distinct pairs [N] of each row."""
        rows = rows.long()
        edges = torch.stack((rows, rows + 1)) * self.num_cols
        a = torch.searchsorted(self.keys, edges)
        b = torch.searchsorted(self.recent_keys, edges)
        return a[1] - a[0] + b[1] - b[0]

    # ---- writing ---------------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, rows: Tensor, cols: Tensor, t: Tensor | None = None) -> None:
        """Count the pairs (row[n], col[n]) and keep their latest time `t` [N]."""
        if rows.numel() == 0:
            return
        key, order = torch.sort(rows.long() * self.num_cols + cols.long())
        unique, inverse, n = torch.unique_consecutive(key, return_inverse=True, return_counts=True)
        n = n.to(self.count.dtype)
        latest = torch.full(
            (unique.shape[0],), float("-inf"), dtype=torch.float64, device=key.device
        )
        if t is not None:
            latest.scatter_reduce_(0, inverse, t.to(torch.float64)[order], reduce="amax")
        for prefix in ("", "recent_"):
            new = self._update(prefix, unique, latest, n)
            if new is None:
                return
            unique, latest, n = unique[new], latest[new], n[new]
        self._insert("recent_", unique, latest, n)
        if self.recent_keys.shape[0] > max(MIN_RECENT, self.keys.shape[0] // 8):
            self._insert("", *self._level("recent_"))
            for name in FIELDS:
                setattr(self, "recent_" + name, getattr(self, name).new_zeros(0))

    def _update(self, prefix: str, key: Tensor, latest: Tensor, n: Tensor) -> Tensor | None:
        """Add to the pairs of one level; returns the mask of keys it lacks (None: none)."""
        keys, last_t, count = self._level(prefix)
        if not keys.numel():
            return torch.ones_like(key, dtype=torch.bool)
        slot = torch.searchsorted(keys, key).clamp_(max=keys.numel() - 1)
        found = keys[slot] == key
        # pairs not in this level add nothing here (zero count, -inf time)
        count.index_add_(0, slot, n * found)
        last_t.scatter_reduce_(0, slot, torch.where(found, latest, float("-inf")), reduce="amax")
        return None if bool(found.all()) else ~found

    def _insert(self, prefix: str, keys: Tensor, last_t: Tensor, count: Tensor) -> None:
        """Merge sorted keys absent from a level into it: one pass over the level."""
        current = self._level(prefix)
        size, extra = current[0].shape[0], keys.shape[0]
        # a key lands after every key of the other array below it, and of its own
        place = torch.searchsorted(current[0], keys) + torch.arange(extra, device=keys.device)
        old_place = torch.searchsorted(keys, current[0]) + torch.arange(size, device=keys.device)
        for name, values, old in zip(FIELDS, (keys, last_t, count), current, strict=True):
            merged = values.new_empty(size + extra)
            merged.index_copy_(0, place, values)
            merged.index_copy_(0, old_place, old)
            setattr(self, prefix + name, merged)
