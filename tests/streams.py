"""Hand-made interaction streams and replays shared by the model tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from tempint.data.batch import Interactions
from tempint.models.base import InteractionModel, Mode, Output


def hand_made(
    user: Sequence[int] | Tensor,
    item: Sequence[int] | Tensor,
    t: Sequence[float] | Tensor,
    **columns,
) -> Interactions:
    """Rows in time order; columns not given: zero gaps and cyclic features, no previous
    item, state label 0, index = position."""
    n = len(user)
    defaults = {
        "user": torch.as_tensor(user),
        "item": torch.as_tensor(item),
        "t": torch.as_tensor(t, dtype=torch.float64),
        "state_label": torch.zeros(n, dtype=torch.long),
        "delta_user": torch.zeros(n),
        "delta_item": torch.zeros(n),
        "prev_item": torch.full((n,), -1),
        "cyclic": torch.zeros(n, 4),
        "index": torch.arange(n),
    }
    return Interactions(**(defaults | columns))


def replay(
    model: InteractionModel,
    stream: Interactions,
    size: int = 3,
    read: Callable[[Output], Tensor] = lambda out: out.scores,
) -> list[Tensor]:
    """`read` of each consecutive batch of `size` rows, state carried, no autograd."""
    with torch.no_grad():
        return [
            read(model(stream.select(torch.arange(lo, min(lo + size, len(stream)))), Mode.SCORE))
            for lo in range(0, len(stream), size)
        ]


def assert_reset_replays_the_same(model: InteractionModel, stream: Interactions, **kw) -> None:
    """Two replays separated by `reset_state` give identical outputs."""
    first = replay(model, stream, **kw)
    model.reset_state()
    second = replay(model, stream, **kw)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
