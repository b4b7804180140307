"""End to end: every model and every experiment config trains and writes its results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from tempint.config import CONF_DIR
from tempint.train import train

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
EXPERIMENTS = sorted(
    str(p.relative_to(CONF_DIR / "experiment").with_suffix(""))
    for p in (CONF_DIR / "experiment").rglob("*.yaml")
)
REQUIRED = (
    "val/mrr",
    "test/mrr",
    "test/recall@1",
    "test/recall@10",
    "test/ndcg@10",
    "train/seconds_per_epoch",
    "eval/interactions_per_second",
    "scorer",
    "ties",
    "split",
    "config",
    "test/recency/mrr",
    "test/popularity/mrr",
    "test/mrr/repeat",
    "test/share/repeat",
)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_and_writes_metrics(make_cfg, model):
    cfg = make_cfg([f"model={model}"])
    metrics, objects = train(cfg)
    written = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    for key in REQUIRED:
        assert key in written, key
    assert 0 < written["test/mrr"] <= 1
    split = written["split"]
    assert split["train_end"] < split["val_end"] < split["num_interactions"]
    assert (Path(cfg.output_dir) / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_config_runs_end_to_end(make_cfg, experiment):
    cfg = make_cfg([f"experiment={experiment}"])
    # experiments name their real dataset; the smoke run swaps in tiny synthetic data
    cfg.data.name = "synthetic"
    cfg.data.path = None
    cfg.data.synthetic = {"shape": "tiny", "seed": 0}
    cfg.trainer.max_epochs = 1
    metrics, _ = train(cfg)
    assert 0 < metrics["test/mrr"] <= 1


def test_auto_state_change_weight_is_the_published_class_weight(make_cfg):
    cfg = make_cfg(
        [
            "model=jodie",
            "model.dim=8",
            "model.state_change_head=true",
            "model.state_change_weight=auto",
        ]
    )
    cfg.data.synthetic = dict(
        num_users=30, num_items=20, num_interactions=600, repeat_prob=0.6, state_label_prob=0.05
    )
    _, objects = train(cfg)
    dm = objects["datamodule"]
    labels = dm.stream.state_label[: dm.split.train_end]
    assert int(labels.sum()) > 0
    expected = len(labels) / (1.0 + float(labels.sum()))
    assert float(objects["model"].state_class_weight[1]) == pytest.approx(expected)


def test_online_evaluation_resumes_the_checkpoints_optimiser(make_cfg):
    metrics, objects = train(make_cfg(["model=jodie", "model.dim=8", "eval.mode=online"]))
    assert metrics["mode"] == "online"
    assert metrics["online_optimizer"] == "checkpoint"
    assert 0 < metrics["test/mrr"] <= 1


def test_another_protocol_reports_the_models_metrics_per_tag_without_baselines(make_cfg):
    cfg = make_cfg(["model=static", "eval.also=[{mode:frozen,ties:optimistic,scorer:auto}]"])
    metrics, _ = train(cfg)
    other = "protocol/frozen_optimistic/test"
    assert metrics[f"{other}/mrr"] >= metrics["test/mrr"]  # optimistic ties rank no lower
    assert f"{other}/mrr/repeat" in metrics and f"{other}/share/new" in metrics
    assert not any(k.startswith((f"{other}/recency", f"{other}/popularity")) for k in metrics)


def test_heuristic_trains_for_one_epoch_whatever_the_trainer_says(make_cfg):
    cfg = make_cfg(["model=popularity", "trainer.max_epochs=3"])
    metrics, _ = train(cfg)
    assert metrics["train/epochs"] == 1


def test_model_beside_baselines_equals_the_baseline_when_it_is_one(make_cfg):
    metrics, _ = train(make_cfg(["model=recency"]))
    assert metrics["test/mrr"] == pytest.approx(metrics["test/recency/mrr"])
    assert metrics["val/mrr"] == pytest.approx(metrics["val/recency/mrr"])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["recency", "popularity", "recent_popularity"])
def test_heuristics_on_real_wikipedia(make_cfg, model):
    cfg = make_cfg([f"model={model}", "data=wikipedia"], fast=False)
    metrics, _ = train(cfg)
    assert metrics["num_users"] == 8227 and metrics["num_items"] == 1000
    if model == "recency":
        assert metrics["test/mrr"] > 0.8


def test_a_movielens_style_csv_trains_through_the_custom_csv_config(make_cfg, tmp_path):
    """Many items, no repeats: recency has nothing to recall; the run still completes and
    reports the model beside popularity, every test interaction tagged `new`."""
    from tempint.data.synthetic import generate_ratings

    path = tmp_path / "ratings.csv"
    generate_ratings(num_users=60, num_items=300, per_user=15, seed=0).write_csv(path)
    cfg = make_cfg(
        [
            "model=repeat_aware",
            "data=custom_csv",
            f"data.path={path}",
            "data.columns.user_id=userId",
            "data.columns.item_id=movieId",
        ],
        fast=False,
    )
    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
        cfg.trainer.enable_progress_bar = False
    metrics, _ = train(cfg)
    assert metrics["test/share/new"] == 1.0 and metrics["test/share/repeat"] == 0.0
    assert 0.0 < metrics["test/mrr"] <= 1.0
    assert "test/popularity/mrr" in metrics
