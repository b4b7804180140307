"""PairTable: the per-pair counts and last times of a dict, in sorted flat buffers."""

from __future__ import annotations

import pytest
import torch

import tempint.models.components.pairs as pairs
from tempint.models.components.pairs import PairTable


@pytest.mark.parametrize("min_recent", [1, 3, 4096])
def test_pairs_match_a_dict_through_merges_and_a_checkpoint(min_recent, monkeypatch):
    monkeypatch.setattr(pairs, "MIN_RECENT", min_recent)  # small: the levels merge often
    gen = torch.Generator().manual_seed(0)
    table, expected = PairTable(num_cols=7), {}
    for step in range(30):
        rows = torch.randint(0, 5, (6,), generator=gen)
        cols = torch.randint(0, 7, (6,), generator=gen)  # repeats inside a step too
        t = step * 10.0 + torch.rand(6, generator=gen, dtype=torch.float64)
        table.observe(rows, cols, t)
        for r, c, time in zip(rows.tolist(), cols.tolist(), t.tolist()):
            last, count = expected.get((r, c), (float("-inf"), 0))
            expected[(r, c)] = (max(last, time), count + 1)
        probe = torch.tensor([4, 0, 4, 2])
        which, col, last_t, count = table.row_pairs(probe)
        got = sorted(zip(which.tolist(), col.tolist(), last_t.tolist(), count.tolist()))
        want = sorted(
            (k, c, *expected[(r, c)])
            for k, r in enumerate(probe.tolist())
            for (row, c) in expected
            if row == r
        )
        assert got == want
    assert len(table) == len(expected)
    keys = torch.tensor(list(expected))
    count, last_t = table.lookup(keys[:, 0], keys[:, 1])
    assert count.tolist() == [v[1] for v in expected.values()]
    assert last_t.tolist() == [v[0] for v in expected.values()]
    assert table.lookup(torch.tensor([9]), torch.tensor([0]))[0].item() == 0

    restored = PairTable(num_cols=7)  # empty buffers take the checkpoint's sizes
    restored.load_state_dict(table.state_dict())
    assert torch.equal(restored.row_pairs(torch.arange(5))[2], table.row_pairs(torch.arange(5))[2])
    table.reset_state()
    assert len(table) == 0 and table.row_pairs(torch.arange(5))[0].numel() == 0
