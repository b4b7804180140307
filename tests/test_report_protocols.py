"""Reports never pool numbers measured on different data, under different protocols or
configurations: only seeds are averaged."""

from __future__ import annotations

import json

import matplotlib
import pytest

from tempint.report import leaderboard, load_runs, main, protocols_table, summary_table
from tempint.results import model_comparison, protocol_of, runs_table, spread

matplotlib.use("Agg")


def _run(dataset, model, mrr, seed, mode="frozen", ties="average", protocol=None, lr=0.001):
    metrics = {
        "model": model,
        "dataset": dataset,
        "mode": mode,
        "ties": ties,
        "test/mrr": mrr,
        "test/recall@10": mrr + 0.1,
        "test/recency/mrr": 0.5 if dataset == "wikipedia" else 0.2,
        "baselines": ["recency"],
        "split": {"mode": "position"},
        "config": {"seed": seed, "optimizer": {"lr": lr}, "output_dir": f"/x/{seed}"},
        "choices": {"model": model.lower()},
    }
    if protocol:
        metrics["protocol"] = protocol
        metrics["split"] = {"mode": "time_quantile"}
        metrics["test/hits@10"] = mrr + 0.2
        metrics["baselines"] = ["recency", "edgebank_tw"]
        metrics["test/edgebank_tw/mrr"] = 0.571
        metrics["test/edgebank_tw/hits@10"] = 0.7
    return metrics


TGB = {"name": "tgb", "batch_size": 200, "negatives": "all", "exclude_same_time": True}


@pytest.fixture
def runs_dir(tmp_path):
    runs = [
        _run("wikipedia", "JODIE", 0.20, 1),
        _run("wikipedia", "JODIE", 0.22, 2),
        _run("wikipedia", "JODIE", 0.30, 1, mode="online", ties="optimistic"),
        _run("lastfm", "JODIE", 0.05, 1),
        _run("wikipedia", "JODIE", 0.60, 1, protocol=TGB),
        _run("wikipedia", "JODIE", 0.40, 1, lr=0.01),  # another configuration
    ]
    for i, m in enumerate(runs):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "metrics.json").write_text(json.dumps(m))
    return tmp_path


def test_protocol_key_names_split_mode_ties_negatives_and_batch():
    key = protocol_of(_run("wikipedia", "JODIE", 0.6, 1, protocol=TGB))
    assert key == (
        "tgb: time_quantile split, frozen, average ties, all items less same-time, batch 200"
    )
    assert protocol_of({"mode": "online", "ties": "optimistic"}).startswith("streaming: position")


def test_only_seeds_are_averaged(runs_dir):
    df = runs_table(runs_dir)
    stats = spread(df, ["dataset", "protocol", "config_id"])
    # frozen wikipedia lr 0.001 (two seeds), online, lastfm, tgb, lr 0.01: five groups
    assert stats.height == 5
    pooled = stats.filter(stats["runs"] == 2)
    assert pooled["mean"].to_list() == [pytest.approx(0.21)]
    fig = model_comparison(df)
    # one row of panels per dataset and protocol: four
    assert len(fig.axes) == 4
    titles = sorted(ax.get_title() for ax in fig.axes)
    assert any(t.startswith("lastfm") for t in titles)


def test_leaderboard_has_a_section_per_dataset_and_protocol(runs_dir):
    table = leaderboard(load_runs(runs_dir))
    assert table.count("### ") == 4
    assert "0.2100 ± 0.0141 (2 seeds)" in table  # the two seeds of one configuration
    assert "0.4000 ± 0.0000 (1 seeds)" in table  # lr 0.01 kept apart


def test_protocols_table_sets_published_figures_beside(runs_dir, capsys):
    table = protocols_table(load_runs(runs_dir))
    rows = table.splitlines()
    online = next(r for r in rows if "online" in r and "JODIE" in r and "published" not in r)
    assert "0.746 / 0.822" in online and "Kumar" in online
    edgebank = next(r for r in rows if "| edgebank_tw |" in r)
    assert "0.5710" in edgebank and "0.571" in edgebank and "tgbl-wiki-v2" in edgebank
    assert any("TPNet (published)" in r and "0.827" in r for r in rows)
    assert not any("EdgeBank(tw) (published)" in r for r in rows)  # measured row has it
    main([str(runs_dir), "--protocols"])
    assert "TPNet" in capsys.readouterr().out


def test_summary_names_the_strongest_heuristic_and_the_gap():
    metrics = _run("wikipedia", "JODIE", 0.6, 1, protocol=TGB)
    metrics.update(
        {"test/strongest_heuristic": "edgebank_tw", "test/strongest_heuristic/mrr": 0.571}
    )
    metrics["test/gap_to_strongest_heuristic"] = 0.6 - 0.571
    text = summary_table(metrics)
    assert "strongest heuristic on test: edgebank_tw (MRR 0.5710)" in text
    assert "+0.0290" in text and "tgb: time_quantile" in text


def test_a_checkpoint_under_another_protocol_gets_its_own_row():
    run = _run("wikipedia", "JODIE", 0.6, 1, protocol=TGB)
    other = dict(TGB, batch_size=1)
    run.update(
        {
            "protocol/frozen_average_batch1/test/mrr": 0.7,
            "protocol/frozen_average_batch1/protocol": other,
            "protocol/frozen_average_batch1/mode": "frozen",
            "protocol/frozen_average_batch1/ties": "average",
        }
    )
    rows = protocols_table([run]).splitlines()
    assert any("batch 1 | JODIE | 1 | 0.7000" in r for r in rows)
    assert any("batch 200 | JODIE | 1 | 0.6000" in r for r in rows)


def test_older_runs_name_their_other_protocol_in_the_key():
    run = _run("wikipedia", "JODIE", 0.78, 1, mode="online", ties="optimistic")
    run["protocol/frozen_average/test/mrr"] = 0.69
    rows = protocols_table([run]).splitlines()
    frozen = next(r for r in rows if "0.6900" in r)
    assert "frozen, average ties" in frozen and "published" not in frozen.split("|")[3]
    online = next(r for r in rows if "0.7800" in r)
    assert "0.746 / 0.822" in online


def test_dyglib_rows_show_ap_and_auroc():
    run = _run("wikipedia", "LiMNet", 0.5, 1, protocol=dict(TGB, name="dyglib"))
    run.update({"test/ap/random": 0.92, "test/auroc/random": 0.9})
    row = next(r for r in protocols_table([run]).splitlines() if "| LiMNet |" in r)
    assert row.endswith("| 0.9200 / 0.9000 |")
