"""The one contract every model speaks, learned or not.

A model is asked for one thing at a time, and told which (`Mode`): it never works out
what it is being asked from grad mode, `self.training` or flags of its own. A simple
model implements two methods, `score` (the prediction for a step from the state *before*
it) and `observe` (the state after it); everything else has a default built on them.
Fast paths (a fused `forward`, a whole-chunk `run_chunk`, `replay_steps`, block replay)
are optional and checked against the simple path by the equality tests. The evaluator
ranks from the prediction only, so no model can see the target it is scored on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tempint.data.batch import Chunk, Interactions

__all__ = [
    "Capabilities",
    "InteractionModel",
    "Mode",
    "Output",
    "Replayed",
    "SCORERS",
    "at_least_float32",
    "exact_scores",
]

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


class Mode(Enum):
    """What the caller asks of a step. Every mode moves the state on past the step.

    - TRAIN: the step's losses, with gradients (the module's training chunks).
    - SCORE: the prediction, from the state before the step (frozen evaluation).
    - ONLINE: both, the prediction first (test-then-train evaluation).
    - REPLAY: a frozen block step: what block ranking needs (a `Replayed`: the rows it
      wrote, and its query or its `pending` parts), for models with
      `Capabilities.block_scorers`.
    """

    TRAIN = "train"
    SCORE = "score"
    ONLINE = "online"
    REPLAY = "replay"

    @property
    def scores(self) -> bool:
        return self in (Mode.SCORE, Mode.ONLINE)

    @property
    def losses(self) -> bool:
        return self in (Mode.TRAIN, Mode.ONLINE)


@dataclass(frozen=True)
class Capabilities:
    """What a model can do, in one place: the evaluation plan is chosen from this alone.

    - `scorers`: the scorers that make sense for its Output; the first is the default.
    - `learned`: False for heuristics (nothing to optimise).
    - `exact_any_step`: a step's scores equal one-interaction-at-a-time scores whatever
      the step holds (repeated users or items included): evaluation may use large steps.
    - `per_user_state`: the only stream state is per user (items are parameters): a step
      may hold one interaction per user with items repeated, and still score exactly.
    - `step_updates_commute`: a step leaves the state as its interactions fed one by one
      would (counts, latest times): a batch scored from the state before it is one step,
      and so is a heuristic's (not learned) training chunk.
    - `block_scorers`: scorers for which evaluation may rank a block chunk at once: the
      candidates are a global [I, d] table (`candidate_table`) whose rows change only for
      the items a step holds, and `forward(step, Mode.REPLAY)` gives the rows it wrote
      (`Replayed`).
    - `replays_steps`: `replay_steps` scores a run of consecutive exact steps at once.
    """

    scorers: tuple[str, ...] = ("dot", "l2")
    learned: bool = True
    exact_any_step: bool = False
    per_user_state: bool = False
    step_updates_commute: bool = False
    block_scorers: tuple[str, ...] = ()
    replays_steps: bool = False


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


@dataclass
class Replayed:
    """What a step replayed in `Mode.REPLAY` leaves for block ranking: `written` [B, d],
    the candidate rows of the batch's items as the step left them, and either the
    `query` [B, d] or, for a model that computes a block's queries at once
    (`block_queries`), its own typed record of what they need (`pending`)."""

    written: Tensor
    query: Tensor | None = None
    pending: Any = None


class InteractionModel(nn.Module):
    """Base class: state lives in buffers so `.to()` and checkpoints carry it.

    Required: `score` and `observe` (or a `forward` that does both), and `capabilities`.
    The module trains a chunk with `train_chunk`; the protocol scores one with
    `run_chunk`; both pass the `Mode` down to `forward`, `begin_chunk` and `end_chunk`.
    """

    capabilities = Capabilities()

    def __init__(self, num_users: int, num_items: int) -> None:
        super().__init__()
        self.num_users = int(num_users)
        self.num_items = int(num_items)

    # ---- the two methods a simple model writes -----------------------------------------

    def score(self, batch: Interactions) -> Output:
        """The prediction for `batch` from the state before it; the state is unchanged.

        `observe` runs before the caller reads the prediction, so return new tensors,
        not views of state that `observe` writes in place (copy such a buffer first).
        """
        raise NotImplementedError(f"{type(self).__name__} implements neither score nor forward")

    def observe(self, batch: Interactions) -> None:
        """Move the state on past `batch` (no-op for a model without stream state)."""

    # ---- defaults built on them --------------------------------------------------------

    def forward(self, batch: Interactions, mode: Mode) -> Output | Replayed:
        """One step in `mode`: the prediction (and losses) from the state before the
        step, then the state after it. Override to fuse the two for speed."""
        if mode is Mode.REPLAY:
            raise NotImplementedError(f"{type(self).__name__} has no block replay")
        wants_prediction = mode.scores or (mode.losses and self.capabilities.learned)
        output = self.score(batch) if wants_prediction else Output()
        if mode.losses and self.capabilities.learned:
            output.losses = self.losses(output, batch)
        self.observe(batch)
        return output

    def losses(self, output: Output, batch: Interactions) -> dict[str, Tensor]:
        """Default objective: cross-entropy of the true item over every item's score
        (native scores, else query · candidates)."""
        logits = output.scores
        if logits is None:
            candidates = output.candidates
            if candidates.dim() == 2:
                logits = output.query @ candidates.T
            else:
                logits = torch.bmm(candidates, output.query.unsqueeze(-1)).squeeze(-1)
        return {"cross_entropy": F.cross_entropy(logits, batch.item)}

    def run_chunk(self, chunk: Chunk, mode: Mode) -> Iterator[Output | Replayed]:
        """Every step of `chunk` in `mode`, in order, one Output each (a `Replayed` in
        `Mode.REPLAY`): a generator, so the caller reads each step's prediction before the
        next step moves the state on.

        The chunk is closed with its last step, before that step's Output is handed out:
        in modes with losses its `chunk_losses` join that Output's losses (as
        "chunk/<name>"), then `end_chunk` runs. The sum of the Outputs' `loss` is the
        chunk's objective.
        """
        self.begin_chunk(chunk, mode)
        yield from self.closing(chunk, mode, (self(step, mode) for step in chunk.steps))

    def closing(
        self, chunk: Chunk, mode: Mode, outputs: Iterator[Output | Replayed]
    ) -> Iterator[Output | Replayed]:
        """`outputs` (one per step of `chunk`, computed lazily) handed on, the chunk closed
        with the last: in modes with losses its `chunk_losses` join the last Output's
        losses, then `end_chunk` runs. For `run_chunk` overrides that run steps their way."""
        last = len(chunk.steps) - 1
        for k, output in enumerate(outputs):
            if k == last:
                if mode.losses:
                    for name, value in self.chunk_losses().items():
                        output.losses[f"chunk/{name}"] = value
                self.end_chunk(chunk, mode)
            yield output
        if last < 0:
            self.end_chunk(chunk, mode)

    def train_chunk(self, chunk: Chunk) -> Tensor | None:
        """The summed training loss of `chunk` (its steps' and `chunk_losses`), or None.

        A heuristic whose updates commute ends in the same state from its steps at once.
        """
        steps = chunk.steps
        can = self.capabilities
        if not can.learned and can.step_updates_commute and len(steps) > 1:
            chunk = Chunk(steps=[Interactions.concat(steps)])
        total: Tensor | None = None
        for output in self.run_chunk(chunk, Mode.TRAIN):
            loss = output.loss
            if loss is not None:
                total = loss if total is None else total + loss
        return total

    def replay_steps(self, steps: Sequence[Interactions]) -> Output:
        """Frozen scores [K, I] of consecutive exact steps (no user or item twice in a
        step), each interaction from the state before its step, in the steps' order; the
        state is left after the last step. It must equal one scored step at a time: the
        vectorised replay of a model with `replays_steps`, for runs of many tiny steps.
        """
        outputs = [self(step, Mode.SCORE) for step in steps]
        return Output(scores=torch.cat([o.scores for o in outputs]))

    # ---- stream state and chunk hooks --------------------------------------------------

    def reset_state(self) -> None:
        """Return the stream state to its start; two replays must give the same scores."""

    def detach_state(self) -> None:
        """Cut the autograd graph at the batch edge; else backward reaches every past batch."""

    def begin_chunk(self, chunk: Chunk, mode: Mode) -> None:
        """Called before a chunk's steps: window-local models set up their local memory."""

    def end_chunk(self, chunk: Chunk, mode: Mode) -> None:
        """Called after a chunk's steps, before its optimiser step."""

    def chunk_losses(self) -> dict[str, Tensor]:
        """Loss terms over the whole chunk, added after its last step.

        For terms that need more than one small step: a t-batch holds a handful of
        interactions, too few for a regulariser built from pairs of the batch.
        """
        return {}

    # ---- block ranking (models with `Capabilities.block_scorers`) ----------------------

    def candidate_table(self) -> Tensor:  # pragma: no cover - only with block_scorers
        """The candidate vectors [I, d] the next step would be ranked against."""
        raise NotImplementedError

    def block_queries(
        self, outputs: Sequence[Replayed], versions: Any
    ) -> tuple[Tensor, Tensor | None]:
        """Queries [K, d] and native biases ([K, 1] or [K, I], or None) of a block's
        replayed steps; for a native score −||query − candidate||² + bias.

        `versions` (`tempint.eval.blocks.ItemVersions`) gives any item's candidate row as
        of a stream position, for models whose query reads an item's state.
        """
        return torch.cat([o.query for o in outputs]), None
