"""The thesis's training objective for embedding models: pull partners together, spread the rest."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["objective_loss", "spread_loss"]


def objective_loss(user: Tensor, item: Tensor, kind: str = "mse") -> Tensor:
    """Mean over the batch of ‖u − i‖² ("mse") or (u·i − 1)² ("dot", for unit vectors).

    `user`, `item` [B, d] are the embeddings *before* the interaction updates them: the
    same query and candidate the evaluator ranks.
    """
    if kind == "mse":
        return (user - item).pow(2).sum(-1).mean()
    if kind == "dot":
        return ((user * item).sum(-1) - 1.0).pow(2).mean()
    raise ValueError(f"objective {kind!r} is unknown; use 'mse' or 'dot'")


def spread_loss(user: Tensor, item: Tensor) -> Tensor:
    """Mean squared off-diagonal entry of the Gram matrices UUᵀ and IIᵀ of the batch.

    Without it the objective is solved by mapping every node to one point; penalising
    pairwise similarity inside each side keeps the embeddings apart. Computed from the
    [d, d] matrices xᵀx (same Frobenius norm as the Gram matrix x xᵀ) in O(B·d²), not
    O(B²·d): ‖xᵀx‖² minus the diagonal Σ_a ‖x_a‖⁴. A batch of one has no pairs: 0.
    """
    x = torch.stack((user, item))  # [2, B, d]
    size = x.shape[1]
    gram = torch.bmm(x.transpose(1, 2), x).flatten()
    norms = (x * x).sum(dim=-1).flatten()
    mass = (torch.dot(gram, gram) - torch.dot(norms, norms)).clamp_min(0)
    return mass / max(size * (size - 1), 1)
