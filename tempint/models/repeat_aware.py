"""A learned gate between repeating one of the user's own items and exploring new ones.

In the spirit of RepeatNet (Ren et al., AAAI'19): P(i) = g·P_repeat(i) + (1 − g)·P_explore(i).
P_repeat is a softmax over the user's own past items, scored from each pair's recency,
frequency, whether it is the user's last item, and the base model's affinity; P_explore
is a softmax of the base model's scores over the items the user has not had. The gate g
reads the base model's user state and the user's repeat habits. Any embedding model is a
base: its memory, losses and updates run unchanged underneath.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tempint.data.batch import Chunk, Interactions
from tempint.data.samplers import tbatch_assign
from tempint.models.base import (
    Capabilities,
    InteractionModel,
    Mode,
    Output,
    Replayed,
    at_least_float32,
    exact_scores,
)
from tempint.models.components.pairs import PairTable
from tempint.models.components.steps import (
    StepRun,
    decayed_counts_per_step,
    earlier_pairs,
    last_rows,
    versioned_cosine,
)
from tempint.models.heuristics import RecentPopularity

__all__ = ["RepeatAware", "pair_features"]

HOUR = 3600.0
NUM_PAIR_FEATURES = 12
NUM_EXPLORE_FEATURES = 4
NUM_GATE_FEATURES = 6
# rows of consecutive evaluation steps scored together (bounds the [rows, rows] versions
# of the base's candidate rows and the [rows, items] features)
REPLAY_ROWS = 512
# the log-probability floor: mixtures below 1e-30 tie there
LOG_FLOOR = math.log(1e-30)


def recency_rank(which: Tensor, last_t: Tensor, lengths: Tensor) -> Tensor:
    """[M] rank of each pair among its row's pairs by last time: 0 for the most recent."""
    order = torch.argsort(last_t, descending=True, stable=True)
    order = order[torch.argsort(which[order], stable=True)]
    starts = torch.cumsum(lengths, 0) - lengths
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.shape[0], device=order.device) - starts[which[order]]
    return rank


@dataclass
class History:
    """The seen (user, item) pairs of a batch's users, one entry per pair [M].

    `which` is the batch row, `flat` = which · I + item addresses [B, I] tables.
    """

    which: Tensor
    item: Tensor
    last_t: Tensor
    count: Tensor
    lengths: Tensor  # [B] pairs per row
    flat: Tensor


def pair_features(
    history: History,
    t: Tensor,
    prev_item: Tensor,
    affinity: Tensor,
    transitions: Tensor,
    out_degree: Tensor,
    total: Tensor,
    stay_rate: Tensor,
    trend: Tensor,
) -> Tensor:
    """[M, 12] features of every seen (user, item) pair from the stream before now.

    `t` [B] now, `prev_item` [B] (-1 if none), `affinity` [B, I] the base model's score,
    `transitions` [B, I] how often any user went from this user's previous item to the
    item and `out_degree` [B] their sum, `total` [B] the user's interactions,
    `stay_rate` [B] how often this user repeated its previous item, `trend` [I] the log
    of each item's time-decayed interaction count (what is popular now).
    """
    flat = history.flat
    return features_of_pairs(
        history,
        t,
        prev_item,
        affinity.reshape(-1)[flat],
        transitions.reshape(-1)[flat],
        out_degree,
        total,
        stay_rate,
        trend[history.item],
    )


def features_of_pairs(
    history: History,
    t: Tensor,
    prev_item: Tensor,
    affinity: Tensor,
    moved: Tensor,
    out_degree: Tensor,
    total: Tensor,
    stay_rate: Tensor,
    trend: Tensor,
) -> Tensor:
    """`pair_features` from the values of the pairs themselves: `affinity`, `moved` and
    `trend` [M] (one per pair), the rest per row [B]. Recency rank matters beside age:
    Wikipedia editors alternate between two pages, so "the one before last" is a
    pattern of its own."""
    which, item = history.which, history.item
    age = (t[which] - history.last_t).clamp_min(0.0)
    log_age = torch.log1p(age / HOUR).float()
    count = history.count.float()
    rank = recency_rank(which, history.last_t, history.lengths).float()
    is_last = (item == prev_item[which]).float()
    return torch.stack(
        [
            log_age,
            1.0 / (1.0 + log_age),
            torch.log1p(count),
            count / total[which].clamp_min(1.0),
            is_last,
            affinity,
            1.0 / (1.0 + rank),
            (rank == 1).float(),
            torch.log1p(moved),
            moved / out_degree[which],
            is_last * stay_rate[which],
            trend,
        ],
        dim=-1,
    )


class RepeatAware(InteractionModel):
    """Mixture of a repeat and an explore distribution over all items, trained end to end.

    The loss is the negative log-likelihood of the true item under the mixture, plus the
    base model's own losses scaled by `base_loss_weight`. Ranking uses log P(i) (native).

    The base runs step by step (its memory needs it); the mixture of consecutive steps is
    computed at once, every row from the counts as of its own step (`StepRun`): a
    training chunk's at its end (`chunk_losses`, the mean NLL of each step summed over
    its steps, as if each step had been scored alone), and a run of evaluation steps in
    `replay_steps`. A plain `forward` scores its one step.
    """

    capabilities = Capabilities(scorers=("native",), replays_steps=True)

    def __init__(
        self,
        num_users: int,
        num_items: int,
        base: Callable[..., InteractionModel],
        hidden: int = 32,
        base_loss_weight: float = 1.0,
        temperature: float = 10.0,
        trend_decay_seconds: float = 86_400.0,
    ):
        super().__init__(num_users, num_items)
        self.base = base(num_users=num_users, num_items=num_items)
        if not set(self.base.capabilities.scorers) & {"dot", "native"}:
            raise ValueError(f"{type(self.base).__name__} gives neither embeddings nor scores")
        self.base_loss_weight = float(base_loss_weight)
        # what is popular now, the `recent_popularity` heuristic's decayed counts
        self.trend = RecentPopularity(num_users, num_items, trend_decay_seconds)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self.repeat_scorer = nn.Sequential(
            nn.Linear(NUM_PAIR_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )
        self.explore_scorer = nn.Linear(NUM_EXPLORE_FEATURES, 1)
        self.gate_features = nn.Sequential(
            nn.Linear(NUM_GATE_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )
        # (user, item) pairs seen, with their last time and count; (previous item, item)
        # moves of any user: both stored per distinct pair, never as dense tables
        self.pairs = PairTable(num_items)
        self.transitions = PairTable(num_items)
        self.register_buffer("popularity", torch.zeros(num_items))
        # per user: how often it stayed on its previous item, its interactions, its repeats
        self.register_buffer("user_counts", torch.zeros(num_users, 3))
        self.register_buffer(
            "user_last_t", torch.full((num_users,), float("-inf"), dtype=torch.float64)
        )
        # a training chunk's steps and base Outputs, scored together by `chunk_losses`
        self._pending: list[tuple[Interactions, Output]] | None = None
        # the chunk handed to the base: a frozen run of steps is a block for a base that
        # ranks blocks, whose steps then only return the candidate rows they wrote
        self._base_chunk: Chunk | None = None
        self._base_mode = Mode.SCORE

    # ---- state ---------------------------------------------------------------------------
    def reset_state(self) -> None:
        self.base.reset_state()
        self.trend.reset_state()
        self.pairs.reset_state()
        self.transitions.reset_state()
        self.popularity.zero_()
        self.user_counts.zero_()
        self.user_last_t.fill_(float("-inf"))
        self._pending = None

    def detach_state(self) -> None:
        self.base.detach_state()

    def begin_chunk(self, chunk: Chunk, mode: Mode) -> None:
        if chunk.local_users is not None:
            raise ValueError(
                "repeat_aware keeps global per-user history, which windows processed in "
                "parallel would fill out of time order; use sampler=tbatch or chrono"
            )
        self._pending = [] if mode is Mode.TRAIN else None
        self._base_mode = _base_mode(mode)
        # a block step's Output holds its queries unless the base builds them afterwards
        own_queries = type(self.base).block_queries is InteractionModel.block_queries
        block_base = "dot" in self.base.capabilities.block_scorers and own_queries
        if chunk.run and len(chunk.steps) > 1 and mode is Mode.SCORE and block_base:
            chunk = replace(chunk, block=True, run=False)
            self._base_mode = Mode.REPLAY
        self._base_chunk = chunk
        self.base.begin_chunk(chunk, self._base_mode)

    def end_chunk(self, chunk: Chunk, mode: Mode) -> None:
        if self._pending:  # steps no `chunk_losses` scored still update the counts
            with torch.no_grad():
                self._score_pending()
        self._pending = None
        base_chunk = self._base_chunk if self._base_chunk is not None else chunk
        self.base.end_chunk(base_chunk, self._base_mode)
        self._base_chunk = None
        self._base_mode = Mode.SCORE

    # ---- prediction ------------------------------------------------------------------------
    def forward(self, batch: Interactions, mode: Mode) -> Output:
        # the base predicts, then updates its own memory
        output = self.base(batch, _base_mode(mode))
        losses = self._base_losses(output.losses) if mode.losses else {}
        if self._pending is not None:  # training a chunk: scored at its end
            self._pending.append((batch, output))
            return Output(losses=losses)
        log_p, nll = self._score([batch], [output], scores=True)
        if mode.losses:
            losses = {"nll": nll, **losses}
        return Output(scores=log_p if mode is Mode.TRAIN else log_p.detach(), losses=losses)

    def chunk_losses(self) -> dict[str, Tensor]:
        losses = self._base_losses(self.base.chunk_losses())
        if self._pending:
            losses["nll"] = self._score_pending()
        return losses

    def replay_steps(self, steps: Sequence[Interactions]) -> Output:
        """Frozen scores of a run of exact steps, in groups of consecutive steps of at most
        `REPLAY_ROWS` rows (a longer step is a group of its own).

        A base that ranks blocks replays the whole run in t-batches first: its memory
        only needs each node's order, which t-batches keep in far fewer steps, and each
        row's query and written candidate row are the same as in its exact step."""
        groups, group, size = [], [], 0
        for step in steps:
            if group and size + len(step) > REPLAY_ROWS:
                groups.append(group)
                group, size = [], 0
            group.append(step)
            size += len(step)
        groups.append(group)
        if self._base_chunk is None or not self._base_chunk.block:
            outputs = ([self.base(s, Mode.SCORE) for s in g] for g in groups)
            scores = [self._score(g, o, scores=True)[0] for g, o in zip(groups, outputs)]
            return Output(scores=scores[0] if len(scores) == 1 else torch.cat(scores))
        table = at_least_float32(self.base.candidate_table()).clone()
        query, written = self._replay_base(steps)
        item = torch.cat([s.item for s in steps])
        scores, lo = [], 0
        for g in groups:
            hi = lo + sum(len(s) for s in g)
            output = Replayed(written=written[lo:hi], query=query[lo:hi])
            scores.append(self._score(g, [output], table, scores=True)[0])
            last = last_rows(item[lo:hi])  # the group's latest row of each item
            table.index_copy_(0, item[lo:hi][last], written[lo:hi][last].to(table.dtype))
            lo = hi
        return Output(scores=scores[0] if len(scores) == 1 else torch.cat(scores))

    def _replay_base(self, steps: Sequence[Interactions]) -> tuple[Tensor, Tensor]:
        """The base's queries and written candidate rows [K, d] of a run's rows, in the
        run's order, from a replay in t-batches."""
        run = steps[0] if len(steps) == 1 else Interactions.concat(steps)
        tbatch = torch.from_numpy(tbatch_assign(run.user.cpu().numpy(), run.item.cpu().numpy()))
        order = torch.argsort(tbatch, stable=True).to(run.user.device)
        ordered = run.select(order)
        bounds = torch.cumsum(torch.bincount(tbatch), 0).tolist()
        queries, written, lo = [], [], 0
        for hi in bounds:
            output = self.base(ordered.select(slice(lo, hi)), Mode.REPLAY)
            queries.append(output.query)
            written.append(output.written)
            lo = hi
        back = torch.empty_like(order)
        back[order] = torch.arange(order.shape[0], device=order.device)
        return torch.cat(queries)[back], torch.cat(written)[back]

    def _base_losses(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        weight = self.base_loss_weight
        if weight == 1.0:  # no product to build and differentiate at every step
            return {f"base/{name}": v for name, v in losses.items()}
        return {f"base/{name}": weight * v for name, v in losses.items()}

    def _score_pending(self) -> Tensor:
        steps, outputs = zip(*self._pending, strict=True)
        self._pending = []
        return self._score(steps, outputs)[1]

    def _score(
        self,
        steps: Sequence[Interactions],
        outputs: Sequence[Output],
        table: Tensor | None = None,
        scores: bool = False,
    ) -> tuple[Tensor | None, Tensor]:
        """(log P [N, I] of the steps' rows if `scores`, each from the state before its
        step; the sum over steps of each step's mean NLL), then the counts take in the
        steps. `table` is the base's candidate table before the first step when its
        Outputs hold only the rows each step wrote. Without `scores` only the true
        items' probabilities are formed (training needs no [N, I] mixture)."""
        rows = StepRun.of(steps)
        size, num_items = len(rows), self.num_items
        with exact_scores(rows.user.device):  # [N, I] scores: no bf16 ties under autocast
            gate, history, p_repeat, explore = self._parts(rows, outputs, table)
            own = torch.arange(size, device=rows.item.device) * num_items + rows.item
            slot, repeat = _find(history.flat, own)
            p_repeat_true = torch.where(repeat, p_repeat[slot], 0.0) if slot is not None else 0.0
            log_p = None
            if scores:
                # log P = log(1 − g) + log P_explore, but on the user's own items, where
                # the repeat side adds to it; floored at log 1e-30 (float32 underflow)
                log_explore = torch.log_softmax(explore, dim=1)
                log_p = (log_explore + torch.log(1.0 - gate)[:, None]).clamp_min(LOG_FLOOR)
                which = history.which
                mixture = (1.0 - gate[which]) * log_explore.reshape(-1)[history.flat].exp()
                mixture = mixture + gate[which] * p_repeat
                log_p = log_p.view(-1).index_put(
                    (history.flat,), torch.log(mixture.clamp_min(1e-30))
                )
                log_p = log_p.view(size, num_items)
                log_p_true = log_p.reshape(-1)[own]
            else:
                p_explore_true = torch.exp(explore.reshape(-1)[own] - LogSumExp.apply(explore))
                mixture_true = (1.0 - gate) * p_explore_true + gate * p_repeat_true
                log_p_true = torch.log(mixture_true.clamp_min(1e-30))
        nll = -(log_p_true / rows.step_size).sum()
        self._observe(rows, repeat)
        return log_p, nll

    def _affinity(
        self, rows: StepRun, outputs: Sequence[Output | Replayed], table: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """The base's affinity [N, I] from its Outputs (or, with `table`, the rows its
        replayed steps wrote), as (values, scale): the cosine with the candidates as of
        each row's step and the learned temperature to multiply it by, or its native
        scores and None. The product is left to the caller, which folds it into the
        explore scorer's weight: one [N, I] product less to differentiate."""
        first = outputs[0]
        if first.query is None or (table is None and first.candidates is None):
            scores = [o.scores for o in outputs]
            return (scores[0] if len(scores) == 1 else torch.cat(scores)).float(), None
        query = at_least_float32(torch.cat([o.query for o in outputs]))
        scale = self.log_temperature.exp()
        if table is not None:  # the steps returned the rows they wrote
            written = torch.cat([o.written for o in outputs])
            cos = versioned_cosine(query, at_least_float32(table), rows.item, rows.step, written)
            return cos, scale
        if first.candidates.dim() == 2 and "dot" in self.base.capabilities.block_scorers:
            # a global table whose rows change only for the items a step holds: the row
            # step s wrote is the next step's candidate row
            bounds = step_bounds(rows)[:-1]
            written = [o.candidates[rows.item[lo:hi]] for (lo, hi), o in zip(bounds, outputs[1:])]
            written = torch.cat(written or [first.candidates[:0]])
            table = at_least_float32(first.candidates)
            cos = versioned_cosine(query, table, rows.item, rows.step, at_least_float32(written))
            return cos, scale
        parts = []
        for output, (lo, hi) in zip(outputs, step_bounds(rows), strict=True):
            q = F.normalize(query[lo:hi], dim=-1)
            candidates = F.normalize(at_least_float32(output.candidates), dim=-1)
            if candidates.dim() == 3:
                parts.append(torch.bmm(candidates, q.unsqueeze(-1)).squeeze(-1))
            else:
                parts.append(q @ candidates.T)
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), scale

    def _pairs_as_of_steps(self, rows: StepRun) -> tuple[History, Tensor, Tensor]:
        """Each row's user's seen pairs as of its step (the table's, plus the user's rows
        of earlier steps), sorted by (row, item); and the (later, earlier) row pairs of
        one user."""
        which, item, last_t, count = self.pairs.row_pairs(rows.user)
        later, earlier = earlier_pairs(rows.user, rows.step)
        if later.numel():
            which = torch.cat((which, later))
            item = torch.cat((item, rows.item[earlier]))
            last_t = torch.cat((last_t, rows.t[earlier]))
            count = torch.cat((count, torch.ones_like(last_t[: later.shape[0]])))
        flat, inverse = torch.unique(which * self.num_items + item, return_inverse=True)
        if flat.shape[0] < inverse.shape[0]:  # a pair both in the table and in the steps
            count = count.new_zeros(flat.shape[0]).index_add_(0, inverse, count)
            latest = last_t.new_full((flat.shape[0],), float("-inf"))
            last_t = latest.scatter_reduce_(0, inverse, last_t, reduce="amax")
        else:
            order = torch.empty_like(inverse)
            order[inverse] = torch.arange(inverse.shape[0], device=inverse.device)
            count, last_t = count[order], last_t[order]
        which = torch.div(flat, self.num_items, rounding_mode="floor")
        lengths = torch.bincount(which, minlength=len(rows))
        item = flat - which * self.num_items
        return History(which, item, last_t, count, lengths, flat), later, earlier

    def _history(self, batch: Interactions) -> History:
        """The seen pairs of a step's users, before the step."""
        return self._pairs_as_of_steps(StepRun.of([batch]))[0]

    def _moves_as_of_steps(self, rows: StepRun) -> tuple[Tensor, Tensor, Tensor]:
        """Every user's moves from each row's previous item as of its step (the table's,
        plus earlier steps' rows from the same item): (row · I + item [K] sorted, their
        counts [K]), and each row's sum [N] (at least 1)."""
        size, num_items = len(rows), self.num_items
        prev = rows.prev_item
        has_prev = prev >= 0
        which, item, _, count = self.transitions.row_pairs(prev.clamp_min(0))
        keep = has_prev[which]  # no previous item: no moves
        which, item, count = which[keep], item[keep], count[keep].float()
        # rows without a previous item get keys of their own: no earlier rows share them
        key = torch.where(has_prev, prev, -1 - torch.arange(size, device=prev.device))
        later, earlier = earlier_pairs(key, rows.step)
        if later.numel():
            which = torch.cat((which, later))
            item = torch.cat((item, rows.item[earlier]))
            count = torch.cat((count, count.new_ones(later.shape[0])))
        flat, inverse = torch.unique(which * num_items + item, return_inverse=True)
        moves = count.new_zeros(flat.shape[0]).index_add_(0, inverse, count)
        out_degree = count.new_zeros(size).index_add_(0, which, count).clamp_min_(1.0)
        return flat, moves, out_degree

    def _moves(self, batch: Interactions) -> tuple[Tensor, Tensor]:
        """[B, I] counts of every user's moves from this row's previous item, and their sum."""
        flat, moves, out_degree = self._moves_as_of_steps(StepRun.of([batch]))
        dense = moves.new_zeros(len(batch) * self.num_items).index_put_((flat,), moves)
        return dense.view(len(batch), self.num_items), out_degree

    def _parts(
        self, rows: StepRun, outputs: Sequence[Output], table: Tensor | None = None
    ) -> tuple[Tensor, History, Tensor, Tensor]:
        """(gate [N], the users' seen pairs, P_repeat over them [M], explore logits [N, I],
        -inf where closed), every row from the state before its step."""
        affinity, scale = self._affinity(rows, outputs, table)
        size, num_items = affinity.shape
        history, later, earlier = self._pairs_as_of_steps(rows)
        which, lengths = history.which, history.lengths
        has_history = lengths > 0
        move_flat, moves, out_degree = self._moves_as_of_steps(rows)
        users, items, prev = rows.user, rows.item, rows.prev_item
        counts = self.user_counts[users]
        user_last_t = self.user_last_t[users]
        if later.numel():  # the user's rows of earlier steps, as `_observe` counts them
            own = torch.arange(size, device=items.device) * num_items + items
            repeat = _find(history.flat, own)[1]
            stays_now = (prev == items).to(counts.dtype)
            own = torch.stack((stays_now, torch.ones_like(stays_now), repeat.to(counts.dtype)), 1)
            counts = counts.index_add(0, later, own[earlier])
            user_last_t = user_last_t.scatter_reduce(0, later, rows.t[earlier], reduce="amax")
        stays, total, repeats = counts.unbind(1)
        stay_rate = (stays + 1.0) / (total + 2.0)
        # item counts before each step [S, I]
        step_items = rows.step * num_items + items
        per_step = torch.zeros(rows.num_steps * num_items, device=items.device)
        per_step = per_step.index_add_(0, step_items, torch.ones_like(items, dtype=torch.float))
        per_step = per_step.view(rows.num_steps, num_items)
        popularity = self.popularity + (torch.cumsum(per_step, 0) - per_step)
        decayed = decayed_counts_per_step(
            self.trend.decayed, self.trend.ref_t, rows, num_items, self.trend.decay_seconds
        )
        trend = torch.log1p(decayed).float()
        t = rows.t
        slot, found = _find(move_flat, history.flat)
        no_moves = moves.new_zeros(history.flat.shape[0])
        moved = torch.where(found, moves[slot], 0.0) if slot is not None else no_moves
        trend_of_pairs = trend.reshape(-1)[rows.step[which] * num_items + history.item]
        affinity_of_pairs = affinity.reshape(-1)[history.flat]
        if scale is not None:
            affinity_of_pairs = affinity_of_pairs * scale
        feats = features_of_pairs(
            history,
            t,
            prev,
            affinity_of_pairs,
            moved,
            out_degree,
            total,
            stay_rate,
            trend_of_pairs,
        )
        repeat_logits = self.repeat_scorer(feats).squeeze(-1)
        # softmax over each row's own pairs
        row_max = torch.full((size,), float("-inf"), device=affinity.device)
        row_max = row_max.scatter_reduce(0, which, repeat_logits.detach(), reduce="amax")
        weight = torch.exp(repeat_logits - row_max[which])
        p_repeat = weight / weight.new_zeros(size).index_add(0, which, weight)[which]
        # explore: items the user has not had (all items if the user has had every item),
        # scored by the base model, where other users went next, and popularity (all-time
        # and now): a linear scorer over those four, plus the base model's score
        w = self.explore_scorer.weight[0]
        per_item = w[2] * torch.log1p(popularity) + w[3] * trend + self.explore_scorer.bias
        # closed items get -inf from an added mask: masking in place would copy the
        # [N, I] gradient back through the views
        closed = history.flat[(lengths < num_items)[which]]
        mask = affinity.new_zeros(size * num_items).index_fill_(0, closed, float("-inf"))
        explore = per_item.index_select(0, rows.step) + mask.view(size, num_items)
        base_weight = 1.0 + w[0] if scale is None else scale * (1.0 + w[0])
        explore = (affinity * base_weight + explore).view(-1)
        explore = explore.index_put((move_flat,), w[1] * torch.log1p(moves), accumulate=True)
        explore = explore.view(size, num_items)
        since = (t - user_last_t).clamp_min(0.0)
        since = torch.where(torch.isfinite(since), since, torch.zeros_like(since)).float()
        best = torch.full((size,), -20.0, device=affinity.device)
        best = best.scatter_reduce(0, which, repeat_logits, reduce="amax").clamp(-20, 20)
        gate_in = torch.stack(
            [
                torch.log1p(total),
                (repeats + 1.0) / (total + 2.0),
                torch.log1p(since / HOUR),
                lengths.float() / num_items,
                best,
                stay_rate,
            ],
            dim=1,
        )
        gate = torch.sigmoid(self.gate_features(gate_in).squeeze(-1))
        gate = torch.where(has_history, gate, torch.zeros_like(gate))
        return gate, history, p_repeat, explore

    def distributions(self, batch: Interactions, output: Output) -> tuple[Tensor, Tensor, Tensor]:
        """(gate [B], P_repeat [B, I], P_explore [B, I]) before the batch updates anything."""
        gate, history, p_repeat, explore = self._parts(StepRun.of([batch]), [output])
        p_explore = torch.softmax(explore, dim=1)
        dense = p_explore.new_zeros(p_explore.numel()).index_put((history.flat,), p_repeat)
        return gate, dense.view_as(p_explore), p_explore

    @torch.no_grad()
    def _observe(self, rows: StepRun, repeat: Tensor) -> None:
        """Count the rows; `repeat` [N] says which pairs were seen before their step."""
        users, items, prev, t = rows.user, rows.item, rows.prev_item, rows.t
        ones = torch.ones_like(repeat, dtype=self.user_counts.dtype)
        counts = torch.stack(((prev == items).to(ones.dtype), ones, repeat.to(ones.dtype)), 1)
        self.user_counts.index_add_(0, users, counts)
        has_prev = prev >= 0
        self.transitions.observe(prev[has_prev], items[has_prev])
        self.popularity.index_add_(0, items, ones)
        self.trend.observe(rows)
        self.pairs.observe(users, items, t)
        self.user_last_t.scatter_reduce_(0, users, t, reduce="amax")


def step_bounds(rows: StepRun) -> list[tuple[int, int]]:
    """(first, past-the-last) row of each step."""
    ends = list(itertools.accumulate(rows.sizes))
    return list(zip([0, *ends[:-1]], ends, strict=True))


def _find(keys: Tensor, query: Tensor) -> tuple[Tensor | None, Tensor]:
    """(slot, found) of each query in the sorted `keys`; slot None when `keys` is empty."""
    if keys.numel() == 0:
        return None, torch.zeros_like(query, dtype=torch.bool)
    slot = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
    return slot, keys[slot] == query


class LogSumExp(torch.autograd.Function):
    """log Σ_i exp(z[n, i]) per row [N] of z [N, I], whose backward reuses the
    exponentials of the forward: one [N, I] product instead of recomputing them."""

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:
        top = z.detach().amax(dim=1, keepdim=True)
        exp = torch.sub(z, top).exp_()
        total = exp.sum(dim=1)
        ctx.save_for_backward(exp, total)
        return top.squeeze(1) + torch.log(total)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        exp, total = ctx.saved_tensors
        return exp * (grad / total)[:, None]


def _base_mode(mode: Mode) -> Mode:
    """What the mixture asks of its base: its prediction is the mixture's input, so
    training asks for both the prediction and the base's own losses."""
    return Mode.ONLINE if mode is Mode.TRAIN else mode
