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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tempint.data.batch import Chunk, Interactions
from tempint.models.base import InteractionModel, Output, at_least_float32, exact_scores
from tempint.models.heuristics import RecentPopularity

__all__ = ["RepeatAware", "pair_features"]

HOUR = 3600.0
NUM_PAIR_FEATURES = 12
NUM_EXPLORE_FEATURES = 4
NUM_GATE_FEATURES = 6


def recency_rank(last_t: Tensor) -> Tensor:
    """[B, I] 0 for the user's most recent item, 1 for the one before, ...; unseen = I."""
    order = torch.argsort(torch.nan_to_num(last_t, neginf=-1e300), dim=1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(last_t.shape[1], device=last_t.device).expand_as(order))
    return torch.where(torch.isfinite(last_t), rank, torch.full_like(rank, last_t.shape[1]))


def pair_features(
    last_t: Tensor,
    count: Tensor,
    t: Tensor,
    prev_item: Tensor,
    affinity: Tensor,
    transitions: Tensor,
    stay_rate: Tensor,
    trend: Tensor,
) -> Tensor:
    """[B, I, 12] features of every (user, item) pair from the stream before now.

    `last_t` [B, I] time of the pair's latest interaction (-inf if none), `count` [B, I]
    its number of interactions, `t` [B] now, `prev_item` [B] (-1 if none), `affinity`
    [B, I] the base model's score, `transitions` [B, I] how often any user went from
    this user's previous item to the item, `stay_rate` [B] how often this user repeated
    its previous item, `trend` [I] the log of each item's time-decayed interaction count
    (what is popular now). Recency rank matters beside age: Wikipedia editors alternate
    between two pages, so "the one before last" is a pattern of its own.
    """
    seen = torch.isfinite(last_t)
    age = torch.where(seen, (t[:, None] - last_t).clamp_min(0.0), torch.zeros_like(last_t))
    log_age = torch.log1p(age / HOUR).float()
    total = count.sum(1, keepdim=True).clamp_min(1.0)
    rank = recency_rank(last_t).float()
    is_last = torch.zeros_like(affinity)
    rows = torch.nonzero(prev_item >= 0).squeeze(1)
    is_last[rows, prev_item[rows]] = 1.0
    out_degree = transitions.sum(1, keepdim=True).clamp_min(1.0)
    return torch.stack(
        [
            log_age,
            1.0 / (1.0 + log_age),
            torch.log1p(count),
            count / total,
            is_last,
            affinity,
            1.0 / (1.0 + rank),
            (rank == 1).float(),
            torch.log1p(transitions),
            transitions / out_degree,
            is_last * stay_rate[:, None],
            trend.expand_as(affinity),
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
        self.register_buffer(
            "last_t", torch.full((num_users, num_items), float("-inf"), dtype=torch.float64)
        )
        self.register_buffer("count", torch.zeros(num_users, num_items))
        self.register_buffer("transitions", torch.zeros(num_items, num_items))
        self.register_buffer("popularity", torch.zeros(num_items))
        self.register_buffer("user_stays", torch.zeros(num_users))
        self.register_buffer("user_total", torch.zeros(num_users))
        self.register_buffer("user_repeats", torch.zeros(num_users))
        self.register_buffer(
            "user_last_t", torch.full((num_users,), float("-inf"), dtype=torch.float64)
        )

    # ---- state ---------------------------------------------------------------------------
    def reset_state(self) -> None:
        self.base.reset_state()
        self.trend.reset_state()
        self.last_t.fill_(float("-inf"))
        self.count.zero_()
        self.transitions.zero_()
        self.popularity.zero_()
        self.user_stays.zero_()
        self.user_total.zero_()
        self.user_repeats.zero_()
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

    def distributions(self, batch: Interactions, output: Output) -> tuple[Tensor, Tensor, Tensor]:
        """(gate [B], P_repeat [B, I], P_explore [B, I]) before the batch updates anything."""
        affinity = self._affinity(output)
        last_t = self.last_t[batch.user]
        count = self.count[batch.user]
        seen = torch.isfinite(last_t)
        has_history = seen.any(1)
        prev = batch.prev_item.clamp_min(0)
        transitions = self.transitions[prev] * (batch.prev_item >= 0).float()[:, None]
        total = self.user_total[batch.user]
        stay_rate = (self.user_stays[batch.user] + 1.0) / (total + 2.0)
        trend = torch.log1p(self.trend.current()).float()
        feats = pair_features(
            last_t,
            count,
            batch.t.to(torch.float64),
            batch.prev_item,
            affinity,
            transitions,
            stay_rate,
            trend,
        )
        repeat_logits = self.repeat_scorer(feats).squeeze(-1).masked_fill(~seen, float("-inf"))
        p_repeat = torch.where(
            has_history[:, None],
            torch.softmax(repeat_logits.masked_fill(~has_history[:, None], 0.0), dim=1),
            torch.zeros_like(affinity),
        )
        # explore: items the user has not had (all items if the user has had every item),
        # scored by the base model, where other users went next, and popularity (all-time
        # and now)
        explore_in = torch.stack(
            [
                affinity,
                torch.log1p(transitions),
                torch.log1p(self.popularity).expand_as(affinity),
                trend.expand_as(affinity),
            ],
            dim=-1,
        )
        explore_logits = affinity + self.explore_scorer(explore_in).squeeze(-1)
        unseen = ~seen
        open_items = torch.where(unseen.any(1, keepdim=True), unseen, torch.ones_like(unseen))
        p_explore = torch.softmax(explore_logits.masked_fill(~open_items, float("-inf")), dim=1)
        since = (batch.t.to(torch.float64) - self.user_last_t[batch.user]).clamp_min(0.0)
        since = torch.where(torch.isfinite(since), since, torch.zeros_like(since)).float()
        gate_in = torch.stack(
            [
                torch.log1p(total),
                (self.user_repeats[batch.user] + 1.0) / (total + 2.0),
                torch.log1p(since / HOUR),
                seen.float().sum(1) / self.num_items,
                torch.max(repeat_logits.masked_fill(~seen, -20.0), dim=1).values.clamp(-20, 20),
                stay_rate,
            ],
            dim=1,
        )
        gate = torch.sigmoid(self.gate_features(gate_in).squeeze(-1))
        gate = torch.where(has_history, gate, torch.zeros_like(gate))
        return gate, p_repeat, p_explore

    def forward(self, batch: Interactions) -> Output:
        output = self.base(batch)  # the base predicts, then updates its own memory
        with exact_scores(batch.item.device):  # [B, I] scores: no bf16 ties under autocast
            gate, p_repeat, p_explore = self.distributions(batch, output)
        mixture = gate[:, None] * p_repeat + (1.0 - gate[:, None]) * p_explore
        log_p = torch.log(mixture.clamp_min(1e-30))
        losses = {}
        if self.training:
            losses["nll"] = -log_p.gather(1, batch.item[:, None]).mean()
            for name, value in output.losses.items():
                losses[f"base/{name}"] = self.base_loss_weight * value
        self._observe(batch)
        return Output(scores=log_p.detach() if not self.training else log_p, losses=losses)

    @torch.no_grad()
    def _observe(self, batch: Interactions) -> None:
        users, items = batch.user, batch.item
        t = batch.t.to(torch.float64)
        repeat = torch.isfinite(self.last_t[users, items]).float()
        has_prev = batch.prev_item >= 0
        self.user_stays.index_add_(0, users, (batch.prev_item == items).float())
        self.transitions.view(-1).index_add_(
            0,
            (batch.prev_item[has_prev] * self.num_items + items[has_prev]),
            torch.ones(int(has_prev.sum()), device=items.device),
        )
        self.popularity.index_add_(0, items, torch.ones_like(repeat))
        self.trend.observe(batch)
        flat = users * self.num_items + items
        self.last_t.view(-1).scatter_reduce_(0, flat, t, reduce="amax")
        self.count.view(-1).index_add_(0, flat, torch.ones_like(t, dtype=self.count.dtype))
        ones = torch.ones_like(repeat)
        self.user_total.index_add_(0, users, ones)
        self.user_repeats.index_add_(0, users, repeat)
        self.user_last_t.scatter_reduce_(0, users, t, reduce="amax")
