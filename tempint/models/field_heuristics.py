"""Heuristics of the field, kept in tables of the (user, item) pairs seen so far.

`UserFrequency` (the user's own past items by time-decayed count, then what is popular
now), `EdgeBank` (TGB's: 1 for a pair seen before, unlimited or within a time window, 0
otherwise) and `PopularityUnseen` (popularity among the items the user has not had yet:
the natural bar on repeat-free data). Their state grows with the distinct pairs, never
with users × items: a two-level sorted `PairTable`, so a step's update touches the new
pairs and a small recent level, never a re-sort of every pair. Updates are order-free
(latest times, counts, decayed sums merged by an associative rule), so one forward over
any step is exact (`step_updates_commute`).

Frozen evaluation hands them runs of many tiny exact steps at once (`replay_steps`):
each interaction is scored from the table at the run's start combined with the run's
own events of earlier steps, and item counts from exclusive sums over the steps, all
vectorised over the run; the table then takes the whole run in one update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from tempint.data.batch import Interactions
from tempint.models.base import Capabilities, InteractionModel, Output
from tempint.models.components.pairs import PairTable
from tempint.models.components.steps import StepRun, decayed_counts_per_step
from tempint.models.heuristics import RecentPopularity

__all__ = [
    "UserFrequency",
    "EdgeBank",
    "PopularityUnseen",
    "DecayedPairCounts",
    "pair_values_before",
    "segmented_scan",
]

EDGEBANK_MEMORY = ("unlimited", "time_window")


class DecayedPairCounts(PairTable):
    """Per pair its reference time (latest interaction) and the log of its decayed count
    Σ_j exp(−(ref − t_j)/τ) there: in log space, so no old count underflows into a tie."""

    def __init__(self, num_cols: int, decay_seconds: float) -> None:
        super().__init__(num_cols)
        self.decay_seconds = float(decay_seconds)

    def missing(self, n: int, device=None) -> Tensor:
        return torch.full((n, 2), float("-inf"), dtype=torch.float64, device=device)

    def event_values(self, t: Tensor | None, n: int, device=None) -> Tensor:
        out = torch.zeros(n, 2, dtype=torch.float64, device=device)  # count 1: log 0
        out[:, 0] = t.to(torch.float64)
        return out

    def summarise(self, values: Tensor, inverse: Tensor, size: int) -> Tensor:
        ref = torch.full((size,), float("-inf"), dtype=torch.float64, device=values.device)
        ref.scatter_reduce_(0, inverse, values[:, 0], reduce="amax")
        terms = values[:, 1] - (ref[inverse] - values[:, 0]) / self.decay_seconds
        top = torch.full_like(ref, float("-inf")).scatter_reduce_(0, inverse, terms, "amax")
        total = torch.zeros_like(ref).index_add_(0, inverse, torch.exp(terms - top[inverse]))
        return torch.stack((ref, top + total.log()), dim=1)

    def combine(self, a: Tensor, b: Tensor) -> Tensor:
        ref = torch.maximum(a[:, 0], b[:, 0])
        at_ref = [
            torch.where(x[:, 0] == ref, x[:, 1], x[:, 1] - (ref - x[:, 0]) / self.decay_seconds)
            for x in (a, b)
        ]  # a missing entry (-inf, -inf) stays -inf, never -inf - -inf
        return torch.stack((ref, torch.logaddexp(*at_ref)), dim=1)


def segmented_scan(values: Tensor, first: Tensor, combine: Callable) -> Tensor:
    """Inclusive scan of `values` [E, W] with the associative `combine`, restarted where
    `first` [E] is True: log2(longest segment) vectorised rounds."""
    n = values.shape[0]
    position = torch.arange(n, device=values.device)
    start = torch.cummax(torch.where(first, position, 0), 0).values
    longest = int((position - start).max()) + 1 if n else 0  # one sync per run
    out, reach = values, 1
    while reach < longest:
        target = position[reach:][position[reach:] - reach >= start[reach:]]
        out = out.clone()
        out[target] = combine(out[target - reach], out[target])
        reach *= 2
    return out


def pair_values_before(table: PairTable, run: StepRun) -> list[tuple[Tensor, Tensor, Tensor]]:
    """The entry of every pair (row's user, item) as each row's step sees it: the table
    at the run's start merged with the run's own interactions of earlier steps.

    Pieces (row [M], item [M], values [M, width]) to be written in order, a later piece
    over an earlier one: first the table's pairs of each row's user, then the pairs the
    run's earlier steps gave the row's user (merged with the table's entry). A row of
    user u needs the run's events of u only, and a user is at most once in a step, so
    the second piece has one entry per (row, item) cell: never more than the scores.
    """
    which, col, values = table.row_values(run.user)
    pieces = [(which, col, values)]
    if run.num_steps < 2:
        return pieces
    n, num_items = run.user.shape[0], table.num_cols
    # each row's place among its user's rows of the run (steps in order: stable sort)
    by_user = torch.sort(run.user, stable=True).indices
    sorted_user = run.user[by_user]
    new_user = torch.ones(n, dtype=torch.bool, device=run.user.device)
    new_user[1:] = sorted_user[1:] != sorted_user[:-1]
    ordinal = torch.arange(n, device=run.user.device)
    group_start = torch.cummax(torch.where(new_user, ordinal, 0), 0).values
    group = torch.cumsum(new_user, 0) - 1
    group_size = torch.bincount(group)[group]
    in_steps = run.step[by_user]
    if bool((in_steps[1:] == in_steps[:-1])[~new_user[1:]].any()):
        raise ValueError("a run of steps holds a user twice in one step; its steps must be exact")
    place = torch.empty_like(ordinal)
    place[by_user] = ordinal - group_start
    start_of, size_of = torch.empty_like(ordinal), torch.empty_like(ordinal)
    start_of[by_user], size_of[by_user] = group_start, group_size
    # the run's events grouped by pair, in step order, each merged with the pair's before
    events, by_pair = torch.sort(run.user * num_items + run.item, stable=True)
    first = torch.ones(n, dtype=torch.bool, device=run.user.device)
    first[1:] = events[1:] != events[:-1]
    pair = torch.cumsum(first, 0) - 1
    merged = segmented_scan(
        table.event_values(run.t[by_pair], n, run.t.device), first, table.combine
    )
    # cells: each pair's user's rows after the pair's first event
    opener = by_pair[first]
    later = size_of[opener] - 1 - place[opener]
    cell_pair = torch.repeat_interleave(torch.arange(opener.shape[0], device=opener.device), later)
    offset = torch.arange(cell_pair.shape[0], device=opener.device) - torch.repeat_interleave(
        torch.cumsum(later, 0) - later, later
    )
    cell_place = place[opener][cell_pair] + 1 + offset
    cell_row = by_user[start_of[opener][cell_pair] + cell_place]
    # the pair's last event before the cell's row: its rows are its user's, placed in order
    event_code = pair * n + place[by_pair]
    last = torch.searchsorted(event_code, cell_pair * n + cell_place) - 1
    cell_item = run.item[opener][cell_pair]
    at_start = table.find(run.user[cell_row], cell_item)
    pieces.append((cell_row, cell_item, table.combine(at_start, merged[last])))
    return pieces


class _PairModel(InteractionModel):
    """Base of the pair-table heuristics: a table of the pairs seen, scores for a run of
    steps from `_run_scores` (one step is a run of one)."""

    capabilities = Capabilities(
        scorers=("native",),
        learned=False,
        step_updates_commute=True,
        replays_steps=True,
    )

    def __init__(self, num_users: int, num_items: int, pairs: PairTable | None = None):
        super().__init__(num_users, num_items)
        self.pairs = PairTable(num_items) if pairs is None else pairs

    def reset_state(self) -> None:
        self.pairs.reset_state()

    def score(self, batch: Interactions) -> Output:
        return Output(scores=self._run_scores(StepRun.of([batch])))

    @torch.no_grad()
    def replay_steps(self, steps: Sequence[Interactions]) -> Output:
        run = StepRun.of(steps)
        scores = self._run_scores(run)
        self.observe(steps[0] if len(steps) == 1 else Interactions.concat(steps))
        return Output(scores=scores)

    def _run_scores(self, run: StepRun) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def observe(self, batch: Interactions) -> None:
        self.pairs.observe(batch.user, batch.item, batch.t)


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
        self.register_buffer("t_min", torch.tensor(float("inf"), dtype=torch.float64))
        self.register_buffer("t_max", torch.tensor(float("-inf"), dtype=torch.float64))
        self.register_buffer("duration", torch.tensor(-1.0, dtype=torch.float64))

    def reset_state(self) -> None:
        super().reset_state()
        self.t_min.fill_(float("inf"))
        self.t_max.fill_(float("-inf"))
        self.duration.fill_(-1.0)

    def observe(self, batch: Interactions) -> None:
        super().observe(batch)
        t = batch.t.to(torch.float64)
        self.t_min.copy_(torch.minimum(self.t_min, t.min()))
        self.t_max.copy_(torch.maximum(self.t_max, t.max()))

    def _run_scores(self, run: StepRun) -> Tensor:
        out = torch.zeros(len(run.user), self.num_items, dtype=torch.float64, device=run.t.device)
        if self.memory == "time_window":
            if float(self.duration) < 0:
                self.duration.copy_(self.window_ratio * (self.t_max - self.t_min))
            t_max = run.before_steps(self.t_max, run.step_max(run.t))  # latest seen, per step
            oldest = (t_max - self.duration)[run.step]
        for rows, items, values in pair_values_before(self.pairs, run):
            if self.memory == "time_window":
                live = values[:, 0] >= oldest[rows]
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
        if not decay_seconds > 0:
            raise ValueError(f"model.decay_seconds={decay_seconds} must be positive seconds")
        super().__init__(num_users, num_items, DecayedPairCounts(num_items, decay_seconds))
        self.decay_seconds = float(decay_seconds)
        self.popularity = RecentPopularity(num_users, num_items, decay_seconds)

    def reset_state(self) -> None:
        super().reset_state()
        self.popularity.reset_state()

    def observe(self, batch: Interactions) -> None:
        self.popularity.observe(batch)
        super().observe(batch)

    def _popularity_before_steps(self, run: StepRun) -> Tensor:
        """[S, I] the decayed item counts each step is scored from, as
        `RecentPopularity` holds them before the step (`decayed_counts_per_step`)."""
        if torch.unique(run.step * self.num_items + run.item).numel() < run.item.numel():
            raise ValueError(
                "a run of steps holds an item twice in one step; its steps must be exact"
            )
        pop = self.popularity
        return decayed_counts_per_step(
            pop.decayed, pop.ref_t, run, self.num_items, self.decay_seconds
        )

    def _run_scores(self, run: StepRun) -> Tensor:
        if run.num_steps == 1:
            pop = self.popularity.current()
            out = (pop / (pop.max() + 1.0)).expand(len(run.user), -1).clone()  # [0, 1)
        else:
            pop = self._popularity_before_steps(run)
            out = pop.div_(pop.max(dim=1, keepdim=True).values + 1.0)[run.step]
        for rows, items, values in pair_values_before(self.pairs, run):
            ref, log_count = values[:, 0], values[:, 1]
            log_count = log_count - (run.t[rows] - ref) / self.decay_seconds
            out[rows, items] = 3.0 + log_count / (1.0 + log_count.abs())  # seen: in (2, 4)
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
        super().observe(batch)

    def _run_scores(self, run: StepRun) -> Tensor:
        if run.num_steps == 1:
            out = self.counts.expand(len(run.user), -1).clone()
        else:
            # counts before each step: the run's earlier steps summed, exclusively
            added = torch.zeros(
                run.num_steps, self.num_items, dtype=torch.float64, device=run.t.device
            )
            later = run.step + 1 < run.num_steps
            added.index_put_(
                (run.step[later] + 1, run.item[later]),
                torch.ones_like(run.t[later]),
                accumulate=True,
            )
            out = added.cumsum_(0).add_(self.counts)[run.step]
        for rows, items, _ in pair_values_before(self.pairs, run):
            out[rows, items] = -1.0
        return out
