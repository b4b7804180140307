"""Non-learned baselines under the same contract: counts kept in buffers, no parameters.

On the JODIE benchmarks most interactions repeat an earlier (user, item) pair, so these
are the bar every learned model is read against. Their updates do not depend on the
order inside a step, so they are exact under any sampler.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tempint.data.batch import Interactions
from tempint.models.base import InteractionModel, Output
from tempint.models.components.pairs import PairTable

__all__ = ["Popularity", "RecentPopularity", "Recency"]


class Popularity(InteractionModel):
    """Global popularity: the number of interactions each item has had so far."""

    scorers = ("native",)
    learned = False

    def __init__(self, num_users: int, num_items: int):
        super().__init__(num_users, num_items)
        self.register_buffer("counts", torch.zeros(num_items, dtype=torch.float64))

    def reset_state(self) -> None:
        self.counts.zero_()

    def forward(self, batch: Interactions) -> Output:
        scores = None if self.training else self.counts.expand(len(batch), -1).clone()
        self.counts.index_add_(0, batch.item, torch.ones_like(batch.item, dtype=torch.float64))
        return Output(scores=scores)


class RecentPopularity(InteractionModel):
    """Exponentially time-decayed counts: Σ_j exp(−(t − t_j)/τ) over the item's past events.

    A decay common to all items does not change the ranking, so the scores are kept at a
    reference time (the latest event seen) and only rescaled when it advances.
    """

    scorers = ("native",)
    learned = False

    def __init__(self, num_users: int, num_items: int, decay_seconds: float = 86_400.0):
        super().__init__(num_users, num_items)
        if not decay_seconds > 0:
            raise ValueError(f"model.decay_seconds={decay_seconds} must be positive seconds")
        self.decay_seconds = float(decay_seconds)
        self.register_buffer("score", torch.zeros(num_items, dtype=torch.float64))
        self.register_buffer("ref_t", torch.zeros((), dtype=torch.float64))

    def reset_state(self) -> None:
        self.score.zero_()
        self.ref_t.zero_()

    def current(self) -> Tensor:
        return self.score

    def observe(self, batch: Interactions) -> None:
        t = batch.t.to(torch.float64)
        t_max = torch.maximum(t.max(), self.ref_t)
        self.score.mul_(torch.exp(-(t_max - self.ref_t) / self.decay_seconds))
        self.score.index_add_(0, batch.item, torch.exp(-(t_max - t) / self.decay_seconds))
        self.ref_t.copy_(t_max)

    def forward(self, batch: Interactions) -> Output:
        scores = None if self.training else self.score.expand(len(batch), -1).clone()
        self.observe(batch)
        return Output(scores=scores)


class Recency(InteractionModel):
    """The user's own past items, most recent first; then items by recent popularity.

    Keeps the last time of every (user, item) pair seen (`PairTable`), so its state grows
    with the distinct pairs of the stream, never with users × items.
    """

    scorers = ("native",)
    learned = False

    def __init__(self, num_users: int, num_items: int, decay_seconds: float = 86_400.0):
        super().__init__(num_users, num_items)
        self.popularity = RecentPopularity(num_users, num_items, decay_seconds)
        self.pairs = PairTable(num_items)

    def reset_state(self) -> None:
        self.pairs.reset_state()
        self.popularity.reset_state()

    def forward(self, batch: Interactions) -> Output:
        scores = None if self.training else self.scores(batch)
        self.popularity.observe(batch)
        self.pairs.observe(batch.user, batch.item, batch.t)
        return Output(scores=scores)

    def scores(self, batch: Interactions) -> Tensor:
        pop = self.popularity.current()
        fallback = pop / (pop.max() + 1.0)  # in [0, 1): below every seen item
        scores = fallback.expand(len(batch), -1).clone()
        which, item, last_t, _ = self.pairs.row_pairs(batch.user)
        age = (batch.t.to(torch.float64)[which] - last_t).clamp_min(0.0)
        seen = 2.0 + 1.0 / (1.0 + age)  # seen items in (2, 3]
        scores.view(-1).index_copy_(0, which * self.num_items + item, seen)
        return scores
