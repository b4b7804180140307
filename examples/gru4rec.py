"""A per-user GRU over item embeddings, trained with a sampled softmax (after GRU4Rec,
Hidasi et al., ICLR'16): a whole model in one file, run with `tempint-train model=gru4rec`.

The user's hidden state is the only stream state, so it lives in a buffer (checkpoints and
`.to()` carry it) and the model declares `per_user_state`: evaluation may then put many
users in one step. The buffer lags one item behind: the user's previous item (a column of
every batch) is folded in when the next interaction is scored, so the GRU sits inside the
loss; gradients stop there (one step of backpropagation through time).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tempint.data.batch import Interactions
from tempint.models.base import Capabilities, InteractionModel, Mode, Output


class GRU4Rec(InteractionModel):
    """Query: the user's hidden state after its previous item; candidates: item embeddings."""

    # the dot product the softmax was trained on
    capabilities = Capabilities(scorers=("native",), per_user_state=True)

    def __init__(self, num_users: int, num_items: int, dim: int = 64, negatives: int = 256):
        super().__init__(num_users, num_items)
        self.item = nn.Embedding(num_items, dim)
        nn.init.normal_(self.item.weight, std=dim**-0.5)
        self.cell = nn.GRUCell(dim, dim)
        self.negatives = negatives
        # hidden state before the user's previous item, [U, d]
        self.register_buffer("lagged", torch.zeros(num_users, dim))

    def reset_state(self) -> None:
        self.lagged.zero_()

    def forward(self, batch: Interactions, mode: Mode) -> Output:
        seen = batch.prev_item >= 0
        lagged = self.lagged[batch.user]
        folded = self.cell(self.item(batch.prev_item.clamp_min(0)), lagged)
        query = torch.where(seen[:, None], folded, lagged)  # [B, d]: nothing seen yet -> 0
        losses = {}
        if mode.losses:
            losses["sampled_softmax"] = self._sampled_softmax(query, batch.item)
        scores = query @ self.item.weight.T if mode.scores else None  # [B, I]
        self.lagged.index_copy_(0, batch.user, query.detach())
        return Output(scores=scores, losses=losses)

    def _sampled_softmax(self, query: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy of the true item against uniformly drawn items shared by the step;
        a drawn item equal to the row's true item is masked, not counted as a negative."""
        drawn = torch.randint(self.num_items, (self.negatives,), device=target.device)
        candidates = torch.cat([target[:, None], drawn.expand(len(target), -1)], dim=1)
        logits = torch.einsum("bd,bkd->bk", query, self.item(candidates))
        accidental = candidates[:, 1:] == target[:, None]
        logits[:, 1:] = logits[:, 1:].masked_fill(accidental, float("-inf"))
        return F.cross_entropy(logits, torch.zeros_like(target))
