"""Block ranking: t-batch replay of a block, candidates as of each interaction's position."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

import tempint.eval.blocks as blocks
import tempint.models.deepred as deepred
from tempint.data.samplers import TBatchSampler, block_plans, user_step_plans
from tempint.eval.blocks import ItemVersions
from tempint.eval.protocol import StreamEvaluator, can_rank_blocks, run_stream
from tempint.models.base import Mode
from tempint.models.deepred import DeePRed
from tempint.models.heuristics import Recency
from tempint.models.imn import IterativeMemoryNetwork
from tempint.models.jodie import JODIE
from tempint.models.limnet import LiMNet
from tempint.models.tlstm import TimeAwareLSTM
from tests.test_protocol import datamodule_for


def repeating_stream(num_users=7, num_items=11, n=400, seed=3) -> pl.DataFrame:
    """Users often repeat their last item, so blocks hold long per-node chains."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, num_users, n)
    items = rng.integers(0, num_items, n)
    repeat = rng.random(n) < 0.5
    last: dict[int, int] = {}
    for k, u in enumerate(users.tolist()):
        if repeat[k] and u in last:
            items[k] = last[u]
        last[u] = int(items[k])
    users[:num_users], items[:num_items] = np.arange(num_users), np.arange(num_items)
    return pl.DataFrame(
        {
            "user_id": users,
            "item_id": items,
            "timestamp": np.cumsum(rng.exponential(60.0, n)),
            "state_label": np.zeros(n, dtype=np.int8),
        }
    )


def test_block_plans_cover_every_row_once_and_keep_each_nodes_order():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 5, 300), rng.integers(0, 4, 300)
    plans = block_plans(users, items, 20, 300, size=37)
    seen = np.concatenate([np.concatenate(p.steps) for p in plans])
    assert sorted(seen.tolist()) == list(range(20, 300))
    for plan in plans:
        assert plan.block
        rows = np.concatenate(plan.steps)
        assert rows.max() - rows.min() + 1 == len(rows) <= 37  # one contiguous block
        for step in plan.steps:
            assert len(set(users[step])) == len(step) and len(set(items[step])) == len(step)
        for nodes in (users, items):
            step_of = {int(r): s for s, step in enumerate(plan.steps) for r in step}
            for node in np.unique(nodes[rows]):
                mine = sorted(int(r) for r in rows if nodes[r] == node)
                assert [step_of[r] for r in mine] == sorted(step_of[r] for r in mine)
                assert len({step_of[r] for r in mine}) == len(mine)


def test_rows_at_reads_the_latest_version_strictly_before_a_position():
    table = torch.arange(9.0).view(3, 3)
    item = torch.tensor([1, 2, 1])
    position = torch.tensor([12, 11, 10])  # rows given out of time order, as t-batches do
    written = torch.tensor([[20.0] * 3, [30.0] * 3, [10.0] * 3])
    versions = ItemVersions(table, item, position, written)
    got = versions.rows_at(torch.tensor([1, 1, 1, 2, 2, 0]), torch.tensor([10, 11, 13, 11, 12, 13]))
    expected = torch.stack(
        [table[1], written[2], written[0], table[2], written[1], table[0]]
    )  # item 1 at its own write (10) still reads the block start
    assert torch.equal(got, expected)


def _replay_train(model, dm):
    model.reset_state()
    with torch.no_grad():
        for chunk in dm.chunks(dm.exact_plans("train")):
            for step in chunk.steps:
                model(step, Mode.SCORE)


MODELS = {
    "jodie": lambda u, i: JODIE(u, i, dim=8),
    "jodie_no_static": lambda u, i: JODIE(u, i, dim=8, static_embeddings=False),
    "jodie_no_prediction": lambda u, i: JODIE(
        u, i, dim=8, static_embeddings=False, prediction_layer=False
    ),
    "limnet": lambda u, i: LiMNet(u, i, dim=6),
    "limnet_lstm_2_layers": lambda u, i: LiMNet(u, i, dim=6, cell="lstm", layers=2),
    "deepred": lambda u, i: DeePRed(u, i, dim=6, history_k=4, dropout=0.0),
    "deepred_history_query": lambda u, i: DeePRed(
        u, i, dim=6, history_k=4, dropout=0.0, query="history"
    ),
}


@pytest.mark.parametrize("patch_above", [0.0, float("inf")])  # patched table, overwrites
@pytest.mark.parametrize("name", sorted(MODELS))
def test_block_ranking_equals_a_one_interaction_at_a_time_replay(name, patch_above, monkeypatch):
    monkeypatch.setattr(blocks, "SUB_BLOCK", 5)  # several sub-blocks per block
    monkeypatch.setattr(blocks, "PATCH_ABOVE", patch_above)
    monkeypatch.setattr(deepred, "_ENCODE_ROWS", 3)  # a block encoded in several parts
    torch.manual_seed(0)
    dm = datamodule_for(repeating_stream(), TBatchSampler(4), eval_max_batch_size=1, history_k=4)
    model = MODELS[name](dm.num_users, dm.num_items)
    scorers = list(model.capabilities.scorers)
    assert can_rank_blocks(model, "auto", "frozen")
    _replay_train(model, dm)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    results = {}
    for kind in ("blocks", "one_at_a_time"):
        model.load_state_dict(state)
        model.detach_state()
        if kind == "blocks":
            plans = block_plans(dm._users, dm._items, dm.split.train_end, dm.split.val_end, 16)
        else:
            plans = dm.exact_plans("val")  # eval_max_batch_size=1: one interaction a step
        evaluator = StreamEvaluator(scorers, ties="average")
        results[kind] = run_stream(model, dm.chunks(plans), evaluator)
        if kind == "blocks":  # the table carried from block to block is the model's
            assert torch.equal(evaluator.block_table.table, model.candidate_table().detach())
        memory = getattr(model, "memory", None)
        results[kind + "_memory"] = (
            memory.item if memory is not None else model.candidate_table()
        ).clone()
    block, ref = results["blocks"], results["one_at_a_time"]
    assert block.count == ref.count == dm.split.val_end - dm.split.train_end
    for scorer in scorers:
        for key, value in ref.metrics[scorer].items():
            assert block.metrics[scorer][key] == pytest.approx(value, abs=1e-9, nan_ok=True), (
                scorer,
                key,
            )
    # the replay leaves the same memory as one interaction at a time
    assert torch.allclose(results["blocks_memory"], results["one_at_a_time_memory"], atol=1e-6)


def test_models_without_block_support_and_online_replays_use_steps():
    """Online replays never rank blocks; a model without block replay handed block
    chunks is replayed one interaction at a time, with the same metrics."""
    dm = datamodule_for(repeating_stream(), TBatchSampler(4), eval_max_batch_size=1)
    jodie = JODIE(dm.num_users, dm.num_items, dim=4)
    assert not can_rank_blocks(jodie, "auto", "online")
    assert not can_rank_blocks(Recency(dm.num_users, dm.num_items), "auto", "frozen")
    plans = block_plans(dm._users, dm._items, dm.split.train_end, dm.split.val_end, 16)
    results = [
        run_stream(Recency(dm.num_users, dm.num_items), dm.chunks(p), StreamEvaluator(["native"]))
        for p in (plans, dm.exact_plans("val"))
    ]
    assert results[0].count == results[1].count == dm.split.val_end - dm.split.train_end
    assert results[0].metrics["native"]["mrr"] == results[1].metrics["native"]["mrr"]


def test_user_step_plans_hold_each_user_once_and_keep_their_order():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 4, 200)
    plans = user_step_plans(users, 10, 200, size=50, max_step=3)
    seen = np.concatenate([np.concatenate(p.steps) for p in plans])
    assert sorted(seen.tolist()) == list(range(10, 200))
    for plan in plans:
        order = {int(r): s for s, step in enumerate(plan.steps) for r in step}
        for step in plan.steps:
            assert len(set(users[step])) == len(step) <= 3
        rows = sorted(order)
        for user in set(users[rows]):
            mine = [r for r in rows if users[r] == user]
            assert [order[r] for r in mine] == sorted(order[r] for r in mine)
            assert len({order[r] for r in mine}) == len(mine)


PER_USER = {
    "imn": lambda u, i: IterativeMemoryNetwork(u, i, dim=8, length=5, attention_hidden=8),
    "tlstm": lambda u, i: TimeAwareLSTM(u, i, dim=8, attention_size=3),
}


@pytest.mark.parametrize("name", sorted(PER_USER))
def test_per_user_state_models_score_user_steps_as_one_at_a_time(name):
    torch.manual_seed(0)
    dm = datamodule_for(repeating_stream(), TBatchSampler(4), eval_max_batch_size=1)
    model = PER_USER[name](dm.num_users, dm.num_items)
    assert model.capabilities.per_user_state
    _replay_train(model, dm)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results = {}
    for kind in ("users", "one_at_a_time"):
        model.load_state_dict(state)
        if kind == "users":
            plans = user_step_plans(dm._users, dm.split.train_end, dm.split.val_end, 40, 512)
        else:
            plans = dm.exact_plans("val")
        results[kind] = run_stream(model, dm.chunks(plans), StreamEvaluator(["native"]))
    users, ref = results["users"].metrics["native"], results["one_at_a_time"].metrics["native"]
    assert results["users"].count == results["one_at_a_time"].count
    for key, value in ref.items():
        assert users[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


BOUNDED = {
    "jodie": (lambda u, i: JODIE(u, i, dim=8), "blocks"),
    "limnet": (lambda u, i: LiMNet(u, i, dim=6), "blocks"),
    "deepred": (lambda u, i: DeePRed(u, i, dim=6, history_k=4, dropout=0.0), "blocks"),
    "tlstm": (lambda u, i: TimeAwareLSTM(u, i, dim=8, attention_size=3), "users"),
    "recency": (lambda u, i: Recency(u, i), "exact"),
    "recency_runs": (lambda u, i: Recency(u, i), "runs"),
}


@pytest.mark.parametrize("name", sorted(BOUNDED))
def test_a_tiny_score_bound_cuts_steps_and_blocks_and_keeps_every_rank(name):
    """`eval.max_scores_per_block` bounds rows × items of every step and block; ranks
    are the same as with the default bound."""
    make, kind = BOUNDED[name]
    torch.manual_seed(0)
    dm = datamodule_for(repeating_stream(), TBatchSampler(4), history_k=4)
    model = make(dm.num_users, dm.num_items)
    _replay_train(model, dm)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bound = 3 * dm.num_items  # three interactions' scores
    results = {}
    for max_scores in (None, bound):
        if max_scores is not None:
            dm.bound_scores(max_scores)
        chunks = list(dm.eval_chunks("val", kind))
        rows = [len(step) for chunk in chunks for step in chunk.steps]
        if kind in ("blocks", "runs"):  # ranked a chunk at once
            rows = [sum(len(step) for step in chunk.steps) for chunk in chunks]
        if max_scores is not None:
            assert max(rows) * dm.num_items <= bound
        else:
            assert max(rows) > 3  # the default bound allows larger steps here
        model.load_state_dict(state)
        model.detach_state()
        evaluator = StreamEvaluator(list(model.capabilities.scorers), ties="average")
        results[max_scores] = run_stream(model, chunks, evaluator)
    bounded, free = results[bound], results[None]
    assert bounded.count == free.count == dm.split.val_end - dm.split.train_end
    for scorer, metrics in free.metrics.items():
        for key, value in metrics.items():
            assert bounded.metrics[scorer][key] == pytest.approx(value, abs=1e-12, nan_ok=True)


def test_a_tiny_score_bound_cuts_evaluation_windows_and_keeps_every_rank():
    """Windowed evaluation (sequence sampler) ranks one row per window at each step: the
    bound caps the windows of a chunk, and cold windows do not depend on their chunk."""
    from tempint.data.samplers import SequenceSampler

    torch.manual_seed(0)
    dm = datamodule_for(repeating_stream(), SequenceSampler(length=6, batch_size=8))
    model = LiMNet(dm.num_users, dm.num_items, dim=6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results = {}
    for max_scores in (None, 2 * dm.num_items):
        if max_scores is not None:
            dm.bound_scores(max_scores)
        chunks = list(dm.eval_chunks("val"))
        windows = max(chunk.num_windows for chunk in chunks)
        assert windows <= 2 if max_scores else windows > 2
        model.load_state_dict(state)
        model.reset_state()
        evaluator = StreamEvaluator(list(model.capabilities.scorers), ties="average")
        results[max_scores] = run_stream(model, chunks, evaluator)
    bounded, free = results[2 * dm.num_items], results[None]
    assert bounded.count == free.count == dm.split.val_end - dm.split.train_end
    for scorer, metrics in free.metrics.items():
        for key, value in metrics.items():
            assert bounded.metrics[scorer][key] == pytest.approx(value, abs=1e-9, nan_ok=True)
