"""The one contract every model speaks, learned or not.

`forward(batch)` first computes what the model predicts for the batch from its state
*before* the batch, then the loss terms, then updates its state with the batch. The
evaluator ranks from the prediction only, so no model can see the target it is scored on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tempint.data.batch import Chunk, Interactions

__all__ = ["Output", "InteractionModel", "SCORERS"]

# How an Output is turned into item scores; "native" uses Output.scores.
SCORERS = ("dot", "l2", "native")


@dataclass
class Output:
    """What a model predicts for a batch, from its state before the batch.

    Either embeddings (`query` [B, d] against `candidates` [I, d], or [B, I, d] when every
    query has its own candidate table) ranked by a scorer, or `scores` [B, I] (higher is
    better). `losses` are already weighted; their sum is the training objective.
    """

    query: Tensor | None = None
    candidates: Tensor | None = None
    scores: Tensor | None = None
    losses: dict[str, Tensor] = field(default_factory=dict)

    @property
    def loss(self) -> Tensor | None:
        if not self.losses:
            return None
        return torch.stack([v.reshape(()) for v in self.losses.values()]).sum()


class InteractionModel(nn.Module):
    """Base class: state lives in buffers so `.to()` and checkpoints carry it.

    Subclasses set `scorers` (the scorers that make sense for their Output; the first is
    the default) and `learned` (False for heuristics: nothing to optimise).
    """

    scorers: tuple[str, ...] = ("dot", "l2")
    learned: bool = True
    # True when a step's scores equal one-interaction-at-a-time scores whatever the step
    # holds (repeated users or items included): evaluation may then use large steps.
    exact_any_step: bool = False

    def __init__(self, num_users: int, num_items: int) -> None:
        super().__init__()
        self.num_users = int(num_users)
        self.num_items = int(num_items)

    def forward(self, batch: Interactions) -> Output:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset_state(self) -> None:
        """Return the stream state to its start; two replays must give the same scores."""

    def detach_state(self) -> None:
        """Cut the autograd graph at the batch edge; else backward reaches every past batch."""

    def begin_chunk(self, chunk: Chunk) -> None:
        """Called before a chunk's steps: window-local models set up their local memory."""

    def end_chunk(self, chunk: Chunk) -> None:
        """Called after a chunk's steps, before its optimiser step."""

    def chunk_losses(self) -> dict[str, Tensor]:
        """Loss terms over the whole chunk, added after its last step.

        For terms that need more than one small step: a t-batch holds a handful of
        interactions, too few for a regulariser built from pairs of the batch.
        """
        return {}
