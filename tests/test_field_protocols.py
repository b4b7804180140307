"""The field's protocols: TGB's split, exclusions, ranks and batches; TGB-Seq's negatives;
AP and AUROC. Every expected value is worked out by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tempint.data.batch import Chunk, TimeBatch
from tempint.data.splits import make_split, time_quantile_split
from tempint.errors import ConfigError, DataError
from tempint.eval.negatives import (
    PositionPairs,
    draw_tgb_seq,
    same_time_exclusions,
    sampled_negatives,
)
from tempint.eval.protocol import Protocol, StreamEvaluator, run_stream
from tempint.eval.ranking import (
    auroc,
    average_precision,
    candidate_bounds,
    exclude_pairs,
    interaction_metrics,
    rank_bounds,
    score_candidates,
    score_output,
)
from tempint.models.base import Mode, Output
from tempint.models.field_heuristics import EdgeBank
from tempint.models.heuristics import Recency
from tests.streams import hand_made

# ---- splits ----------------------------------------------------------------------------


def test_time_quantile_split_uses_tgb_thresholds():
    # numpy's linear quantiles of 0..9: q70 = 6.3, q85 = 7.65
    split = time_quantile_split(np.arange(10.0), 0.15, 0.15)
    assert (split.train_end, split.val_end, split.num_interactions) == (7, 8, 10)
    assert split.train_end_time == pytest.approx(6.3)
    assert split.val_end_time == pytest.approx(7.65)
    assert split.mode == "time_quantile"


def test_time_quantile_split_never_cuts_a_timestamp():
    # times 0,0,1,1,...,6,6 (14 rows): q70 = 4.55 -> train t <= 4.55 is rows 0..9 (t <= 4),
    # q85 = 5.05 -> validation t = 5 (rows 10, 11), test t = 6 (rows 12, 13)
    t = np.repeat(np.arange(7.0), 2)
    split = time_quantile_split(t, 0.15, 0.15)
    assert (split.train_end, split.val_end) == (10, 12)
    assert t[split.train_end - 1] < t[split.train_end]
    assert t[split.val_end - 1] < t[split.val_end]


def test_time_quantile_split_reports_an_empty_split():
    # 0,0,1,1,2,2,3,3,4,4: q70 = 3, q85 = 3.65 -> nothing with 3 < t <= 3.65
    with pytest.raises(DataError, match="validation split would be empty"):
        time_quantile_split(np.repeat(np.arange(5.0), 2), 0.15, 0.15)


def test_make_split_names_an_unknown_mode():
    with pytest.raises(ConfigError, match="data.split='random'"):
        make_split("random", 10, 0.1, 0.1, np.arange(10.0))
    assert make_split("position", 10, 0.1, 0.1, np.arange(10.0)).train_end == 8


# ---- TGB's negatives and ranks -------------------------------------------------------------


def test_same_time_exclusions_are_the_users_other_items_at_that_time():
    users = np.array([0, 0, 0, 1, 0])
    items = np.array([1, 2, 1, 2, 3])
    t = np.array([5.0, 5.0, 5.0, 5.0, 6.0])
    pairs = same_time_exclusions(users, items, t, [range(0, 5)])
    rows, excluded = pairs.lookup(torch.arange(5))
    got = sorted(zip(rows.tolist(), excluded.tolist(), strict=True))
    # position 0 (item 1): item 2 of position 1; position 1 (item 2): item 1 twice;
    # position 2 (item 1): item 2; user 1 and the later event have none
    assert got == [(0, 2), (1, 1), (1, 1), (2, 2)]


def test_same_time_exclusions_stay_inside_a_split():
    users, items, t = np.array([0, 0]), np.array([1, 2]), np.array([5.0, 5.0])
    assert len(same_time_exclusions(users, items, t, [range(0, 1), range(1, 2)])) == 0


def test_position_pairs_lookup_follows_the_query_order():
    pairs = PositionPairs(torch.tensor([7, 3, 7]), torch.tensor([1, 2, 4]))
    rows, items = pairs.lookup(torch.tensor([7, 5, 3]))
    assert sorted(zip(rows.tolist(), items.tolist(), strict=True)) == [(0, 1), (0, 4), (2, 2)]


def test_tgb_rank_leaves_out_excluded_items():
    scores = torch.tensor([[3.0, 2.0, 3.0, 1.0]])
    # item 2 ties the true item 0: rank 0.5 * (0 + 1) + 1 = 1.5
    best, worst = rank_bounds(scores, torch.tensor([0]))
    assert (best.item() + worst.item()) / 2 == 1.5
    # excluded (the user's other item at that timestamp): rank 1
    best, worst = rank_bounds(
        exclude_pairs(scores, torch.tensor([0]), torch.tensor([2])), torch.tensor([0])
    )
    assert (best.item(), worst.item()) == (1, 1)


def test_candidate_rank_is_tgbs_half_optimistic_half_pessimistic():
    # negatives 0.9 > 0.5, two ties 0.5, 0.1 below: optimistic 1, pessimistic 3 -> rank 3
    best, worst = candidate_bounds(torch.tensor([0.5]), torch.tensor([[0.9, 0.5, 0.5, 0.1]]))
    assert (best.item(), worst.item()) == (2, 4)
    terms = interaction_metrics(best, worst, "average", ks=(10,), hits_ks=(1, 3, 10))
    assert terms["mrr"].item() == pytest.approx(1 / 3)
    # TGB's hits@k reads the averaged rank 3: no hit at 1, a hit at 3 and 10
    assert [terms[f"hits@{k}"].item() for k in (1, 3, 10)] == [0.0, 1.0, 1.0]


def test_hits_at_k_differs_from_expected_recall_on_ties():
    # best 1, worst 4 (three ties): averaged rank 2.5 -> hits@2 = 0; recall@2 = 2/4
    terms = interaction_metrics(
        torch.tensor([1]), torch.tensor([4]), "average", ks=(2,), ndcg_ks=(), hits_ks=(2,)
    )
    assert terms["hits@2"].item() == 0.0
    assert terms["recall@2"].item() == 0.5


def test_score_candidates_gathers_the_full_ranking_scores():
    torch.manual_seed(0)
    out = Output(query=torch.randn(3, 4), candidates=torch.randn(6, 4))
    items = torch.tensor([[0, 5], [2, 2], [4, 1]])
    for scorer in ("dot", "l2"):
        full = score_output(out, scorer).gather(1, items)
        torch.testing.assert_close(score_candidates(out, scorer, items), full)
    native = Output(scores=torch.arange(18.0).reshape(3, 6))
    assert score_candidates(native, "native", items).tolist() == [[0, 5], [8, 8], [16, 13]]


# ---- TGB-Seq's negatives ---------------------------------------------------------------------


def test_tgb_seq_negatives_repeat_with_the_seed_and_avoid_the_positive():
    positives = np.array([0, 1, 2, 1, 0])
    first = draw_tgb_seq(positives, num_items=4, k=100, seed=0)
    assert first.shape == (5, 100)
    assert np.array_equal(first, draw_tgb_seq(positives, num_items=4, k=100, seed=0))
    assert not np.array_equal(first, draw_tgb_seq(positives, num_items=4, k=100, seed=1))
    assert not (first == positives[:, None]).any()
    # with two items, the only negative of item 0 is item 1 and vice versa
    assert (draw_tgb_seq(np.array([0, 1]), 2, k=3) == np.array([[1], [0]])).all()


def test_sampled_negatives_are_stored_and_read_back(tmp_path):
    path = tmp_path / "toy_test_ns.npy"
    positives = np.array([3, 1, 4])
    drawn = sampled_negatives(path, positives, num_items=10, k=5)
    assert path.exists() and not path.with_name(path.name + ".part").exists()
    again = sampled_negatives(path, positives, num_items=10, k=5)  # read, not drawn
    assert np.array_equal(drawn, again)
    np.save(path, np.zeros((3, 5), dtype=np.int64))  # a shipped file wins over the rule
    assert (sampled_negatives(path, positives, num_items=10, k=5) == 0).all()
    with pytest.raises(DataError, match="shape"):
        sampled_negatives(path, positives, num_items=10, k=7)


def test_evaluator_ranks_among_fixed_negatives():
    # item scores 0.4, 0.3, 0.2, 0.1 for every query; positives items 1 and 3
    stream = hand_made([0, 1], [1, 3], [0.0, 1.0])
    out = Output(scores=torch.tensor([[0.4, 0.3, 0.2, 0.1]] * 2))
    negatives = torch.tensor([[0, 2], [2, 3]])  # position 0: 0.4 above, 0.2 below -> rank 2
    protocol = Protocol(negatives=negatives, negatives_start=0)  # position 1: 0.2 above, tie
    ev = StreamEvaluator(["native"], tags=(), protocol=protocol)  # -> rank 0.5(1 + 2) + 1
    ev.update(out, stream)
    assert ev.compute()["native"]["mrr"] == pytest.approx((1 / 2 + 1 / 2.5) / 2)


def test_keep_drops_events_from_the_metrics_only():
    stream = hand_made([0, 1], [0, 3], [0.0, 1.0])
    out = Output(scores=torch.tensor([[0.4, 0.3, 0.2, 0.1]] * 2))
    protocol = Protocol(keep=torch.tensor([True, False]))
    ev = StreamEvaluator(["native"], tags=(), protocol=protocol)
    ev.update(out, stream)
    result = ev.compute()["native"]
    assert (result["count"], result["mrr"]) == (1.0, 1.0)


# ---- batches scored from the state before them -------------------------------------------


def _batch(stream, replay_steps):
    scored = Chunk(steps=[stream])
    replay = None if replay_steps is None else [Chunk(steps=[s]) for s in replay_steps]
    return TimeBatch(scored, replay)


@pytest.mark.parametrize("model_cls", [EdgeBank, Recency])
def test_a_batch_is_scored_from_the_state_before_it(model_cls):
    """3 items; training (0, 0); then (0, 1) twice. Event by event the second (0, 1) is
    a known pair; in one batch of 2 neither is. EdgeBank's step updates commute (one
    forward); Recency's state is put back and replayed."""
    model = model_cls(1, 3)
    with torch.no_grad():
        model(hand_made([0], [0], [0.0]), Mode.TRAIN)
    evals = hand_made([0, 0], [1, 1], [1.0, 2.0], index=torch.tensor([1, 2]))
    one = evals.select(torch.tensor([0]))
    two = evals.select(torch.tensor([1]))
    commute = model.capabilities.step_updates_commute
    batch = _batch(evals, None if commute else [one, two])
    ev = StreamEvaluator(["native"], tags=())
    run_stream(model, [batch], ev)
    # both from the state before: item 0 above, item 2 tied -> rank 2.5 (event by event
    # the second would be a known pair at rank 1, MRR (0.4 + 1) / 2)
    assert ev.compute()["native"]["mrr"] == pytest.approx(0.4)
    # the state afterwards is the event-by-event state: the pair (0, 1) is known
    model.eval()
    with torch.no_grad():
        scores = model(hand_made([0], [2], [3.0]), Mode.SCORE).scores[0]
    assert scores[1] > scores[2]


# ---- AP and AUROC ----------------------------------------------------------------------------


def test_ap_and_auroc_by_hand_with_ties():
    scores = torch.tensor([0.9, 0.8, 0.8, 0.1])
    labels = torch.tensor([1, 0, 1, 0])
    # pairs (pos, neg): 0.9>0.8, 0.9>0.1, 0.8=0.8 (half), 0.8>0.1 -> 3.5 / 4
    assert auroc(scores, labels).item() == pytest.approx(0.875)
    # thresholds 0.9 (P 1, R 1/2) then 0.8 (P 2/3, R 1): 1/2 + 1/2 * 2/3
    assert average_precision(scores, labels).item() == pytest.approx(5 / 6)
    # tied rows count together whatever their order
    flipped = torch.tensor([0.9, 0.8, 0.8, 0.1]), torch.tensor([1, 1, 0, 0])
    assert average_precision(*flipped).item() == pytest.approx(5 / 6)


def test_ap_and_auroc_match_their_definitions_on_many_ties():
    gen = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 5, (200,), generator=gen).double()
    labels = torch.randint(0, 2, (200,), generator=gen)
    pos, neg = scores[labels == 1], scores[labels == 0]
    # AUROC: P(pos > neg) + 1/2 P(pos == neg) over all pairs
    pairs = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    assert auroc(scores, labels).item() == pytest.approx(pairs.mean().item())
    # AP: mean over positives of the precision at their score (ties counted together)
    at_least = scores[None, :] >= pos[:, None]
    precision = (at_least & (labels[None, :] == 1)).sum(1) / at_least.sum(1)
    assert average_precision(scores, labels).item() == pytest.approx(precision.mean().item())


def test_ap_needs_both_classes():
    with pytest.raises(ValueError, match="one positive and one negative"):
        auroc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"batch_size": 0}, "eval.batch_size=0"),
        ({"batch_size": 200, "mode": "online"}, "set eval.mode=frozen"),
        ({"pair_negatives": ["hist"]}, "eval.pair_negatives"),
        ({"pair_negatives": ["random"], "batch_size": 1}, "eval.batch_size > 1"),
        ({"num_negatives": -3}, "eval.num_negatives=-3"),
        ({"split": {"split": "shuffled"}}, "eval.split.split='shuffled'"),
    ],
)
def test_protocol_mistakes_are_named_before_training(overrides, message):
    from omegaconf import OmegaConf

    from tempint.config import validate_config

    cfg = OmegaConf.create({"eval": {"mode": "frozen", **overrides}})
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_pair_negatives_with_a_training_event_filter_is_refused_before_training(make_cfg):
    from tempint.config import validate_config
    from tempint.errors import ConfigError

    cfg = make_cfg(["eval=dyglib", "eval.min_train_events=3"])
    with pytest.raises(ConfigError, match="min_train_events"):
        validate_config(cfg)
