"""The tutorial model (examples/gru4rec.py) runs end to end through the common protocol."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from examples.gru4rec import GRU4Rec
from tempint.models.base import Mode
from tempint.train import train
from tests.streams import assert_reset_replays_the_same, hand_made


def _stream():
    # user 0: items 1, 2, 1; user 1: items 2, 3 (prev_item as the data layer computes it)
    return hand_made(
        user=[0, 1, 0, 1, 0],
        item=[1, 2, 2, 3, 1],
        t=[0.0, 1.0, 2.0, 3.0, 4.0],
        prev_item=torch.tensor([-1, -1, 1, 2, 2]),
    )


def test_a_user_with_no_past_item_gets_the_zero_query_and_the_next_one_folds_it_in():
    model = GRU4Rec(num_users=2, num_items=4, dim=8).eval()
    stream = _stream()
    with torch.no_grad():
        first = model(stream.select(torch.tensor([0, 1])), Mode.SCORE)
        assert torch.equal(first.scores, torch.zeros(2, 4))
        second = model(stream.select(torch.tensor([2])), Mode.SCORE)
        expected = model.cell(model.item(torch.tensor([1])), torch.zeros(1, 8))
        assert torch.allclose(second.scores, expected @ model.item.weight.T)


def test_scores_do_not_depend_on_how_users_are_grouped_into_steps():
    """per_user_state: a step may hold many users; ranks equal a one-at-a-time replay."""
    model = GRU4Rec(num_users=2, num_items=4, dim=8).eval()
    stream = _stream()
    with torch.no_grad():
        one = torch.cat(
            [model(stream.select(torch.tensor([i])), Mode.SCORE).scores for i in range(5)]
        )
        model.reset_state()
        steps = ([0, 1], [2, 3], [4])
        grouped = [model(stream.select(torch.tensor(s)), Mode.SCORE).scores for s in steps]
    assert torch.allclose(one, torch.cat(grouped))
    model.reset_state()
    assert_reset_replays_the_same(model, stream, size=2)


def test_training_moves_the_gru_and_the_item_embeddings():
    torch.manual_seed(0)
    model = GRU4Rec(num_users=2, num_items=4, dim=8, negatives=4).train()
    loss = model(_stream(), Mode.TRAIN).loss
    loss.backward()
    assert model.cell.weight_ih.grad.abs().sum() > 0
    assert model.item.weight.grad.abs().sum() > 0


def test_the_example_trains_and_is_evaluated_beside_the_heuristics(make_cfg):
    cfg = make_cfg(["model=gru4rec", "trainer.max_epochs=2"])
    metrics, _ = train(cfg)
    written = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    assert written["model"] == "GRU4Rec"
    assert written["scorer"] == "native"
    for key in ("test/mrr", "test/recency/mrr", "test/popularity/mrr", "test/mrr/new"):
        assert 0 <= written[key] <= 1, key
    assert written["train/epochs"] == 2


def test_a_model_module_that_cannot_be_found_is_one_config_error(make_cfg):
    import pytest
    from omegaconf import open_dict

    from tempint.errors import ConfigError

    cfg = make_cfg(["model=gru4rec"])
    with open_dict(cfg):
        cfg.model._target_ = "my_project.models.Missing"
    with pytest.raises(ConfigError, match="my_project.models.*not found"):
        train(cfg)
