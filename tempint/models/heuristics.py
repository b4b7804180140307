"""Non-learned baselines under the same contract: counts kept in buffers, no parameters.

On the JODIE benchmarks most interactions repeat an earlier (user, item) pair, so these
are the bar every learned model is read against. Their updates do not depend on the
order inside a step, so they are exact under any sampler.

Evaluation replays them in runs of exact steps at once (`replay_steps`): the state before
each step of a run is the state at the run's start plus a cumulative sum over the run's
earlier steps, so a run of thousands of tiny steps costs a few dense operations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tempint.data.batch import Interactions
from tempint.models.base import Capabilities, InteractionModel, Output
from tempint.models.components.pairs import PairTable
from tempint.models.components.steps import StepRun

__all__ = ["Popularity", "RecentPopularity", "Recency", "latest_earlier_pairs"]


def _before_each_step(per_step: Tensor) -> Tensor:
    """[S, I] sums over the steps strictly before each step of `per_step` [S, I]."""
    out = torch.cumsum(per_step, dim=0)
    return torch.cat([torch.zeros_like(out[:1]), out[:-1]])


class Popularity(InteractionModel):
    """Global popularity: the number of interactions each item has had so far."""

    # counts and latest times: any step order ends the same
    capabilities = Capabilities(
        scorers=("native",),
        learned=False,
        step_updates_commute=True,
        replays_steps=True,
    )

    def __init__(self, num_users: int, num_items: int):
        super().__init__(num_users, num_items)
        self.register_buffer("counts", torch.zeros(num_items, dtype=torch.float64))

    def reset_state(self) -> None:
        self.counts.zero_()

    def score(self, batch: Interactions) -> Output:
        # one row shared by the step's queries (ranked with one sort), copied so that the
        # update after it leaves the scores as they were
        return Output(scores=self.counts.clone().expand(len(batch), -1))

    def observe(self, batch: Interactions) -> None:
        self.counts.index_add_(0, batch.item, torch.ones_like(batch.item, dtype=torch.float64))

    @torch.no_grad()
    def replay_steps(self, steps: Sequence[Interactions]) -> Output:
        run = StepRun.of(steps)
        item, step = run.item, run.step
        per_step = self.counts.new_zeros(len(steps), self.num_items)
        per_step.index_put_((step, item), torch.ones_like(self.counts[item]), accumulate=True)
        before = _before_each_step(per_step) + self.counts
        self.counts += per_step.sum(0)
        return Output(scores=before[step])


class RecentPopularity(InteractionModel):
    """Exponentially time-decayed counts: Σ_j exp(−(t − t_j)/τ) over the item's past events.

    A decay common to all items does not change the ranking, so the scores are kept at a
    reference time (the latest event seen) and only rescaled when it advances.
    """

    # counts and latest times: any step order ends the same
    capabilities = Capabilities(
        scorers=("native",),
        learned=False,
        step_updates_commute=True,
        replays_steps=True,
    )

    def __init__(self, num_users: int, num_items: int, decay_seconds: float = 86_400.0):
        super().__init__(num_users, num_items)
        if not decay_seconds > 0:
            raise ValueError(f"model.decay_seconds={decay_seconds} must be positive seconds")
        self.decay_seconds = float(decay_seconds)
        self.register_buffer("decayed", torch.zeros(num_items, dtype=torch.float64))
        self.register_buffer("ref_t", torch.zeros((), dtype=torch.float64))

    def reset_state(self) -> None:
        self.decayed.zero_()
        self.ref_t.zero_()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints written before the counts were named `decayed` hold them as `score`
        if prefix + "score" in state_dict and prefix + "decayed" not in state_dict:
            state_dict[prefix + "decayed"] = state_dict.pop(prefix + "score")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def current(self) -> Tensor:
        return self.decayed

    def observe(self, batch: Interactions) -> None:
        self.observe_rows(batch.item, batch.t.to(torch.float64))

    def score(self, batch: Interactions) -> Output:
        return Output(scores=self.decayed.clone().expand(len(batch), -1))

    def before_steps(self, item: Tensor, t: Tensor, step: Tensor, num_steps: int) -> Tensor:
        """[S, I] the decayed counts before each step of a run, each row divided by its
        largest entry (rows with no count are 0): a row's order is the order of the
        counts `forward` would hold there, and an order is all a ranking reads.

        Computed in log space at the run's latest time, so that no count of a run
        spanning many decay times underflows; the state is left after the run.
        """
        t_end = torch.maximum(t.max(), self.ref_t)
        log_w = (t - t_end) / self.decay_seconds  # <= 0
        cell = step * self.num_items + item  # an item twice in a step: log of the sum
        top = log_w.new_full((num_steps * self.num_items,), float("-inf"))
        top.scatter_reduce_(0, cell, log_w, reduce="amax")
        total = torch.zeros_like(top).index_add_(0, cell, torch.exp(log_w - top[cell]))
        log_added = (top + torch.log(total)).view(num_steps, self.num_items)
        log_before = torch.logcumsumexp(log_added, dim=0)
        log_before = torch.cat([torch.full_like(log_before[:1], float("-inf")), log_before[:-1]])
        carried = torch.log(self.decayed) + (self.ref_t - t_end) / self.decay_seconds
        log_before = torch.logaddexp(log_before, carried)
        top = log_before.amax(dim=1, keepdim=True).clamp_min(torch.finfo(t.dtype).min)
        self.observe_rows(item, t)
        return torch.exp(log_before - top)

    def observe_rows(self, item: Tensor, t: Tensor) -> None:
        t_max = torch.maximum(t.max(), self.ref_t)
        self.decayed.mul_(torch.exp(-(t_max - self.ref_t) / self.decay_seconds))
        self.decayed.index_add_(0, item, torch.exp(-(t_max - t) / self.decay_seconds))
        self.ref_t.copy_(t_max)

    @torch.no_grad()
    def replay_steps(self, steps: Sequence[Interactions]) -> Output:
        run = StepRun.of(steps)
        item, t, step = run.item, run.t, run.step
        return Output(scores=self.before_steps(item, t, step, len(steps))[step])


class Recency(InteractionModel):
    """The user's own past items, most recent first; then items by recent popularity.

    Keeps the last time of every (user, item) pair seen (`PairTable`), so its state grows
    with the distinct pairs of the stream, never with users × items.
    """

    # counts and latest times: any step order ends the same
    capabilities = Capabilities(
        scorers=("native",),
        learned=False,
        step_updates_commute=True,
        replays_steps=True,
    )

    def __init__(self, num_users: int, num_items: int, decay_seconds: float = 86_400.0):
        super().__init__(num_users, num_items)
        self.popularity = RecentPopularity(num_users, num_items, decay_seconds)
        self.pairs = PairTable(num_items)

    def reset_state(self) -> None:
        self.pairs.reset_state()
        self.popularity.reset_state()

    def observe(self, batch: Interactions) -> None:
        self.popularity.observe(batch)
        self.pairs.observe(batch.user, batch.item, batch.t)

    def score(self, batch: Interactions) -> Output:
        pop = self.popularity.current()
        fallback = pop / (pop.max() + 1.0)  # in [0, 1): below every seen item
        scores = fallback.expand(len(batch), -1).clone()
        which, item, last_t, _ = self.pairs.row_pairs(batch.user)
        age = (batch.t.to(torch.float64)[which] - last_t).clamp_min(0.0)
        seen = 2.0 + 1.0 / (1.0 + age)  # seen items in (2, 3]
        scores.view(-1).index_copy_(0, which * self.num_items + item, seen)
        return Output(scores=scores)

    @torch.no_grad()
    def replay_steps(self, steps: Sequence[Interactions]) -> Output:
        """A run's scores: the fallback from the decayed counts before each step, then
        each row's seen items, from the table at the run's start and from the run's
        earlier steps (a user is in a step once, so its earlier rows are earlier steps)."""
        run = StepRun.of(steps)
        user, item, t, step = run.user, run.item, run.t, run.step
        # fallback in [0, 1] (1 for the row's most popular item), below every seen item
        scores = self.popularity.before_steps(item, t, step, len(steps))[step]
        flat = scores.view(-1)
        which, seen_item, last_t, _ = self.pairs.row_pairs(user)
        self._mark_seen(flat, which, seen_item, t[which] - last_t)
        row, source = latest_earlier_pairs(user, item, self.num_items)
        self._mark_seen(flat, row, item[source], t[row] - t[source])
        self.pairs.observe(user, item, t)
        return Output(scores=scores)

    def _mark_seen(self, flat: Tensor, row: Tensor, item: Tensor, age: Tensor) -> None:
        """Seen items of each row in (2, 3], the most recent highest (the latest wins)."""
        seen = 2.0 + 1.0 / (1.0 + age.clamp_min(0.0))
        flat.scatter_reduce_(0, row * self.num_items + item, seen, reduce="amax")


def latest_earlier_pairs(user: Tensor, item: Tensor, num_items: int) -> tuple[Tensor, Tensor]:
    """(row, source) [P]: for each row of a run, each earlier row of its user that holds
    the latest occurrence of its item before the row (rows of a user in order).

    A source is the latest of its (user, item) pair from the row after it up to the
    pair's next occurrence (or the user's last row): P is the sum over rows of the
    distinct items their user had earlier in the run, not the number of row pairs.
    """
    size = user.shape[0]
    device = user.device
    positions = torch.arange(size, device=device)
    order = torch.sort(user, stable=True).indices  # by user, each user's rows in order
    by_user = user[order]
    last_of_user = torch.ones(size, dtype=torch.bool, device=device)
    last_of_user[:-1] = by_user[1:] != by_user[:-1]
    user_end = torch.flip(
        torch.cummin(torch.flip(torch.where(last_of_user, positions, size), [0]), 0).values, [0]
    )
    key = by_user * num_items + item[order]
    by_pair = torch.sort(key, stable=True).indices  # each pair's occurrences in order
    again = key[by_pair[1:]] == key[by_pair[:-1]]
    upto = user_end.clone()
    upto[by_pair[:-1][again]] = by_pair[1:][again]
    count = upto - positions
    source = torch.repeat_interleave(positions, count)
    offsets = torch.cumsum(count, 0) - count
    row = source + 1 + torch.arange(source.shape[0], device=device) - offsets[source]
    return order[row], order[source]
