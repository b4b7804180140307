"""Chronological splits: JODIE's boundaries, contiguity, and one-sentence errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tempint.data.splits import Split, chrono_split
from tempint.errors import ConfigError, DataError


def test_boundaries_are_floors_of_80_and_90_percent():
    split = chrono_split(10)
    assert (split.train_end, split.val_end, split.num_interactions) == (8, 9, 10)
    assert split.train == range(0, 8) and split.val == range(8, 9) and split.test == range(9, 10)
    split = chrono_split(157_474)  # Wikipedia: JODIE trains on 125,979 interactions
    assert (split.train_end, split.val_end) == (125_979, 141_726)
    assert chrono_split(1_293_103).train_end == 1_034_482  # LastFM


def test_custom_fractions():
    split = chrono_split(100, val=0.15, test=0.25)
    assert (split.train_end, split.val_end) == (60, 75)


def test_boundary_times_are_the_first_times_of_val_and_test():
    t = np.arange(10, dtype=float) * 3
    split = chrono_split(10, timestamps=t)
    assert (split.train_end_time, split.val_end_time) == (24.0, 27.0)
    assert split.as_dict() == {
        "train_end": 8,
        "val_end": 9,
        "num_interactions": 10,
        "train_end_time": 24.0,
        "val_end_time": 27.0,
        "mode": "position",
    }
    assert chrono_split(10).train_end_time is None


@settings(max_examples=50, deadline=None)
@given(st.integers(10, 10**7))
def test_splits_are_disjoint_contiguous_and_ordered(n):
    split = chrono_split(n)
    assert split.train_end == n * 8 // 10 and split.val_end == n * 9 // 10
    parts = [split.train, split.val, split.test]
    assert all(len(p) > 0 for p in parts)
    assert parts[0].start == 0 and parts[-1].stop == n
    for earlier, later in zip(parts, parts[1:]):
        assert earlier.stop == later.start  # contiguous, so disjoint and time-ordered
    assert sum(len(p) for p in parts) == n


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(val=0.0), "data.val"),
        (dict(val=1.5), "data.val"),
        (dict(test=-0.1), "data.test"),
        (dict(test=1.0), "data.test"),
        (dict(val=0.5, test=0.5), "data.val + data.test"),
    ],
)
def test_bad_fractions_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        chrono_split(100, **kwargs)


@pytest.mark.parametrize(
    "n, kwargs, name",
    [
        (0, {}, "training"),
        (3, {}, "validation"),  # floor(2.4) = floor(2.7) = 2
        (10, dict(test=1e-17), "test"),  # 1 - 1e-17 rounds to 1: nothing left for test
    ],
)
def test_empty_split_is_a_data_error(n, kwargs, name):
    with pytest.raises(DataError, match=f"toy: the {name} split would be empty"):
        chrono_split(n, source="toy", **kwargs)


def test_split_is_frozen():
    split = chrono_split(10)
    assert isinstance(split, Split)
    with pytest.raises(AttributeError):
        split.train_end = 3
