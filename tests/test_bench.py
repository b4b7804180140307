"""The benchmark script's parts on tiny data, so `make bench` keeps working (nothing timed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ is a folder of scripts, not part of the package
    sys.path.insert(0, str(ROOT))

from bench import cases, run, table  # noqa: E402

GIB = 2**30


def _case(model, shape="wikipedia", sampler="tbatch", **values):
    base = {
        "model": model,
        "shape": shape,
        "sampler": sampler,
        "status": "ok",
        "seconds_per_epoch": 10.0,
        "train_interactions_per_second": 12_000.0,
        "eval_interactions_per_second": 8_000.0,
        "peak_rss_bytes": 1 * GIB,
        "time_limit": 900.0,
    }
    return {**base, **values}


# ---- planning --------------------------------------------------------------------------
def test_models_are_discovered_from_the_model_configs_in_a_fixed_order():
    models = run.discover_models()
    assert {"limnet", "static", "recency", "popularity"} <= set(models)
    known = [m for m in run.MODEL_ORDER if m in models]
    assert models[: len(known)] == known


def test_model_dim_reads_the_config_or_its_base():
    assert run.model_dim("limnet") == 32
    assert run.model_dim("repeat_aware") == 32
    assert run.model_dim("recency") is None
    assert run.model_dim("no_such_model") is None


def test_cross_rnns_get_every_sampler_and_other_models_their_own():
    plan = run.plan_cases(["limnet", "deepred", "recency"], ["wikipedia", "tiny"])
    assert [(c["model"], c["sampler"]) for c in plan if c["shape"] == "wikipedia"] == [
        ("limnet", "tbatch"),
        ("limnet", "sequence"),
        ("limnet", "chrono"),
        ("deepred", "shuffle"),
        ("recency", "tbatch"),
    ]
    assert [c["shape"] for c in plan] == ["wikipedia"] * 5 + ["tiny"] * 5
    only = run.plan_cases(["jodie", "static"], ["wikipedia"], samplers=["chrono"])
    assert [(c["model"], c["sampler"]) for c in only] == [("jodie", "chrono"), ("static", "tbatch")]


def test_quick_options_are_a_small_subset():
    args = run.parse_args(["--quick"])
    assert args.quick and args.epochs == 1 and args.device == "cpu"
    assert run.QUICK["shapes"] == ("wikipedia",) and run.QUICK["samplers"] == ("tbatch",)
    with pytest.raises(SystemExit):
        run.parse_args(["--epochs", "0"])


# ---- isolation ---------------------------------------------------------------------------
def test_error_line_is_the_last_line_of_the_innermost_cause():
    try:
        try:
            raise ValueError("first line\nthe real reason")
        except ValueError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as err:
        assert run.error_line(err) == "the real reason"


def test_a_case_past_its_time_limit_is_killed_and_reported(tmp_path):
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    result = run.run_isolated(argv, tmp_path / "r.json", time_limit=0.5)
    assert result["status"] == "timeout"
    assert result["wall_seconds"] < 30


def test_a_process_that_dies_without_a_result_reports_its_last_line(tmp_path):
    argv = [
        sys.executable,
        "-c",
        "import sys; print('boom: out of luck', file=sys.stderr); sys.exit(3)",
    ]
    result = run.run_isolated(argv, tmp_path / "r.json", time_limit=60)
    assert result == {**result, "status": "failed", "error": "boom: out of luck"}


def test_a_failing_case_reports_its_error_and_the_run_goes_on(tmp_path):
    spec = {"kind": "train", "model": "limnet", "shape": "no_such_shape", "sampler": "tbatch"}
    result = run.run_case(spec, time_limit=300, workdir=tmp_path)
    assert result["status"] == "failed"
    assert "no_such_shape" in result["error"] and "not known" in result["error"]


# ---- measurements (in process, tiny) -----------------------------------------------------
def test_training_case_measures_an_epoch_and_the_frozen_evaluation():
    out = cases.measure_training("limnet", "tiny", "tbatch")
    assert out["dim"] == 32 and out["learned"] is True
    assert out["train_interactions"] == 320  # 80% of the 400-interaction tiny stream
    assert out["epochs"] == 1
    for key in (
        "seconds_per_epoch",
        "train_interactions_per_second",
        "eval_interactions_per_second",
    ):
        assert out[key] > 0
    assert 0 < out["test_mrr"] <= 1


def test_heuristics_are_measured_as_not_learned():
    out = cases.measure_training("recency", "tiny", "tbatch")
    assert out["learned"] is False and out["dim"] is None
    assert out["eval_interactions_per_second"] > 0


def test_bare_cell_rate_and_peak_memory_are_positive():
    assert cases.bare_cell_rate(8, interactions=512, batch_size=128) > 0
    assert cases.peak_memory_bytes() > 10 * 2**20
    info = cases.machine_info()
    assert info["threads"] >= 1 and info["device"] == "cpu" and info["torch"]


def test_eval_scaling_measures_the_grid():
    out = cases.measure_eval_scaling([200, 400], [5, 10], num_users=10, repeats=1)
    points = out["points"]
    assert [(p["interactions"], p["items"]) for p in points] == [
        (200, 5),
        (200, 10),
        (400, 5),
        (400, 10),
    ]
    assert [p["evaluated"] for p in points] == [40, 40, 80, 80]
    ratios = table.scaling_ratios(points)
    assert [(r["axis"], r["size_ratio"]) for r in ratios] == [
        ("interactions", 2.0),
        ("interactions", 2.0),
        ("items", 2.0),
        ("items", 2.0),
    ]


# ---- the report ----------------------------------------------------------------------------
def test_targets_are_checked_against_the_measured_cases():
    results = [
        _case("jodie", seconds_per_epoch=31.0),
        _case("limnet", seconds_per_epoch=12.0),
        _case("recency", eval_interactions_per_second=4_000.0),
        _case("limnet", shape="lastfm", seconds_per_epoch=250.0, peak_rss_bytes=5 * GIB),
        {
            "model": "jodie",
            "shape": "lastfm",
            "sampler": "tbatch",
            "status": "timeout",
            "time_limit": 900.0,
        },
    ]
    checks = {t["target"]: (t["measured"], t["passed"]) for t in table.check_targets(results)}
    assert checks["JODIE Wikipedia epoch ≤ 30 s"] == ("31.0 s", False)
    assert checks["LiMNet Wikipedia epoch ≤ 20 s"] == ("12.0 s", True)
    assert checks["frozen evaluation ≥ 5,000 interactions/s, every model"] == (
        "min 4,000/s (recency/tbatch/wikipedia)",
        False,
    )
    assert checks["LastFM-shaped epoch ≤ 300 s, JODIE"] == ("> 900 s (timed out)", False)
    assert checks["LastFM-shaped epoch ≤ 300 s, LiMNet"] == ("250.0 s", True)
    # the 5 GiB run is LastFM-shaped: only Wikipedia runs are bound by 4 GiB
    assert checks["peak memory < 4 GiB, every Wikipedia run"] == ("max 1.00 GiB", True)
    assert [table.case_checks(c) for c in results] == [
        "✗ epoch > 30 s",
        "✓",
        "✗ eval < 5k/s",
        "✓",
        "✗ epoch",
    ]


def test_unmeasured_targets_are_neither_passed_nor_failed():
    results = [
        {
            "model": "jodie",
            "shape": "wikipedia",
            "sampler": "tbatch",
            "status": "failed",
            "error": "ImportError: x",
        }
    ]
    checks = {t["target"]: t["passed"] for t in table.check_targets(results)}
    assert set(checks.values()) == {None}


def test_render_writes_every_section(tmp_path):
    results = {
        "created": "2025-01-01T00:00:00+00:00",
        "options": {"epochs": 1, "time_limit": 900.0},
        "machine": {
            "cpu": "X",
            "logical_cores": 2,
            "physical_cores": 2,
            "memory_gib": 8,
            "torch": "2.13",
            "threads": 2,
            "device": "cpu",
            "python": "3.11",
        },
        "reference": {
            "status": "ok",
            "interactions": 126_000,
            "batch_size": 1024,
            "rates": {"32": 100_000.0},
        },
        "cases": [
            _case("limnet", ratio_to_bare=0.12),
            {
                "model": "jodie",
                "shape": "wikipedia",
                "sampler": "tbatch",
                "status": "failed",
                "error": "ImportError: cannot import name 'JODIE'",
            },
        ],
        "scaling": {
            "status": "ok",
            "model": "limnet",
            "num_users": 10,
            "points": [
                {
                    "interactions": 200,
                    "items": 5,
                    "evaluated": 40,
                    "seconds": 1.0,
                    "interactions_per_second": 40.0,
                },
                {
                    "interactions": 400,
                    "items": 5,
                    "evaluated": 80,
                    "seconds": 2.0,
                    "interactions_per_second": 40.0,
                },
            ],
        },
    }
    text = table.render(results)
    assert "| limnet | tbatch | wikipedia | 10.0 | 12,000 | 0.120 | 8,000 | 1.00 | ✓ |" in text
    assert "| jodie | tbatch | wikipedia | failed |" in text
    assert "- jodie/tbatch/wikipedia failed: ImportError: cannot import name 'JODIE'" in text
    assert "d=32: 100,000/s" in text
    assert "- interactions ×2.00 (5 items): time ×2.00" in text
    assert "| LiMNet Wikipedia epoch ≤ 20 s | 10.0 s | ✓ |" in text
    assert "| JODIE Wikipedia epoch ≤ 30 s | failed | – |" in text


@pytest.mark.slow
def test_main_runs_cases_in_fresh_processes_and_writes_the_report(tmp_path):
    argv = [
        "--shapes",
        "tiny",
        "--models",
        "recency",
        "no_such_model",
        "--no-scaling",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert run.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    statuses = {c["model"]: c["status"] for c in results["cases"]}
    assert statuses == {"recency": "ok", "no_such_model": "failed"}
    assert results["machine"]["threads"] == 1
    assert results["reference"]["status"] == "ok"
    assert "| recency | tbatch | tiny |" in (tmp_path / "results.md").read_text()


def test_precision_case_trains_each_model_in_each_precision_in_one_process():
    out = cases.measure_precision(["limnet"], "tiny", "tbatch", ["32", "bf16-mixed"])
    runs = out["rows"][0]["runs"]
    assert set(runs) == {"32", "bf16-mixed"}
    for run_ in runs.values():
        assert run_["seconds_per_epoch"] > 0 and 0 < run_["test_mrr"] <= 1


def test_precision_section_gives_ratios_to_the_first_precision():
    def run_(seconds, rate, mrr):
        return {"seconds_per_epoch": seconds, "eval_interactions_per_second": rate, "test_mrr": mrr}

    precision = {
        "status": "ok",
        "shape": "wikipedia",
        "sampler": "tbatch",
        "precisions": ["32", "bf16-mixed"],
        "rows": [
            {
                "model": "limnet",
                "runs": {"32": run_(10.0, 8000, 0.5), "bf16-mixed": run_(20.0, 4000, 0.49)},
            },
            {
                "model": "jodie",
                "runs": {"32": run_(30.0, 9000, 0.6), "bf16-mixed": {"error": "E: x"}},
            },
        ],
    }
    lines = table.precision_section(precision)
    assert "| limnet | 32 | 10.0 | 1.00 | 8,000 | 1.00 | 0.5000 |" in lines
    assert "| limnet | bf16-mixed | 20.0 | 0.50 | 4,000 | 0.50 | 0.4900 |" in lines
    assert "| jodie | bf16-mixed | E: x |  |  |  |  |" in lines
    assert "not measured (skipped: )" in table.precision_section({"status": "skipped"})[0]
