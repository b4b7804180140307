"""Heuristics of the field, kept in tables of the (user, item) pairs seen so far.

`UserFrequency` (the user's own past items by time-decayed count, then what is popular
now), `EdgeBank` (TGB's: 1 for a pair seen before, unlimited or within a time window, 0
otherwise) and `PopularityUnseen` (popularity among the items the user has not had yet:
the natural bar on repeat-free data). Their state grows with the distinct pairs, never
with users × items: a sorted key user · I + item per pair and one or two values beside
it. Updates are order-free (latest times, decayed sums at a shared reference), so one
forward over any step is exact (`step_updates_commute`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tempint.data.batch import Interactions
from tempint.models.base import InteractionModel, Output
from tempint.models.heuristics import RecentPopularity

__all__ = ["UserFrequency", "EdgeBank", "PopularityUnseen", "merge_pairs", "user_pairs"]

EDGEBANK_MEMORY = ("unlimited", "time_window")


def merge_pairs(
    keys: Tensor, values: Tensor, new_keys: Tensor, new_values: Tensor, reduce: str
) -> tuple[Tensor, Tensor]:
    """Sorted distinct keys and their values, `reduce` ("amax", "sum") over repeats."""
    all_keys, inverse = torch.unique(torch.cat([keys, new_keys]), sorted=True, return_inverse=True)
    out = torch.zeros(all_keys.shape[0], dtype=values.dtype, device=values.device)
    out.scatter_reduce_(0, inverse, torch.cat([values, new_values]), reduce, include_self=False)
    return all_keys, out


def user_pairs(keys: Tensor, users: Tensor, num_items: int) -> tuple[Tensor, Tensor, Tensor]:
    """The pairs of each query's user: (row in `users`, slot in `keys`, item), flat."""
    lo = torch.searchsorted(keys, users * num_items)
    hi = torch.searchsorted(keys, (users + 1) * num_items)
    counts = hi - lo
    rows = torch.repeat_interleave(torch.arange(len(users), device=keys.device), counts)
    slots = torch.arange(rows.numel(), device=keys.device) + torch.repeat_interleave(
        lo - (counts.cumsum(0) - counts), counts
    )
    return rows, slots, keys[slots] % num_items


class _PairModel(InteractionModel):
    """Base of the pair-table heuristics: keys of the pairs seen, sorted."""

    scorers = ("native",)
    learned = False
    step_updates_commute = True

    def __init__(self, num_users: int, num_items: int):
        super().__init__(num_users, num_items)
        self.register_buffer("pair_key", torch.zeros(0, dtype=torch.long))

    def reset_state(self) -> None:
        self.pair_key = self.pair_key.new_zeros(0)

    def _keys(self, batch: Interactions) -> Tensor:
        return batch.user.long() * self.num_items + batch.item.long()

    def forward(self, batch: Interactions) -> Output:
        scores = None if self.training else self.scores(batch)
        self.observe(batch)
        return Output(scores=scores)

    def scores(self, batch: Interactions) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def observe(self, batch: Interactions) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class EdgeBank(_PairModel):
    """EdgeBank as TGB defines it (Poursafaei et al. 2022): a pair scores 1 if it is in
    memory, else 0; all ties are left to the tie policy.

    `memory="unlimited"` keeps every pair seen. `memory="time_window"` keeps a pair while
    its latest time is at least `t_max − duration`, where t_max is the latest time seen
    and `duration = window_ratio × (time span of the training stream)`, fixed when the
    model first scores (after training), as TGB's predictor fixes it from its
    initialisation edges.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        memory: str = "unlimited",
        window_ratio: float = 0.15,
    ):
        super().__init__(num_users, num_items)
        if memory not in EDGEBANK_MEMORY:
            raise ValueError(f"model.memory={memory!r}; use one of {', '.join(EDGEBANK_MEMORY)}")
        if not 0 < window_ratio <= 1:
            raise ValueError(f"model.window_ratio={window_ratio} must be in (0, 1]")
        self.memory = memory
        self.window_ratio = float(window_ratio)
        self.register_buffer("pair_t", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("t_min", torch.tensor(float("inf"), dtype=torch.float64))
        self.register_buffer("t_max", torch.tensor(float("-inf"), dtype=torch.float64))
        self.register_buffer("duration", torch.tensor(-1.0, dtype=torch.float64))

    def reset_state(self) -> None:
        super().reset_state()
        self.pair_t = self.pair_t.new_zeros(0)
        self.t_min.fill_(float("inf"))
        self.t_max.fill_(float("-inf"))
        self.duration.fill_(-1.0)

    def observe(self, batch: Interactions) -> None:
        t = batch.t.to(torch.float64)
        self.pair_key, self.pair_t = merge_pairs(
            self.pair_key, self.pair_t, self._keys(batch), t, "amax"
        )
        self.t_min.copy_(torch.minimum(self.t_min, t.min()))
        self.t_max.copy_(torch.maximum(self.t_max, t.max()))

    def scores(self, batch: Interactions) -> Tensor:
        out = torch.zeros(len(batch), self.num_items, dtype=torch.float64, device=batch.t.device)
        rows, slots, items = user_pairs(self.pair_key, batch.user.long(), self.num_items)
        if self.memory == "time_window":
            if float(self.duration) < 0:
                self.duration.copy_(self.window_ratio * (self.t_max - self.t_min))
            live = self.pair_t[slots] >= self.t_max - self.duration
            rows, items = rows[live], items[live]
        out[rows, items] = 1.0
        return out


class UserFrequency(_PairModel):
    """The user's own past items by time-decayed count Σ_j exp(−(t − t_j)/τ), then the
    other items by recent popularity (decayed with the same τ).

    Each pair keeps its decayed count at a reference time (its latest update); scores
    read it at the query's time in log space, so old pairs never underflow into ties.
    """

    def __init__(self, num_users: int, num_items: int, decay_seconds: float = 86_400.0):
        super().__init__(num_users, num_items)
        if not decay_seconds > 0:
            raise ValueError(f"model.decay_seconds={decay_seconds} must be positive seconds")
        self.decay_seconds = float(decay_seconds)
        self.popularity = RecentPopularity(num_users, num_items, decay_seconds)
        self.register_buffer("pair_log_count", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("pair_ref", torch.zeros(0, dtype=torch.float64))

    def reset_state(self) -> None:
        super().reset_state()
        self.pair_log_count = self.pair_log_count.new_zeros(0)
        self.pair_ref = self.pair_ref.new_zeros(0)
        self.popularity.reset_state()

    def observe(self, batch: Interactions) -> None:
        """Log-space sums, so that no count underflows: a touched pair's reference moves
        to its latest time and its old sum is decayed to it."""
        self.popularity.observe(batch)
        t = batch.t.to(torch.float64)
        keys = self._keys(batch)
        new_keys, ref = merge_pairs(self.pair_key, self.pair_ref, keys, t, "amax")
        old = torch.searchsorted(new_keys, self.pair_key)
        carried = torch.full_like(ref, float("-inf"))
        carried[old] = self.pair_log_count - (ref[old] - self.pair_ref) / self.decay_seconds
        slot = torch.searchsorted(new_keys, keys)
        added = -(ref[slot] - t) / self.decay_seconds  # <= 0
        top = carried.clone().scatter_reduce_(0, slot, added, "amax", include_self=True)
        total = torch.exp(carried - top)
        total.index_add_(0, slot, torch.exp(added - top[slot]))
        self.pair_key, self.pair_ref, self.pair_log_count = new_keys, ref, top + total.log()

    def scores(self, batch: Interactions) -> Tensor:
        pop = self.popularity.current()
        out = (pop / (pop.max() + 1.0)).expand(len(batch), -1).clone()  # [0, 1)
        rows, slots, items = user_pairs(self.pair_key, batch.user.long(), self.num_items)
        t = batch.t.to(torch.float64)[rows]
        log_count = self.pair_log_count[slots] - (t - self.pair_ref[slots]) / self.decay_seconds
        out[rows, items] = 3.0 + log_count / (1.0 + log_count.abs())  # seen items in (2, 4)
        return out


class PopularityUnseen(_PairModel):
    """Items the user has not had yet, by their number of interactions so far; the
    user's own items last."""

    def __init__(self, num_users: int, num_items: int):
        super().__init__(num_users, num_items)
        self.register_buffer("counts", torch.zeros(num_items, dtype=torch.float64))

    def reset_state(self) -> None:
        super().reset_state()
        self.counts.zero_()

    def observe(self, batch: Interactions) -> None:
        self.counts.index_add_(0, batch.item, torch.ones_like(batch.item, dtype=torch.float64))
        keys = self._keys(batch)
        self.pair_key = torch.unique(torch.cat([self.pair_key, keys]), sorted=True)

    def scores(self, batch: Interactions) -> Tensor:
        out = self.counts.expand(len(batch), -1).clone()
        rows, _, items = user_pairs(self.pair_key, batch.user.long(), self.num_items)
        out[rows, items] = -1.0
        return out
