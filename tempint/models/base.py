"""The one contract every model speaks, learned or not.

`forward(batch)` first computes what the model predicts for the batch from its state
*before* the batch, then the loss terms, then updates its state with the batch. The
evaluator ranks from the prediction only, so no model can see the target it is scored on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tempint.data.batch import Chunk, Interactions

__all__ = ["Output", "InteractionModel", "SCORERS", "exact_scores", "at_least_float32"]

# How an Output is turned into item scores; "native" uses Output.scores.
SCORERS = ("dot", "l2", "native")


def exact_scores(device: torch.device | str) -> torch.autocast:
    """Autocast off on `device`: item scores are ranked, and under bf16/fp16 autocast a
    [B, I] matmul rounds near-equal scores into ties (8 bits of mantissa for bf16), so
    the rank would depend on the training precision. Inputs must be lifted
    (`at_least_float32`): outside autocast a bf16 tensor stays bf16."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def at_least_float32(x: Tensor) -> Tensor:
    """`x` in float32 if it is in a 16-bit float type, else unchanged (float64 stays)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@dataclass
class Output:
    """What a model predicts for a batch, from its state before the batch.

    Either embeddings (`query` [B, d] against `candidates` [I, d], or [B, I, d] when every
    query has its own candidate table) ranked by a scorer, or `scores` [B, I] (higher is
    better). `losses` are already weighted; their sum is the training objective.

    When evaluation ranks steps in blocks (see `InteractionModel.block_scorers`), the
    model may leave `candidates` and `scores` out and, for a native score of the form
    −||query − candidate||² + bias, give `native_bias` [B, I]; or leave the query out
    too and keep in `partial` what `block_queries` needs to compute it for the whole
    block at once. `written` [B, d] then holds the batch's items' candidate rows as the
    step left them.
    """

    query: Tensor | None = None
    candidates: Tensor | None = None
    scores: Tensor | None = None
    native_bias: Tensor | None = None
    partial: tuple[Tensor, ...] | None = None
    written: Tensor | None = None
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
    # Scorers for which evaluation may rank a block chunk (`Chunk.block`) at once: the
    # Output's candidates are a global [I, d] table (`candidate_table`) whose rows change
    # only for the items a step holds. In a block chunk's steps (no autograd), forward may
    # skip building candidates and scores, and must return the rows it wrote
    # (`Output.written`).
    block_scorers: tuple[str, ...] = ()
    # True when the model's only stream state is per user (items are parameters): a step
    # may then hold one interaction per user with items repeated, and still score exactly.
    per_user_state: bool = False
    # True when a forward on a step leaves the state as its interactions fed one by one
    # would (counts, latest times), whatever the step holds: a batch scored from the
    # state before it (eval.batch_size > 1) is then one forward, with no replay.
    step_updates_commute: bool = False
    # True when `replay_steps` scores a run of consecutive exact evaluation steps at once:
    # frozen evaluation then hands the model runs of steps instead of one step at a time.
    replays_steps: bool = False

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

    def candidate_table(self) -> Tensor:  # pragma: no cover - only with block_scorers
        """The candidate vectors [I, d] the next step would be ranked against."""
        raise NotImplementedError

    def block_queries(
        self, outputs: Sequence[Output], versions: Any
    ) -> tuple[Tensor, Tensor | None]:
        """Queries [K, d] and native biases ([K, I] or None) of a block of steps' Outputs.

        `versions` (`tempint.eval.blocks.ItemVersions`) gives any item's candidate row as
        of a stream position, for models whose query reads an item's state.
        """
        query = torch.cat([o.query for o in outputs])
        biases = [o.native_bias for o in outputs if o.native_bias is not None]
        return query, torch.cat(biases) if biases else None

    def replay_steps(self, steps: Sequence[Interactions]) -> Output:
        """Frozen scores [K, I] of consecutive exact steps (no user or item twice in a
        step), each interaction from the state before its step, in the steps' order; the
        state is left after the last step. It must equal one `forward` per step: the
        vectorised replay of a model with `replays_steps`, for runs of many tiny steps.
        """
        outputs = [self(step) for step in steps]
        return Output(scores=torch.cat([o.scores for o in outputs]))

    def chunk_losses(self) -> dict[str, Tensor]:
        """Loss terms over the whole chunk, added after its last step.

        For terms that need more than one small step: a t-batch holds a handful of
        interactions, too few for a regulariser built from pairs of the batch.
        """
        return {}
