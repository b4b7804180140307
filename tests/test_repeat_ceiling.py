"""The recency ceiling script: exact values on a hand-made stream."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "repeat_ceiling.py"
spec = importlib.util.spec_from_file_location("repeat_ceiling", SCRIPT)
repeat_ceiling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(repeat_ceiling)


def test_recency_and_oracle_switch_on_a_hand_made_stream():
    users = np.array([0, 0, 1, 0, 0, 1])
    items = np.array([1, 2, 5, 1, 3, 5])
    t = np.array([0.0, 10.0, 15.0, 20.0, 5000.0, 100000.0])
    out = repeat_ceiling.ceiling(users, items, t, test_start=3)
    # k=3: user 0 had [1, 2] -> item 1 is second most recent (switch back)
    # k=4: item 3 is new for user 0;  k=5: user 1 stays on item 5
    assert out["count"] == 3
    assert out["last"] == pytest.approx(1 / 3) and out["repeat"] == pytest.approx(2 / 3)
    assert out["recency_mrr"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert out["oracle_switch_mrr"] == pytest.approx((1 + 0 + 1) / 3)
    assert out["stay_by_gap"][(0, 60)] == (pytest.approx(1 / 3), 0.0)
    assert out["stay_by_gap"][(86400, float("inf"))] == (pytest.approx(1 / 3), 1.0)


def test_runs_on_the_bundled_wikipedia(capsys):
    repeat_ceiling.main([])
    printed = capsys.readouterr().out
    assert "recency MRR 0.81" in printed and "oracle stay-or-switch MRR 0.84" in printed
