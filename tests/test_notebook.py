"""The results table and notebook on a tiny sweep's output: four runs made in-process into
a multirun-shaped folder (`<sweep>/<job>/metrics.json` with Hydra's overrides record)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import FAST, compose_config

from tempint import results
from tempint.train import train

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "results.ipynb"

# job -> overrides, as `tempint-train -m` would number them
JOBS = [
    ["model=static", "seed=1"],
    ["model=static", "seed=2"],
    ["model=static", "seed=1", "model.normalize=false"],
    ["model=recency", "seed=1"],
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multirun") / "2025-01-31_12-00-00"
    for job, overrides in enumerate(JOBS):
        run_dir = root / str(job)
        train(compose_config(FAST + overrides, run_dir))
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return root


def test_runs_table_one_row_per_run(sweep):
    runs = results.runs_table(sweep)
    assert runs["job"].to_list() == [0, 1, 2, 3]
    assert runs["model"].to_list() == ["StaticEmbedding"] * 3 + ["Recency"]
    assert runs["seed"].to_list() == [1, 2, 1, 1]
    assert runs["cfg.model.normalize"].to_list() == [True, True, False, None]
    assert runs["overrides"][2] == "model=static seed=1 model.normalize=false"
    assert runs["sweep"].n_unique() == 1

    stats = results.spread(runs, ["model"], "test/mrr")
    static = runs.filter(runs["model"] == "StaticEmbedding")["test/mrr"].to_list()
    row = stats.filter(stats["model"] == "StaticEmbedding").row(0, named=True)
    assert row["runs"] == 3
    assert row["mean"] == pytest.approx(sum(static) / 3)
    recency = stats.filter(stats["model"] == "Recency").row(0, named=True)
    assert (recency["runs"], recency["std"]) == (1, 0.0)

    # the normalisation sweep is the runs that override model.normalize (jobs 2 only here),
    # so the figure compares nothing unless both values were run by that sweep
    assert results.swept_runs(runs, "cfg.model.normalize")["job"].to_list() == [2]


def test_notebook_writes_figures(sweep, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # runs made without an overrides record: every run with the key counts
    for overrides in sweep.glob("*/.hydra/overrides.yaml"):
        overrides.rename(overrides.with_suffix(".bak"))
    try:
        figures = tmp_path / "figures"
        monkeypatch.setenv("TEMPINT_RESULTS", str(sweep))
        monkeypatch.setenv("TEMPINT_FIGURES", str(figures))
        monkeypatch.setenv("MPLBACKEND", "Agg")
        # the kernel imports this checkout's tempint, not another installed copy
        checkout = str(NOTEBOOK.parent.parent)
        monkeypatch.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")]))
        )
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        client = nbclient.NotebookClient(
            notebook,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": str(tmp_path)}},
        )
        client.execute()
    finally:
        for saved in sweep.glob("*/.hydra/overrides.bak"):
            saved.rename(saved.with_suffix(".yaml"))
    written = sorted(p.name for p in figures.glob("*.png"))
    assert written == ["model_comparison.png", "normalisation.png", "training_speed.png"]
    assert all((figures / name).stat().st_size > 10_000 for name in written)
    errors = [
        o
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
    images = [
        o
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == 3, "each figure is shown in the notebook too"


def test_runs_from_wandb_lines_up_with_local_runs():
    """Runs fetched from W&B (summary + config) give the same columns as metrics.json."""
    fake = SimpleNamespace(
        name="static-wikipedia-seed3",
        group="2025-01-31_12-00-00",
        summary={"test/mrr": 0.5, "val/mrr": 0.25, "_step": 9, "_wandb": {"runtime": 3}},
        config={
            "seed": 3,
            "model": {"_target_": "tempint.models.static.StaticEmbedding", "dim": 32},
            "data": {"name": "wikipedia"},
        },
    )
    other = SimpleNamespace(
        name="recency-wikipedia-seed3",
        group="g",
        summary={"test/mrr": 0.75},
        config={
            "seed": 3,
            "model": {"_target_": "tempint.models.heuristics.Recency"},
            "data": {"name": "wikipedia"},
        },
    )
    runs = results.runs_from_wandb([fake, other])
    assert runs["model"].to_list() == ["StaticEmbedding", "Recency"]
    assert runs["dataset"].to_list() == ["wikipedia", "wikipedia"]
    assert runs["test/mrr"].to_list() == [0.5, 0.75]
    assert runs["val/mrr"].to_list() == [0.25, None]
    assert runs["cfg.model.dim"].to_list() == [32, None]
    assert "_step" not in runs.columns
    assert runs["run"][0] == "wandb:static-wikipedia-seed3"
    assert runs["sweep"][0] == "wandb:2025-01-31_12-00-00"
