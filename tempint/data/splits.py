"""Chronological train / validation / test split by position in time order."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tempint.errors import ConfigError, DataError

__all__ = ["Split", "chrono_split"]


@dataclass(frozen=True)
class Split:
    """Row ranges [0, train_end), [train_end, val_end), [val_end, num_interactions)."""

    train_end: int
    val_end: int
    num_interactions: int
    train_end_time: float | None = None
    val_end_time: float | None = None

    @property
    def train(self) -> range:
        return range(0, self.train_end)

    @property
    def val(self) -> range:
        return range(self.train_end, self.val_end)

    @property
    def test(self) -> range:
        return range(self.val_end, self.num_interactions)

    def as_dict(self) -> dict:
        return asdict(self)


def chrono_split(
    num_interactions: int,
    val: float = 0.1,
    test: float = 0.1,
    timestamps=None,
    source: str = "data",
) -> Split:
    """Split by position, never shuffled: the last `test` fraction is the test split.

    Boundaries are floor(N·(1 − val − test)) and floor(N·(1 − test)), the convention of
    JODIE's code, so on Wikipedia the training split has 125,979 interactions.
    """
    for name, value in (("data.val", val), ("data.test", test)):
        if not 0 < value < 1:
            raise ConfigError(f"{name}={value} is outside (0, 1); use a fraction such as 0.1")
    if val + test >= 1:
        raise ConfigError(
            f"data.val + data.test = {val + test:g} leaves no training data; "
            "use fractions that sum to less than 1"
        )
    train_end = int(num_interactions * (1 - val - test))
    val_end = int(num_interactions * (1 - test))
    for name, lo, hi in (
        ("training", 0, train_end),
        ("validation", train_end, val_end),
        ("test", val_end, num_interactions),
    ):
        if hi <= lo:
            raise DataError(
                f"{source}: the {name} split would be empty ({num_interactions} interactions "
                f"with val={val:g}, test={test:g}); use more data or larger fractions"
            )
    times = {}
    if timestamps is not None:
        times = {
            "train_end_time": float(timestamps[train_end]),
            "val_end_time": float(timestamps[val_end]),
        }
    return Split(train_end, val_end, num_interactions, **times)
