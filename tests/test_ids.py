"""Any ids: renumbered 0..n-1 per side, originals kept; the same metrics whatever the labels."""

from __future__ import annotations

import polars as pl
import pytest
from omegaconf import open_dict

from tempint.data.datamodule import InteractionDataModule
from tempint.data.events import UnsortedInputWarning, load_events
from tempint.data.synthetic import generate_ratings, generate_shape
from tempint.train import train

SHIFT = 10**12


def shifted(frame: pl.DataFrame, offset: int) -> pl.DataFrame:
    return frame.with_columns(pl.col("user_id") + offset, pl.col("item_id") + 7 * offset)


def run(make_cfg, path, model: str, name: str) -> dict:
    cfg = make_cfg(
        [f"model={model}", "data=custom_csv", f"data.path={path}"],
        fast=False,
        output_dir=path.parent / name,
    )
    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
        cfg.logger = None
    metrics, objects = train(cfg)
    return metrics, objects["datamodule"]


@pytest.mark.parametrize("model", ["recency", "static"])
def test_ids_shifted_by_10_to_the_12_give_the_same_metrics(make_cfg, tmp_path, model):
    frame = generate_shape("tiny", seed=1)
    plain, far = tmp_path / "plain.csv", tmp_path / "far.csv"
    frame.write_csv(plain)
    shifted(frame, SHIFT).write_csv(far)
    base, dm_base = run(make_cfg, plain, model, "a")
    moved, dm_moved = run(make_cfg, far, model, "b")
    assert (dm_moved.num_users, dm_moved.num_items) == (20, 10)
    for key in ("val/mrr", "test/mrr", "test/recall@10", "test/popularity/mrr"):
        assert moved[key] == base[key], key
    assert dm_moved.user_ids.to_list() == [u + SHIFT for u in dm_base.user_ids.to_list()]


def test_the_renumbered_log_is_the_same_under_any_relabelling(tmp_path):
    frame = generate_shape("tiny", seed=2)
    relabel = frame.with_columns((pl.col("user_id") * 1_000_003 + 5).cast(pl.String) + "-u")
    frame.write_parquet(tmp_path / "a.parquet")
    relabel.write_parquet(tmp_path / "b.parquet")
    a = load_events(tmp_path / "a.parquet")
    b = load_events(tmp_path / "b.parquet")
    assert a.frame.equals(b.frame)
    assert b.user_ids.to_list() == [f"{u * 1_000_003 + 5}-u" for u in a.user_ids.to_list()]


def test_movielens_ids_from_1_make_no_phantom_user_or_item(tmp_path):
    ratings = generate_ratings(num_users=40, num_items=90, per_user=5, seed=3)
    assert ratings["userId"].min() == 1
    path = tmp_path / "u.data"
    ratings.sample(fraction=1.0, shuffle=True, seed=0).write_csv(
        path, separator="\t", include_header=False
    )
    dm = InteractionDataModule(
        path=str(path),
        separator="\t",
        header=False,
        names=["user_id", "item_id", "rating", "timestamp"],
    )
    with pytest.warns(UnsortedInputWarning):
        dm.setup()
    users, items = ratings["userId"].n_unique(), ratings["movieId"].n_unique()
    assert (dm.num_users, dm.num_items) == (users, items)
    assert int(dm.stream.user.max()) == users - 1 and int(dm.stream.item.max()) == items - 1
    assert sorted(dm.user_ids.to_list()) == sorted(ratings["userId"].unique().to_list())


def test_string_ids_keep_their_text(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("who,what,when\nzoe,b-1,5\nann,a-9,6\nzoe,a-9,7\n")
    log = load_events(path, columns={"user_id": "who", "item_id": "what", "timestamp": "when"})
    assert log.frame["user_id"].to_list() == [0, 1, 0]
    assert log.original_ids("user", [1, 0]) == ["ann", "zoe"]
    assert log.original_ids("item", log.frame["item_id"]) == ["b-1", "a-9", "a-9"]


def test_declared_ranges_keep_ids_on_that_side_only(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("u,i,t\n7,300,1\n2,100,2\n")
    cols = {"user_id": "u", "item_id": "i", "timestamp": "t"}
    log = load_events(path, columns=cols, num_users=10, cache=False)
    assert log.frame["user_id"].to_list() == [7, 2] and log.user_ids is None
    assert log.frame["item_id"].to_list() == [0, 1] and log.item_ids.to_list() == [300, 100]
    assert (log.num_users, log.num_items) == (10, 2)


def test_the_jodie_configs_keep_their_ids_and_wikipedia_its_numbers():
    dm = InteractionDataModule(name="wikipedia", ids="keep")
    dm.setup()
    assert (dm.num_users, dm.num_items) == (8_227, 1_000)
    assert dm.user_ids is None and dm.item_ids is None
    raw = pl.read_parquet(dm.source)
    assert dm.stream.user.tolist() == raw["user_id"].to_list()
