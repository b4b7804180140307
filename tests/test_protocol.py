"""The streaming protocol: scores come before updates, nothing from the future is visible."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from tempint.data.datamodule import InteractionDataModule
from tempint.data.samplers import ChronoSampler, SequenceSampler, TBatchSampler
from tempint.eval.protocol import StreamEvaluator, evaluate, run_stream
from tempint.models.base import Capabilities, InteractionModel, Mode, Output
from tempint.models.heuristics import Popularity, Recency


class LastItemOracle(InteractionModel):
    """Puts the user's most recently observed item first: a perfect cheat if it saw the target.

    Window-aware like any window model: under the sequence sampler its memory is local.
    """

    capabilities = Capabilities(scorers=("native",), learned=False)

    def __init__(self, num_users, num_items):
        super().__init__(num_users, num_items)
        self.register_buffer("last", torch.full((num_users,), -1, dtype=torch.long))
        self._active = self.last

    def reset_state(self):
        self.last.fill_(-1)

    def begin_chunk(self, chunk, mode):
        if chunk.local_users is not None:
            self._active = torch.full((len(chunk.local_users),), -1, dtype=torch.long)

    def end_chunk(self, chunk, mode):
        self._active = self.last

    def score(self, batch):
        rows = batch.user_rows
        scores = torch.zeros(len(batch), self.num_items)
        has = self._active[rows] >= 0
        scores[has, self._active[rows][has]] = 1.0
        return Output(scores=scores)

    def observe(self, batch):
        self._active[batch.user_rows] = batch.item


class FutureOracle(InteractionModel):
    """Puts first the last item observed *anywhere*: profits only if later events leak in."""

    capabilities = Capabilities(scorers=("native",), learned=False)

    def __init__(self, num_users, num_items):
        super().__init__(num_users, num_items)
        self.register_buffer("latest", torch.full((), -1, dtype=torch.long))
        self.register_buffer("latest_index", torch.full((), -1, dtype=torch.long))

    def score(self, batch):
        scores = torch.zeros(len(batch), self.num_items)
        if self.latest >= 0:
            scores[:, self.latest] = 1.0
        return Output(scores=scores)

    def observe(self, batch):
        pos = int(batch.index.argmax())
        if batch.index[pos] > self.latest_index:
            self.latest.fill_(int(batch.item[pos]))
            self.latest_index.fill_(int(batch.index[pos]))


def no_repeat_stream(num_users=6, num_items=9, n=300, seed=0) -> pl.DataFrame:
    """Users never repeat their previous item, so the oracle's first guess is always wrong."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, num_users, n)
    users[:num_users] = np.arange(num_users)
    items = np.empty(n, dtype=np.int64)
    last = {}
    for k, u in enumerate(users):
        choices = [i for i in range(num_items) if i != last.get(u)]
        items[k] = rng.choice(choices)
        last[u] = items[k]
    items[:num_items] = np.arange(num_items)
    return pl.DataFrame(
        {
            "user_id": users,
            "item_id": items,
            "timestamp": np.arange(n, dtype=np.float64) * 60.0,
            "state_label": np.zeros(n, dtype=np.int8),
        }
    )


def datamodule_for(frame: pl.DataFrame, sampler, **kwargs) -> InteractionDataModule:
    dm = InteractionDataModule(sampler=sampler, **kwargs)
    dm._load_frame = lambda: (
        frame,
        None,
        int(frame["user_id"].max()) + 1,
        int(frame["item_id"].max()) + 1,
    )
    dm.setup()
    return dm


def replay(model, dm, stage: str, windowed: bool = False, ties: str = "average"):
    model.reset_state()
    with torch.no_grad():
        for chunk in dm.chunks(dm.warmup_plans()):
            for step in chunk.steps:
                model(step, Mode.SCORE)
        if stage == "test":
            for chunk in dm.chunks(dm.exact_plans("val")):
                for step in chunk.steps:
                    model(step, Mode.SCORE)
    plans = dm.eval_plans(stage) if windowed else dm.exact_plans(stage)
    return run_stream(model, dm.chunks(plans), StreamEvaluator(["native"], ties=ties))


@pytest.mark.parametrize("max_batch", [1, 7, 512])
def test_oracle_that_would_see_the_target_scores_exactly_its_no_leak_value(max_batch):
    num_items = 9
    dm = datamodule_for(
        no_repeat_stream(num_items=num_items), TBatchSampler(5), eval_max_batch_size=max_batch
    )
    result = replay(LastItemOracle(dm.num_users, dm.num_items), dm, "test")
    # every test user has a previous item, which is never the target: one item above the
    # target and the other I-2 tied with it -> rank 2 + (I - 2)/2 under average ties.
    expected_rank = 2 + (num_items - 2) / 2
    assert result.metrics["native"]["mrr"] == pytest.approx(1 / expected_rank)
    assert result.metrics["native"]["recall@1"] == 0.0


def test_sliding_windows_do_not_leak_the_target_either():
    num_items = 9
    dm = datamodule_for(
        no_repeat_stream(num_items=num_items), SequenceSampler(length=8, batch_size=4)
    )
    model = LastItemOracle(dm.num_users, dm.num_items)
    result = replay(model, dm, "test", windowed=True, ties="pessimistic")
    assert result.count == len(dm.split.test)
    # the oracle's guess is never the target, and a tie never counts as a hit here
    assert result.metrics["native"]["recall@1"] == 0.0


def test_no_interaction_from_the_future_reaches_an_earlier_score():
    # each item is the target of the *next* interaction: a model that saw the next event
    # before scoring would rank every target first
    n = 200
    items = np.arange(n) % 13
    frame = pl.DataFrame(
        {
            "user_id": np.arange(n) % 17,
            "item_id": items,
            "timestamp": np.arange(n, dtype=np.float64),
            "state_label": np.zeros(n, dtype=np.int8),
        }
    )
    # steps of at most 10 rows: a stale guess could only hit 13 rows later
    dm = datamodule_for(frame, ChronoSampler(10), eval_max_batch_size=10)
    model = FutureOracle(dm.num_users, dm.num_items)
    result = replay(model, dm, "test", ties="pessimistic")
    assert result.metrics["native"]["recall@1"] == 0.0


def test_every_split_interaction_is_scored_exactly_once():
    dm = datamodule_for(no_repeat_stream(), TBatchSampler(5))
    model = Popularity(dm.num_users, dm.num_items)
    assert replay(model, dm, "val").count == len(dm.split.val)
    assert replay(model, dm, "test").count == len(dm.split.test)


def test_recency_exact_values_on_a_hand_made_stream():
    # user 0: items 1, 2, 1 then asks again; user 1: item 3
    frame = pl.DataFrame(
        {
            "user_id": [0, 0, 0, 1, 1, 0, 0, 1, 0, 1],
            "item_id": [1, 2, 1, 3, 3, 2, 1, 0, 1, 3],
            "timestamp": [0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            "state_label": [0] * 10,
        }
    )
    dm = datamodule_for(frame, ChronoSampler(4), val=0.1, test=0.1)
    model = Recency(dm.num_users, dm.num_items)
    # test = last row: user 1 -> item 3; user 1 has seen 3 (t=4) and 0 (t=7): 0 is more
    # recent, so item 3 ranks 2nd
    result = replay(model, dm, "test")
    assert result.metrics["native"]["mrr"] == pytest.approx(0.5)
    # val = row 8: user 0 -> item 1, last seen at t=6 (most recent): rank 1
    assert replay(model, dm, "val").metrics["native"]["mrr"] == pytest.approx(1.0)


def test_scorer_is_chosen_on_validation_and_reported():
    dm = datamodule_for(no_repeat_stream(), TBatchSampler(5))
    model = Recency(dm.num_users, dm.num_items)
    model.reset_state()
    with torch.no_grad():
        for chunk in dm.chunks(dm.warmup_plans()):
            for step in chunk.steps:
                model(step, Mode.SCORE)
    out = evaluate(
        model,
        lambda: dm.chunks(dm.exact_plans("val")),
        lambda: dm.chunks(dm.exact_plans("test")),
    )
    assert out["scorer"] == "native"
    for key in (
        "val/mrr",
        "test/mrr",
        "test/recall@1",
        "test/recall@10",
        "test/ndcg@10",
        "test/mrr/repeat",
        "test/share/new",
        "eval/interactions_per_second",
    ):
        assert key in out
    shares = out["test/share/repeat"] + out["test/share/new"]
    assert shares == pytest.approx(1.0)
    combined = sum(
        out[f"test/share/{tag}"] * out[f"test/mrr/{tag}"]
        for tag in ("repeat", "new")
        if out[f"test/share/{tag}"] > 0
    )
    assert combined == pytest.approx(out["test/mrr"])


def _every_model_config():
    from tempint.config import CONF_DIR

    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


@pytest.mark.parametrize("name", _every_model_config())
def test_no_model_scores_a_batch_with_knowledge_of_its_targets(name):
    """Scores of a batch are identical whatever its target items are."""
    import copy

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tempint.config import CONF_DIR
    from tempint.eval.ranking import score_output

    torch.manual_seed(0)
    frame = no_repeat_stream(num_users=8, num_items=12, n=240)
    dm = datamodule_for(frame, ChronoSampler(16), history_k=5)
    cfg = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
    model = instantiate(cfg, num_users=dm.num_users, num_items=dm.num_items)
    model.eval()
    with torch.no_grad():
        for chunk in dm.chunks(dm.exact_plans("train")):
            for step in chunk.steps:
                model(step, Mode.SCORE)
        plans = dm.exact_plans("val")
        step = next(s for p in plans for s in dm.chunks([p]).__next__().steps if len(s) >= 2)
        twin = copy.deepcopy(model)
        altered = step.select(torch.arange(len(step)))
        altered.item = (altered.item + 5) % dm.num_items
        first = model(step, Mode.SCORE)
        second = twin(altered, Mode.SCORE)
        for scorer in model.capabilities.scorers:
            a = score_output(first, scorer)
            b = score_output(second, scorer)
            assert torch.equal(a, b), f"{name}/{scorer} scores depend on the targets"


@pytest.mark.parametrize("name", _every_model_config())
def test_online_evaluation_takes_gradient_steps_for_every_learned_model(name):
    """Test-then-train asks each step for its prediction and its losses (`Mode.ONLINE`):
    every learned model hands the online optimiser a loss with a gradient, and its
    weights move; a heuristic hands none."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tempint.config import CONF_DIR

    torch.manual_seed(0)
    frame = no_repeat_stream(num_users=8, num_items=12, n=240)
    dm = datamodule_for(frame, ChronoSampler(16), history_k=5)
    cfg = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
    model = instantiate(cfg, num_users=dm.num_users, num_items=dm.num_items)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1) if before else None
    losses = []

    def online_step(loss):
        losses.append(float(loss.detach()))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    evaluator = StreamEvaluator(list(model.capabilities.scorers)[:1])
    result = run_stream(model, dm.chunks(dm.exact_plans("val")), evaluator, online_step=online_step)
    assert result.count == dm.split.val_end - dm.split.train_end
    if not model.capabilities.learned:
        assert losses == []
        return
    assert losses and all(math.isfinite(v) for v in losses)
    moved = [k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k])]
    assert moved, f"{name}: online evaluation left every weight where it was"
