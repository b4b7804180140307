"""Static embeddings: one trainable vector per user and item, no memory (thesis baseline)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from tempint.data.batch import Interactions
from tempint.models.base import Capabilities, InteractionModel, Mode, Output
from tempint.models.components.losses import objective_loss, spread_loss

__all__ = ["StaticEmbedding"]


class StaticEmbedding(InteractionModel):
    """Trainable user/item embeddings with LiMNet's losses: what memory adds is measured against it."""

    capabilities = Capabilities(scorers=("dot", "l2"))

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int = 32,
        normalize: bool = True,
        objective: str = "dot",
        objective_weight: float = 1.0,
        spread_weight: float = 0.1,
    ):
        super().__init__(num_users, num_items)
        self.user = nn.Embedding(num_users, dim)
        self.item = nn.Embedding(num_items, dim)
        nn.init.normal_(self.user.weight, std=dim**-0.5)
        nn.init.normal_(self.item.weight, std=dim**-0.5)
        self.normalize = normalize
        self.objective = objective
        self.objective_weight = objective_weight
        self.spread_weight = spread_weight

    def _maybe_norm(self, x):
        return F.normalize(x, dim=-1) if self.normalize else x

    def forward(self, batch: Interactions, mode: Mode) -> Output:
        user = self._maybe_norm(self.user(batch.user))
        losses = {}
        if mode.losses:
            item = self._maybe_norm(self.item(batch.item))
            losses["objective"] = self.objective_weight * objective_loss(user, item, self.objective)
            if self.spread_weight:
                losses["spread"] = self.spread_weight * spread_loss(user, item)
        candidates = self._maybe_norm(self.item.weight) if mode.scores else None
        return Output(query=user, candidates=candidates, losses=losses)
