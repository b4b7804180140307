"""Per-pair stream statistics stored only for the pairs seen: state linear in events.

A dense [rows, cols] table (users × items, items × items) cannot be built for real
catalogues: 10^6 users × 10^5 items is 10^11 entries. Every pair that ever occurred is
instead one entry of flat buffers kept sorted by the key row · cols + col, so a row's
pairs are one contiguous slice: all of a user's past items are found with two binary
searches, and every lookup and update is a vectorised torch op.

New pairs first go to a small sorted `recent` level that is merged into the main level
once it holds an eighth of it: inserting into one sorted array would copy all P pairs
at every step, which on a stream of small exact steps costs more than the step itself.

What a pair keeps is `PairTable`'s (last time, count) unless a subclass says otherwise:
`width` values per pair, `event_values` of one interaction, `summarise` for a step's
repeats of a pair and `combine` for two entries of one pair. Both must be order-free
(associative and commutative), so a step's update never depends on the order of its
rows, and one update with many steps equals one per step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PairTable"]

FIELDS = ("keys", "values")
# the recent level is merged into the main one beyond max(this, main size / 8) pairs
MIN_RECENT = 4096


class PairTable(nn.Module):
    """Last time and number of occurrences of each (row, col) pair seen so far.

    Buffers (carried by `.to()` and checkpoints, sized by the number of distinct pairs),
    per level (main, and `recent_*`): `keys` [P] int64 sorted and `values` [P, width]
    float64, here the pair's last time (-inf when no time was given) and count. A pair is
    in one level only.
    """

    width = 2

    def __init__(self, num_cols: int) -> None:
        super().__init__()
        self.num_cols = int(num_cols)
        for prefix in ("", "recent_"):
            self.register_buffer(prefix + "keys", torch.zeros(0, dtype=torch.long))
            self.register_buffer(prefix + "values", torch.zeros(0, self.width, dtype=torch.float64))

    def __len__(self) -> int:
        return int(self.keys.shape[0] + self.recent_keys.shape[0])

    def reset_state(self) -> None:
        for prefix in ("", "recent_"):
            for name in FIELDS:
                current = getattr(self, prefix + name)
                setattr(self, prefix + name, current.new_zeros((0, *current.shape[1:])))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # a checkpoint holds as many pairs as its stream had: take its sizes, then load
        for name in list(self._buffers):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, getattr(self, name).new_empty(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _level(self, prefix: str) -> tuple[Tensor, Tensor]:
        return tuple(getattr(self, prefix + name) for name in FIELDS)

    # ---- what a pair keeps -------------------------------------------------------------------
    def missing(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """The values [n, width] of a pair never seen: no time (-inf), count 0."""
        out = torch.zeros(n, self.width, dtype=torch.float64, device=device)
        out[:, 0] = float("-inf")
        return out

    def event_values(self, t: Tensor | None, n: int, device=None) -> Tensor:
        """The values [n, width] of single interactions at times `t` (None: no time)."""
        out = self.missing(n, device)
        if t is not None:
            out[:, 0] = t.to(torch.float64)
        out[:, 1] = 1.0
        return out

    def summarise(self, values: Tensor, inverse: Tensor, size: int) -> Tensor:
        """One entry [size, width] per distinct pair from the entries [N, width] of its
        repeats (`inverse`: the distinct pair of each)."""
        out = self.missing(size, values.device)
        out[:, 0].scatter_reduce_(0, inverse, values[:, 0], reduce="amax")
        out[:, 1].index_add_(0, inverse, values[:, 1])
        return out

    def combine(self, a: Tensor, b: Tensor) -> Tensor:
        """Two entries [N, width] of the same pairs as one: the later time, the counts summed."""
        return torch.stack((torch.maximum(a[:, 0], b[:, 0]), a[:, 1] + b[:, 1]), dim=1)

    # ---- reading ---------------------------------------------------------------------------
    def find(self, rows: Tensor, cols: Tensor) -> Tensor:
        """The values [N, width] of each (row, col) pair; `missing` if never seen."""
        key = rows.long() * self.num_cols + cols.long()
        found_values = self.missing(key.shape[0], key.device)
        for keys, values in (self._level(""), self._level("recent_")):
            if keys.numel():
                slot = torch.searchsorted(keys, key).clamp_(max=keys.numel() - 1)
                found = keys[slot] == key
                found_values = torch.where(found[:, None], values[slot], found_values)
        return found_values

    def lookup(self, rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
        """(count [N], last time [N]) of each (row, col) pair: 0 and -inf if never seen."""
        found_values = self.find(rows, cols)
        return found_values[:, 1], found_values[:, 0]

    def row_values(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Every seen pair of each row, in no particular order: (which input row [M],
        col [M], values [M, width])."""
        parts = [self._row_slice(rows, *self._level(p)) for p in ("", "recent_")]
        parts = [p for p in parts if p is not None] or [
            self._row_slice(rows, *self._level(""), True)
        ]
        which, col, values = (torch.cat(c) if len(parts) > 1 else c[0] for c in zip(*parts))
        return which, col, values

    def row_pairs(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Every seen pair of each row, in no particular order: (which input row [M],
        col [M], last time [M], count [M])."""
        which, col, values = self.row_values(rows)
        return which, col, values[:, 0], values[:, 1]

    def _row_slice(self, rows: Tensor, keys: Tensor, values: Tensor, empty_ok: bool = False):
        if not keys.numel() and not empty_ok:
            return None
        rows = rows.long()
        bounds = torch.searchsorted(keys, torch.stack((rows, rows + 1)) * self.num_cols)
        lengths = bounds[1] - bounds[0]
        ends = torch.cumsum(lengths, 0)
        total = int(ends[-1]) if ends.numel() else 0
        position = torch.arange(total, device=rows.device)
        which = torch.searchsorted(ends, position, right=True)
        slot = position + (bounds[0] - ends + lengths)[which]
        col = keys[slot] - rows[which] * self.num_cols
        return which, col, values[slot]

    # ---- writing ---------------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, rows: Tensor, cols: Tensor, t: Tensor | None = None) -> None:
        """Add the interactions (row[n], col[n]) at times `t` [N]: here, count the pairs
        and keep their latest time."""
        if rows.numel() == 0:
            return
        self.add(rows, cols, self.event_values(t, rows.shape[0], rows.device))

    @torch.no_grad()
    def add(self, rows: Tensor, cols: Tensor, entries: Tensor) -> None:
        """Merge entries [N, width] of the pairs (row[n], col[n]) into the table."""
        if rows.numel() == 0:
            return
        key, order = torch.sort(rows.long() * self.num_cols + cols.long())
        unique, inverse = torch.unique_consecutive(key, return_inverse=True)
        values = self.summarise(entries[order], inverse, unique.shape[0])
        for prefix in ("", "recent_"):
            new = self._update(prefix, unique, values)
            if new is None:
                return
            unique, values = unique[new], values[new]
        self._insert("recent_", unique, values)
        if self.recent_keys.shape[0] > max(MIN_RECENT, self.keys.shape[0] // 8):
            self._insert("", *self._level("recent_"))
            self.recent_keys = self.keys.new_zeros(0)
            self.recent_values = self.values.new_zeros(0, self.width)

    def _update(self, prefix: str, key: Tensor, values: Tensor) -> Tensor | None:
        """Add to the pairs of one level; returns the mask of keys it lacks (None: none)."""
        keys, stored = self._level(prefix)
        if not keys.numel():
            return torch.ones_like(key, dtype=torch.bool)
        slot = torch.searchsorted(keys, key).clamp_(max=keys.numel() - 1)
        found = keys[slot] == key
        hit = slot[found]  # distinct keys: each stored entry is combined once at most
        stored[hit] = self.combine(stored[hit], values[found])
        return None if bool(found.all()) else ~found

    def _insert(self, prefix: str, keys: Tensor, values: Tensor) -> None:
        """Merge sorted keys absent from a level into it: one pass over the level."""
        current = self._level(prefix)
        size, extra = current[0].shape[0], keys.shape[0]
        # a key lands after every key of the other array below it, and of its own
        place = torch.searchsorted(current[0], keys) + torch.arange(extra, device=keys.device)
        old_place = torch.searchsorted(keys, current[0]) + torch.arange(size, device=keys.device)
        for name, new, old in zip(FIELDS, (keys, values), current, strict=True):
            merged = new.new_empty((size + extra, *new.shape[1:]))
            merged.index_copy_(0, place, new)
            merged.index_copy_(0, old_place, old)
            setattr(self, prefix + name, merged)
