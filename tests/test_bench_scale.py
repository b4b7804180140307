"""The scale benchmark's plan, parsing and table, on hand-made results and one tiny case."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.scale.case import PHASE_MARK, RESULT_MARK
from bench.scale.plan import GIB, case_argv, check_targets, discover_models, plan_cases
from bench.scale.run import run_watched
from bench.scale.table import error_line, parse_epoch, parse_output, render
from tempint.config import CONF_DIR


def test_plan_covers_every_model_on_movielens_with_references_first():
    cases = plan_cases(["movielens"], "/data/ml", Path(CONF_DIR))
    models = [c["model"] for c in cases]
    assert models[:2] == ["popularity", "recency"]
    assert sorted(models) == sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))
    deepred = next(c for c in cases if c["model"] == "deepred")
    assert "sampler=shuffle" in deepred["overrides"]
    assert all("data.root=/data/ml" in c["overrides"] for c in cases)


def test_plan_scale_groups_and_targets():
    cases = plan_cases(["ml20m_quarter", "amazon"], None, Path(CONF_DIR), models=["limnet"])
    assert [c["group"] for c in cases] == ["amazon", "ml20m_quarter"]
    quarter = cases[1]
    assert "sampler=chrono" in quarter["overrides"]
    assert "data.synthetic.scale=0.25" in quarter["overrides"]
    assert case_argv(quarter)[:4] == ["python", "bench/scale/case.py", "--kind", "train"]
    fast = {"peak_rss_bytes": 7 * GIB, "train_interactions_per_second": 25_000.0}
    slow = {"peak_rss_bytes": 9 * GIB, "train_interactions_per_second": 19_999.0}
    assert check_targets(quarter, fast) == []
    assert check_targets(quarter, slow) == ["peak RSS > 8 GiB", "train < 20,000 ev/s"]


def test_discover_models_puts_references_first(tmp_path):
    (tmp_path / "model").mkdir()
    for name in ("zeta", "recency", "alpha", "popularity"):
        (tmp_path / "model" / f"{name}.yaml").write_text("")
    assert discover_models(tmp_path) == ["popularity", "recency", "alpha", "zeta"]


def test_parse_output_takes_the_last_result_line():
    text = f'noise\n{RESULT_MARK}{{"test_mrr": 0.1}}\nmore\n{RESULT_MARK}{{"test_mrr": 0.25}}\n'
    assert parse_output(text) == {"test_mrr": 0.25}
    assert parse_output("Traceback\nValueError: bad\n") is None
    assert error_line("Traceback\nValueError: bad\n  done\n") == "ValueError: bad"


def test_parse_epoch_reads_the_numbers_printed_before_evaluation():
    text = f'x\n{PHASE_MARK}{{"train_interactions_per_second": 21000.0}}\nKilled\n'
    assert parse_epoch(text) == {"train_interactions_per_second": 21000.0}
    assert parse_epoch("no epoch\n") is None
    case = plan_cases(["ml20m_quarter"], None, Path(CONF_DIR), models=["limnet"])[0]
    entry = {
        "case": case,
        "argv": case_argv(case),
        "status": "stopped",
        "note": "stopped after 300 s at 2.0 GiB RSS, in the evaluation after its epoch",
        "result": parse_epoch(text),
        "max_rss_seen_bytes": 2 * GIB,
    }
    assert "in the evaluation after its epoch; training ✓" in render([entry], {})


def test_render_shows_numbers_commands_and_unfinished_cases():
    root = "/data/ml lens"
    case = plan_cases(["movielens"], root, Path(CONF_DIR), models=["popularity"])[0]
    stopped = plan_cases(["ml20m_full"], None, Path(CONF_DIR))[0]
    entries = [
        {
            "case": case,
            "argv": case_argv(case),
            "status": "ok",
            "code": "abc1234",
            "elapsed_seconds": 12.0,
            "result": {
                "num_interactions": 100_000,
                "test_mrr": 0.02121,
                "seconds_per_epoch": 5.75,
                "train_interactions_per_second": 13_912.0,
                "eval_seconds": 2.08,
                "eval_interactions_per_second": 9_605.3,
                "peak_rss_bytes": GIB // 2,
            },
        },
        {
            "case": stopped,
            "argv": case_argv(stopped),
            "status": "stopped",
            "note": "stopped after 901 s at 3.0 GiB RSS",
            "elapsed_seconds": 901.0,
            "max_rss_seen_bytes": 3 * GIB,
        },
    ]
    text = render(entries, {"movielens_root": root})
    assert (
        "| popularity | tbatch | 100,000 | 0.0212 | – | 5.8 | 13,912 | 2.1 | 9,605 | 12 | 0.50 "
        "| abc1234 | – |" in text
    )
    assert "not finished (stopped): stopped after 901 s" in text
    assert "| 3.00 |" in text
    assert 'data.root="$MOVIELENS_ROOT"' in text and root not in text
    assert "python bench/scale/case.py --kind fit model=limnet sampler=chrono data=ml20m" in text
    assert "upper bounds" in text


def test_one_tiny_case_end_to_end():
    """The real case script on a tiny generated stream, watched as the runner watches."""
    argv = [
        sys.executable,
        "bench/scale/case.py",
        "model=popularity",
        "data=synthetic",
        "data.synthetic.shape=tiny",
    ]
    entry = run_watched(argv, time_limit=300, rss_limit=6 * GIB)
    assert entry["status"] == "ok", entry.get("note")
    result = entry["result"]
    assert result["num_interactions"] > 0
    assert 0.0 < result["test_mrr"] <= 1.0
    assert result["peak_rss_bytes"] > 0
