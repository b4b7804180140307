"""The tutorial model (examples/gru4rec.py) runs end to end through the common protocol."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from examples.gru4rec import GRU4Rec
from tempint.data.batch import Interactions
from tempint.models.base import Capabilities, InteractionModel, Mode, Output
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


class TwoMethods(InteractionModel):
    """The least a model writes: `score` and `observe`. Global state (item counts) on
    purpose, so that scoring a block's t-batches in their own order would give other
    ranks than the stream order; a learned item bias, trained by the default loss."""

    capabilities = Capabilities(scorers=("native",))

    def __init__(self, num_users: int, num_items: int):
        super().__init__(num_users, num_items)
        self.bias = torch.nn.Parameter(torch.zeros(num_items))
        self.register_buffer("counts", torch.zeros(num_items))
        self.register_buffer("last", torch.full((num_users,), -1, dtype=torch.long))

    def reset_state(self) -> None:
        self.counts.zero_()
        self.last.fill_(-1)

    def score(self, batch: Interactions) -> Output:
        scores = self.bias + self.counts.expand(len(batch), -1)
        mine = self.last[batch.user]
        seen = (mine >= 0).nonzero().squeeze(1)
        return Output(scores=scores.index_put((seen, mine[seen]), torch.tensor(100.0)))

    def observe(self, batch: Interactions) -> None:
        self.counts.index_add_(0, batch.item, torch.ones_like(batch.item, dtype=torch.float))
        self.last[batch.user] = batch.item


def test_a_two_method_model_trains_by_default_and_gets_exact_ranks_from_block_chunks():
    """No block replay, no fused forward: the default `forward` trains it (cross-entropy
    over its scores) and the protocol, handed block chunks, replays them one interaction
    at a time; the ranks equal a one-interaction-at-a-time replay of the stream, and
    differ from scoring the block's t-batches in their own order."""
    from tempint.data.batch import Chunk
    from tempint.data.samplers import TBatchSampler, block_plans
    from tempint.eval.protocol import StreamEvaluator, run_stream
    from tests.test_blocks import repeating_stream
    from tests.test_protocol import datamodule_for

    torch.manual_seed(0)
    dm = datamodule_for(repeating_stream(), TBatchSampler(4), eval_max_batch_size=1)
    model = TwoMethods(dm.num_users, dm.num_items)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for chunk in dm.chunks(dm.train_plans()):
        loss = model.train_chunk(chunk)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert model.bias.abs().sum() > 0  # the default loss reached the parameter
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def replay(chunks):
        model.load_state_dict(state)
        return run_stream(model, chunks, StreamEvaluator(["native"], ties="average"))

    blocks = block_plans(dm._users, dm._items, dm.split.train_end, dm.split.val_end, 16)
    block_chunks = list(dm.chunks(blocks))
    assert all(c.block for c in block_chunks) and max(len(c.steps) for c in block_chunks) > 1
    by_blocks = replay(block_chunks)
    one_at_a_time = replay(dm.chunks(dm.exact_plans("val")))
    assert by_blocks.count == one_at_a_time.count == dm.split.val_end - dm.split.train_end
    reference = one_at_a_time.metrics["native"]
    for name, value in by_blocks.metrics["native"].items():  # tags with no rows are NaN
        assert value == reference[name] or (math.isnan(value) and math.isnan(reference[name]))
    as_tbatches = replay(Chunk(steps=c.steps) for c in block_chunks)  # what a fallback avoids
    assert as_tbatches.metrics["native"]["mrr"] != reference["mrr"]


def test_the_readme_model_trains_and_scores_from_the_state_before_each_step():
    """The smallest model of the README's "Add your own model", run as printed there."""
    import re

    from tempint.data.batch import Chunk

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.search(r"```python\n(class LastItemFirst.*?)```", readme, re.S).group(1)
    namespace = {"torch": torch, "InteractionModel": InteractionModel}
    namespace.update(Capabilities=Capabilities, Output=Output)
    exec(code, namespace)
    model = namespace["LastItemFirst"](3, 5)
    stream = hand_made([0, 1, 0], [1, 2, 3], [0.0, 1.0, 2.0])
    steps = [stream.select(torch.tensor([0, 1])), stream.select(torch.tensor([2]))]
    model.train_chunk(Chunk(steps=steps)).backward()
    assert model.bias.grad.abs().sum() > 0
    model.reset_state()
    with torch.no_grad():
        first, second = (model(step, Mode.SCORE).scores for step in steps)
    assert not first.any()  # nothing seen before the first step
    assert second[0].argmax() == 1  # user 0's item of the step before
