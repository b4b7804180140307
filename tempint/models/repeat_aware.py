"""A learned gate between repeating one of the user's own items and exploring new ones.

In the spirit of RepeatNet (Ren et al., AAAI'19): P(i) = g·P_repeat(i) + (1 − g)·P_explore(i).
P_repeat is a softmax over the user's own past items, scored from each pair's recency,
frequency, whether it is the user's last item, and the base model's affinity; P_explore
is a softmax of the base model's scores over the items the user has not had. The gate g
reads the base model's user state and the user's repeat habits. Any embedding model is a
base: its memory, losses and updates run unchanged underneath.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tempint.data.batch import Chunk, Interactions
from tempint.models.base import InteractionModel, Output, at_least_float32, exact_scores
from tempint.models.components.pairs import PairTable
from tempint.models.heuristics import RecentPopularity

__all__ = ["RepeatAware", "pair_features"]

HOUR = 3600.0
NUM_PAIR_FEATURES = 12
NUM_EXPLORE_FEATURES = 4
NUM_GATE_FEATURES = 6


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
    of each item's time-decayed interaction count (what is popular now). Recency rank
    matters beside age: Wikipedia editors alternate between two pages, so "the one
    before last" is a pattern of its own.
    """
    which, item = history.which, history.item
    age = (t[which] - history.last_t).clamp_min(0.0)
    log_age = torch.log1p(age / HOUR).float()
    count = history.count.float()
    rank = recency_rank(which, history.last_t, history.lengths).float()
    is_last = (item == prev_item[which]).float()
    moved = transitions.reshape(-1)[history.flat]
    return torch.stack(
        [
            log_age,
            1.0 / (1.0 + log_age),
            torch.log1p(count),
            count / total[which].clamp_min(1.0),
            is_last,
            affinity.reshape(-1)[history.flat],
            1.0 / (1.0 + rank),
            (rank == 1).float(),
            torch.log1p(moved),
            moved / out_degree[which],
            is_last * stay_rate[which],
            trend[item],
        ],
        dim=-1,
    )


class RepeatAware(InteractionModel):
    """Mixture of a repeat and an explore distribution over all items, trained end to end.

    The loss is the negative log-likelihood of the true item under the mixture, plus the
    base model's own losses scaled by `base_loss_weight`. Ranking uses log P(i) (native).
    """

    scorers = ("native",)

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
        if not set(self.base.scorers) & {"dot", "native"}:
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

    # ---- state ---------------------------------------------------------------------------
    def reset_state(self) -> None:
        self.base.reset_state()
        self.trend.reset_state()
        self.pairs.reset_state()
        self.transitions.reset_state()
        self.popularity.zero_()
        self.user_counts.zero_()
        self.user_last_t.fill_(float("-inf"))

    def detach_state(self) -> None:
        self.base.detach_state()

    def begin_chunk(self, chunk: Chunk) -> None:
        if chunk.local_users is not None:
            raise ValueError(
                "repeat_aware keeps global per-user history, which windows processed in "
                "parallel would fill out of time order; use sampler=tbatch or chrono"
            )
        self.base.begin_chunk(chunk)

    def end_chunk(self, chunk: Chunk) -> None:
        self.base.end_chunk(chunk)

    # ---- prediction ------------------------------------------------------------------------
    def _affinity(self, output: Output) -> Tensor:
        """Explore logits [B, I] from the base model's Output (cosine or native scores)."""
        if output.query is not None and output.candidates is not None:
            query = F.normalize(at_least_float32(output.query), dim=-1)
            candidates = F.normalize(at_least_float32(output.candidates), dim=-1)
            if candidates.dim() == 3:
                cos = torch.bmm(candidates, query.unsqueeze(-1)).squeeze(-1)
            else:
                cos = query @ candidates.T
            return cos * self.log_temperature.exp()
        return output.scores.float()

    def _history(self, batch: Interactions) -> History:
        which, item, last_t, count = self.pairs.row_pairs(batch.user)
        lengths = torch.bincount(which, minlength=len(batch))
        return History(which, item, last_t, count, lengths, which * self.num_items + item)

    def _moves(self, batch: Interactions) -> tuple[Tensor, Tensor]:
        """[B, I] counts of every user's moves from this row's previous item, and their sum."""
        size = len(batch)
        which, item, _, count = self.transitions.row_pairs(batch.prev_item.clamp_min(0))
        count = count.float() * (batch.prev_item >= 0)[which]  # no previous item: no moves
        moves = count.new_zeros(size * self.num_items)
        moves.index_put_((which * self.num_items + item,), count)
        out_degree = count.new_zeros(size).index_add_(0, which, count).clamp_min_(1.0)
        return moves.view(size, self.num_items), out_degree

    def _parts(
        self, batch: Interactions, output: Output
    ) -> tuple[Tensor, History, Tensor, Tensor, Tensor]:
        """(gate [B], the users' seen pairs, P_repeat over them [M], P_explore [B, I],
        seen [B, I]), all from the state before the batch."""
        affinity = self._affinity(output)
        size, num_items = affinity.shape
        history = self._history(batch)
        which, lengths = history.which, history.lengths
        has_history = lengths > 0
        moves, out_degree = self._moves(batch)
        users = batch.user
        stays, total, repeats = self.user_counts[users].unbind(1)
        stay_rate = (stays + 1.0) / (total + 2.0)
        trend = torch.log1p(self.trend.current()).float()
        t = batch.t.to(torch.float64)
        feats = pair_features(
            history, t, batch.prev_item, affinity, moves, out_degree, total, stay_rate, trend
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
        per_item = w[2] * torch.log1p(self.popularity) + w[3] * trend + self.explore_scorer.bias
        explore_logits = affinity * (1.0 + w[0]) + w[1] * torch.log1p(moves) + per_item
        seen = torch.zeros(size * num_items, dtype=torch.bool, device=affinity.device)
        seen = seen.index_fill_(0, history.flat, True).view(size, num_items)
        closed = seen & (lengths < num_items)[:, None]
        p_explore = torch.softmax(explore_logits.masked_fill(closed, float("-inf")), dim=1)
        since = (t - self.user_last_t[users]).clamp_min(0.0)
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
        return gate, history, p_repeat, p_explore, seen

    def distributions(self, batch: Interactions, output: Output) -> tuple[Tensor, Tensor, Tensor]:
        """(gate [B], P_repeat [B, I], P_explore [B, I]) before the batch updates anything."""
        gate, history, p_repeat, p_explore, _ = self._parts(batch, output)
        dense = p_explore.new_zeros(p_explore.numel()).index_put((history.flat,), p_repeat)
        return gate, dense.view_as(p_explore), p_explore

    def forward(self, batch: Interactions) -> Output:
        output = self.base(batch)  # the base predicts, then updates its own memory
        with exact_scores(batch.item.device):  # [B, I] scores: no bf16 ties under autocast
            gate, history, p_repeat, p_explore, seen = self._parts(batch, output)
            mixture = ((1.0 - gate)[:, None] * p_explore).reshape(-1)
            mixture = mixture.index_add(0, history.flat, gate[history.which] * p_repeat)
            log_p = torch.log(mixture.clamp_min(1e-30)).view_as(p_explore)
        losses = {}
        if self.training:
            losses["nll"] = -log_p.gather(1, batch.item[:, None]).mean()
            for name, value in output.losses.items():
                losses[f"base/{name}"] = self.base_loss_weight * value
        self._observe(batch, seen.gather(1, batch.item[:, None]).squeeze(1))
        return Output(scores=log_p.detach() if not self.training else log_p, losses=losses)

    @torch.no_grad()
    def _observe(self, batch: Interactions, repeat: Tensor) -> None:
        """Count the batch; `repeat` [B] says which pairs were seen before it."""
        users, items, prev = batch.user, batch.item, batch.prev_item
        t = batch.t.to(torch.float64)
        ones = torch.ones_like(repeat, dtype=self.user_counts.dtype)
        counts = torch.stack(((prev == items).to(ones.dtype), ones, repeat.to(ones.dtype)), 1)
        self.user_counts.index_add_(0, users, counts)
        has_prev = prev >= 0
        self.transitions.observe(prev[has_prev], items[has_prev])
        self.popularity.index_add_(0, items, ones)
        self.trend.observe(batch)
        self.pairs.observe(users, items, t)
        self.user_last_t.scatter_reduce_(0, users, t, reduce="amax")
