"""The leaderboard and the bridge table render from a tiny sweep's output."""

from __future__ import annotations

import json

import pytest

from tempint.report import bridge_table, leaderboard, load_runs, main, summary_table
from tempint.train import train


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    from conftest import compose_config

    root = tmp_path_factory.mktemp("multirun")
    for i, model in enumerate(["recency", "static"]):
        train(
            compose_config(
                [
                    "data=synthetic",
                    "trainer.max_epochs=1",
                    "trainer.enable_progress_bar=false",
                    f"model={model}",
                ],
                root / str(i),
            )
        )
    return root


def test_leaderboard_and_figures_from_a_sweep(tiny_sweep, tmp_path, capsys):
    runs = load_runs(tiny_sweep)
    assert len(runs) == 2
    table = leaderboard(runs)
    assert "StaticEmbedding" in table and "Recency" in table
    main([str(tiny_sweep), "--out", str(tmp_path / "report")])
    assert "| run | model |" in capsys.readouterr().out
    assert (tmp_path / "report" / "leaderboard.md").exists()
    assert (tmp_path / "report" / "model_comparison.png").stat().st_size > 0


def test_summary_puts_the_heuristics_beside_the_model(tiny_sweep):
    metrics = json.loads(next(tiny_sweep.rglob("metrics.json")).read_text())
    table = summary_table(metrics)
    assert "| recency |" in table and "| popularity |" in table
    assert "average ties" in table


def test_bridge_names_the_component_that_carries_the_gap():
    runs = [
        {"choices": {"ablation": a}, "test/mrr": m, "test/mrr/repeat": m, "test/mrr/new": n}
        for a, m, n in [
            ("bridge/jodie", 0.70, 0.20),
            ("bridge/jodie", 0.72, 0.22),
            ("bridge/jodie_no_static", 0.50, 0.21),
            ("bridge/jodie_no_smoothness", 0.69, 0.10),
            ("bridge/core", 0.40, 0.05),
            ("bridge/core_plus_static", 0.65, 0.06),
            ("bridge/core_plus_smoothness", 0.41, 0.15),
        ]
    ]
    table = bridge_table(runs)
    assert "| bridge/jodie | 2 | 0.7100 |" in table
    assert (
        "- overall: removing static costs most (-0.2100); adding static gains most (+0.2500)"
        in table
    )
    assert (
        "- new: removing smoothness costs most (-0.1100); adding smoothness gains most (+0.1000)"
        in table
    )
