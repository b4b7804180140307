"""Chronological train / validation / test splits, never shuffled.

Two modes: by position (JODIE's 80/10/10 of the rows) and by time quantile (TGB's:
train t <= q70, validation q70 < t <= q85, test t > q85, so that interactions sharing a
timestamp never straddle a boundary).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tempint.errors import ConfigError, DataError

__all__ = ["Split", "chrono_split", "time_quantile_split", "make_split", "SPLIT_MODES"]

SPLIT_MODES = ("position", "time_quantile")


@dataclass(frozen=True)
class Split:
    """Row ranges [0, train_end), [train_end, val_end), [val_end, num_interactions)."""

    train_end: int
    val_end: int
    num_interactions: int
    train_end_time: float | None = None
    val_end_time: float | None = None
    mode: str = "position"

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
    _check_fractions(val, test)
    train_end = int(num_interactions * (1 - val - test))
    val_end = int(num_interactions * (1 - test))
    _check_nonempty(train_end, val_end, num_interactions, val, test, source)
    times = {}
    if timestamps is not None:
        times = {
            "train_end_time": float(timestamps[train_end]),
            "val_end_time": float(timestamps[val_end]),
        }
    return Split(train_end, val_end, num_interactions, **times)


def time_quantile_split(
    timestamps, val: float = 0.15, test: float = 0.15, source: str = "data"
) -> Split:
    """TGB's split: thresholds at the (1 − val − test) and (1 − test) quantiles of time.

    Train holds t <= q_train, validation q_train < t <= q_val, test t > q_val, with the
    quantiles as numpy computes them (linear interpolation), as TGB's datasets do. The rows
    are sorted by time, so each split is a contiguous row range; `train_end_time` and
    `val_end_time` record the two thresholds.
    """
    import numpy as np

    _check_fractions(val, test)
    t = np.asarray(timestamps, dtype=np.float64)
    # rounded so that val = test = 0.15 asks numpy for exactly 0.70 and 0.85
    q_train, q_val = np.quantile(t, [round(1 - val - test, 12), round(1 - test, 12)])
    train_end = int(np.searchsorted(t, q_train, side="right"))
    val_end = int(np.searchsorted(t, q_val, side="right"))
    _check_nonempty(train_end, val_end, len(t), val, test, source)
    return Split(train_end, val_end, len(t), float(q_train), float(q_val), mode="time_quantile")


def make_split(
    mode: str, num_interactions: int, val: float, test: float, timestamps, source: str = "data"
) -> Split:
    """The split of `mode` (`SPLIT_MODES`), named in the config key `data.split`."""
    if mode == "position":
        return chrono_split(num_interactions, val, test, timestamps=timestamps, source=source)
    if mode == "time_quantile":
        return time_quantile_split(timestamps, val, test, source=source)
    raise ConfigError(f"data.split={mode!r} is unknown; use one of {', '.join(SPLIT_MODES)}")


def _check_fractions(val: float, test: float) -> None:
    for name, value in (("data.val", val), ("data.test", test)):
        if not 0 < value < 1:
            raise ConfigError(f"{name}={value} is outside (0, 1); use a fraction such as 0.1")
    if val + test >= 1:
        raise ConfigError(
            f"data.val + data.test = {val + test:g} leaves no training data; "
            "use fractions that sum to less than 1"
        )


def _check_nonempty(train_end: int, val_end: int, n: int, val: float, test: float, source: str):
    for name, lo, hi in (
        ("training", 0, train_end),
        ("validation", train_end, val_end),
        ("test", val_end, n),
    ):
        if hi <= lo:
            raise DataError(
                f"{source}: the {name} split would be empty ({n} interactions "
                f"with val={val:g}, test={test:g}); use more data or larger fractions"
            )
