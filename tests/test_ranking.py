"""Scorers, tie-aware ranks and streaming ranking metrics on tiny hand-made inputs."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tempint.errors import ConfigError
from tempint.eval.ranking import (
    TIES,
    RankingMetrics,
    as_floats,
    ndcg_at_k,
    rank_bounds,
    ranks,
    recall_at_k,
    reciprocal_rank,
    score_output,
)
from tempint.models.base import Output

G = 1 / math.log2(3)  # NDCG discount at rank 2
NAN = float("nan")
INF = float("inf")


def close(actual, expected):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        rtol=1e-12,
        atol=1e-15,
    )


# --- ranks -------------------------------------------------------------------------


def test_tie_policies_on_the_style_example():
    scores, target = torch.tensor([[2.0, 1.0, 1.0, 0.0]]), torch.tensor([1])
    assert ranks(scores, target, "average").tolist() == [2.5]
    assert ranks(scores, target, "optimistic").tolist() == [2.0]
    assert ranks(scores, target, "pessimistic").tolist() == [3.0]
    best, worst = rank_bounds(scores, target)
    assert best.tolist() == [2] and worst.tolist() == [3]
    assert reciprocal_rank(ranks(scores, target)).tolist() == [0.4]


def test_ranks_use_all_items_and_no_masking():
    scores = torch.tensor([[0.0, 5.0, 4.0, 3.0, 1.0], [9.0, 8.0, 7.0, 6.0, 5.0]])
    assert ranks(scores, torch.tensor([0, 4])).tolist() == [5.0, 5.0]
    assert ranks(scores, torch.tensor([1, 0])).tolist() == [1.0, 1.0]


def test_nan_scores_never_win():
    # A NaN candidate does not beat the true item.
    assert ranks(torch.tensor([[NAN, 1.0, 0.0]]), torch.tensor([1])).tolist() == [1.0]
    # A NaN true score counts as -inf: behind every finite score, tied with other NaNs.
    assert ranks(torch.tensor([[NAN, 1.0, 0.0]]), torch.tensor([0])).tolist() == [3.0]
    best, worst = rank_bounds(torch.tensor([[NAN, NAN, 1.0]]), torch.tensor([0]))
    assert (best.tolist(), worst.tolist()) == ([2], [3])
    # NaN ties with a genuine -inf; +inf is an ordinary (winning) score.
    assert ranks(torch.tensor([[-INF, NAN, 0.0]]), torch.tensor([0])).tolist() == [2.5]
    assert ranks(torch.tensor([[INF, 1.0]]), torch.tensor([1])).tolist() == [2.0]


def test_integer_scores_are_ranked_without_conversion():
    scores = torch.tensor([[3, 1, 3, 0]])
    assert ranks(scores, torch.tensor([0])).tolist() == [1.5]


def test_bad_inputs():
    with pytest.raises(ConfigError, match="tie policy 'random'"):
        ranks(torch.zeros(1, 3), torch.tensor([0]), "random")
    with pytest.raises(ValueError, match="expected scores"):
        ranks(torch.zeros(3), torch.tensor([0]))
    with pytest.raises(ValueError, match="expected scores"):
        ranks(torch.zeros(2, 3), torch.tensor([0]))
    with pytest.raises(ConfigError, match="positive integers"):
        recall_at_k(torch.tensor([1]), 0)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_ranks_invariant_to_increasing_transforms_and_item_permutation(data):
    num_rows = data.draw(st.integers(1, 4))
    num_items = data.draw(st.integers(1, 8))
    values = data.draw(
        st.lists(
            st.lists(st.integers(-6, 6), min_size=num_items, max_size=num_items),
            min_size=num_rows,
            max_size=num_rows,
        )
    )
    scores = torch.tensor(values, dtype=torch.float64)
    target = torch.tensor(
        data.draw(st.lists(st.integers(0, num_items - 1), min_size=num_rows, max_size=num_rows))
    )
    slope = data.draw(st.integers(1, 5))
    offset = data.draw(st.integers(-10, 10))
    # Exact on small integers, so no transform can create or break a tie.
    transforms = [lambda s: slope * s + offset, lambda s: s**3, torch.exp]
    perm = torch.tensor(data.draw(st.permutations(range(num_items))))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(num_items)
    for ties in TIES:
        expected = ranks(scores, target, ties)
        for transform in transforms:
            assert torch.equal(ranks(transform(scores), target, ties), expected)
        assert torch.equal(ranks(scores[:, perm], inverse[target], ties), expected)


# --- per-interaction metrics -----------------------------------------------------------


def test_single_rank_metrics():
    rank = torch.tensor([1.0, 3.0, 11.0, 2.5])
    assert recall_at_k(rank, 10).tolist() == [1.0, 1.0, 0.0, 1.0]
    close(ndcg_at_k(rank, 10), [1.0, 0.5, 0.0, 1 / math.log2(3.5)])


def test_tied_metrics_average_over_tied_positions():
    best, worst = torch.tensor([1, 2, 3, 5]), torch.tensor([4, 3, 3, 7])
    close(recall_at_k(best, 2, worst), [0.5, 0.5, 0.0, 0.0])
    close(recall_at_k(best, 10, worst), [1.0, 1.0, 1.0, 1.0])
    close(ndcg_at_k(best, 2, worst), [(1 + G) / 4, G / 2, 0.0, 0.0])
    close(ndcg_at_k(best, 3, worst), [(1 + G + 0.5) / 4, (G + 0.5) / 2, 0.5, 0.0])


# --- RankingMetrics ---------------------------------------------------------------------

# Row ranks: A best=worst=2; B best 1, worst 3 (two others tied); C best 2, worst 3.
MATRIX = torch.tensor([[3.0, 1.0, 2.0, 0.0], [1.0, 1.0, 0.0, 1.0], [5.0, 2.0, 2.0, 0.0]])
MATRIX_TARGET = torch.tensor([2, 1, 2])
EXPECTED = {
    "optimistic": {
        "mrr": (1 / 2 + 1 + 1 / 2) / 3,
        "recall@1": 1 / 3,
        "recall@2": 1.0,
        "ndcg@2": (G + 1 + G) / 3,
    },
    "pessimistic": {
        "mrr": (1 / 2 + 1 / 3 + 1 / 3) / 3,
        "recall@1": 0.0,
        "recall@2": 1 / 3,
        "ndcg@2": G / 3,
    },
    "average": {  # ranks 2, 2, 2.5 for MRR; expectations over tied positions otherwise
        "mrr": (1 / 2 + 1 / 2 + 1 / 2.5) / 3,
        "recall@1": (0 + 1 / 3 + 0) / 3,
        "recall@2": (1 + 2 / 3 + 1 / 2) / 3,
        "ndcg@2": (G + (1 + G) / 3 + G / 2) / 3,
    },
}


@pytest.mark.parametrize("ties", TIES)
def test_hand_computed_matrix(ties):
    metric = RankingMetrics(ks=(1, 2), ties=ties)
    metric.update(MATRIX, MATRIX_TARGET)
    result = as_floats(metric.compute())
    assert set(result) == {"mrr", "recall@1", "recall@2", "ndcg@2", "count"}
    assert result["count"] == 3.0
    for name, value in EXPECTED[ties].items():
        close(result[name], value)


@pytest.mark.parametrize("num_items", [1, 4, 7, 100])
def test_constant_scorer_is_a_random_ranking(num_items):
    metric = RankingMetrics(ks=(1, 10))
    metric.update(torch.zeros(5, num_items), torch.arange(5) % num_items)
    result = metric.compute()
    close(result["mrr"], 2 / (num_items + 1))
    close(result["recall@1"], 1 / num_items)
    close(result["recall@10"], min(10, num_items) / num_items)
    discounts = [1 / math.log2(1 + p) for p in range(1, min(10, num_items) + 1)]
    close(result["ndcg@10"], sum(discounts) / num_items)


def test_perfect_scorer():
    metric = RankingMetrics()
    target = torch.tensor([3, 0, 2])
    metric.update(torch.nn.functional.one_hot(target, 5).float(), target)
    assert as_floats(metric.compute()) == {
        "mrr": 1.0,
        "recall@1": 1.0,
        "recall@10": 1.0,
        "ndcg@10": 1.0,
        "count": 3.0,
    }


def test_accumulation_over_batches_equals_one_batch():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (11, 6), generator=generator).float()
    target = torch.randint(0, 6, (11,), generator=generator)
    whole = RankingMetrics(ks=(1, 3))
    whole.update(scores, target)
    parts = RankingMetrics(ks=(1, 3))
    for rows in torch.arange(11).split([2, 5, 4]):
        parts.update(scores[rows], target[rows])
    expected, result = whole.compute(), parts.compute()
    assert result.keys() == expected.keys() and result["count"] == 11
    for name in expected:
        close(result[name], expected[name])
    # A mean of batch means would differ: the test can tell the two apart.
    batch_means = [1 / ranks(scores[r], target[r]) for r in torch.arange(11).split([2, 5, 4])]
    assert abs(sum(m.mean() for m in batch_means) / 3 - expected["mrr"]) > 1e-3


def test_update_ranks_matches_update_from_scores():
    from_scores = RankingMetrics(ks=(1, 2), tags=("odd",))
    from_ranks = RankingMetrics(ks=(1, 2), tags=("odd",))
    tags = {"odd": torch.tensor([False, True, False])}
    from_scores.update(MATRIX, MATRIX_TARGET, tags)
    from_ranks.update_ranks(*rank_bounds(MATRIX, MATRIX_TARGET), tags=tags)
    assert as_floats(from_ranks.compute()) == as_floats(from_scores.compute())
    untied = RankingMetrics(ks=(1, 2))
    untied.update_ranks(torch.tensor([1, 2, 4]))
    close(untied.compute()["mrr"], (1 + 1 / 2 + 1 / 4) / 3)


def test_per_tag_metrics_recombine_to_the_overall():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 3, (9, 5), generator=generator).float()
    target = torch.randint(0, 5, (9,), generator=generator)
    repeat = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0, 0], dtype=torch.bool)
    metric = RankingMetrics(ks=(1, 10), tags=("repeat", "new", "last"))
    metric.update(
        scores[:4],
        target[:4],
        {"repeat": repeat[:4], "new": ~repeat[:4], "last": repeat[:4] & False},
    )
    metric.update(
        scores[4:],
        target[4:],
        {"repeat": repeat[4:], "new": ~repeat[4:], "last": repeat[4:] & False, "x": repeat[4:]},
    )
    result = metric.compute()
    assert (result["count/repeat"].item(), result["count/new"].item()) == (4.0, 5.0)
    close(result["share/repeat"], 4 / 9)
    for name in ("mrr", "recall@1", "recall@10", "ndcg@10"):
        recombined = sum(result[f"share/{t}"] * result[f"{name}/{t}"] for t in ("repeat", "new"))
        close(recombined, result[name])
    # A tag that never occurs: count 0, share 0, metrics NaN.
    assert result["count/last"].item() == 0.0 and result["share/last"].item() == 0.0
    assert math.isnan(result["mrr/last"].item()) and math.isnan(result["ndcg@10/last"].item())


def test_empty_metric_and_reset():
    metric = RankingMetrics(tags=("repeat",))
    metric.update(
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.long),
        {"repeat": torch.zeros(0, dtype=torch.bool)},
    )
    result = as_floats(metric.compute())
    assert result["count"] == 0.0 and result["share/repeat"] == 0.0 and math.isnan(result["mrr"])
    metric.update(MATRIX, MATRIX_TARGET, {"repeat": torch.ones(3, dtype=torch.bool)})
    assert metric.compute()["count"] == 3
    metric.reset()
    metric.update(MATRIX[:1], MATRIX_TARGET[:1], {"repeat": torch.ones(1, dtype=torch.bool)})
    assert as_floats(metric.compute())["mrr"] == 0.5


def test_metric_configuration_errors():
    with pytest.raises(ConfigError, match="tie policy"):
        RankingMetrics(ties="best")
    with pytest.raises(ConfigError, match="positive integers"):
        RankingMetrics(ks=(0, 10))
    with pytest.raises(ConfigError, match="empty"):
        RankingMetrics(ks=())
    with pytest.raises(ConfigError, match="repeat a name"):
        RankingMetrics(tags=("new", "new"))
    metric = RankingMetrics(tags=("repeat",))
    with pytest.raises(ValueError, match="tag 'repeat' is tracked but missing"):
        metric.update(MATRIX, MATRIX_TARGET, {"new": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="bool mask"):
        metric.update(MATRIX, MATRIX_TARGET, {"repeat": torch.ones(3)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metric_on_cuda_matches_cpu():
    cpu = RankingMetrics(ks=(1, 2), tags=("odd",))
    gpu = RankingMetrics(ks=(1, 2), tags=("odd",)).to("cuda")
    tags = {"odd": torch.tensor([False, True, False])}
    cpu.update(MATRIX, MATRIX_TARGET, tags)
    gpu.update(MATRIX.cuda(), MATRIX_TARGET.cuda(), {"odd": tags["odd"].cuda()})
    result = gpu.compute()
    assert result["mrr"].device.type == "cuda"
    assert as_floats(result) == as_floats(cpu.compute())


# --- scorers ------------------------------------------------------------------------------

QUERY = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
CANDIDATES = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
H = 1 / math.sqrt(2)


def test_dot_is_cosine_similarity():
    scores = score_output(Output(query=QUERY, candidates=CANDIDATES), "dot")
    close(scores, [[1.0, 0.0, H], [0.0, 1.0, H]])
    scaled = score_output(Output(query=5 * QUERY, candidates=CANDIDATES), "dot")
    close(scaled, scores)


def test_l2_is_negative_euclidean_distance():
    scores = score_output(Output(query=QUERY, candidates=CANDIDATES), "l2")
    close(scores, [[-1.0, -math.sqrt(2), -1.0], [-math.sqrt(8), -1.0, -math.sqrt(2)]])


def test_per_query_candidates():
    per_query = torch.stack([CANDIDATES, CANDIDATES.flip(0)])  # [2, 3, 2]
    dot = score_output(Output(query=QUERY, candidates=per_query), "dot")
    close(dot, [[1.0, 0.0, H], [H, 1.0, 0.0]])
    l2 = score_output(Output(query=QUERY, candidates=per_query), "l2")
    close(l2, [[-1.0, -math.sqrt(2), -1.0], [-math.sqrt(2), -1.0, -math.sqrt(8)]])


def test_l2_separates_near_points_far_from_the_origin():
    # The |q|^2 + |c|^2 - 2 q.c expansion loses both distances in float32 here.
    query = torch.tensor([[1e4, 1e4]])
    candidates = torch.tensor([[1e4, 1e4 + 1e-3]] + [[1e4 + 1, 1e4]] * 29)
    scores = score_output(Output(query=query, candidates=candidates), "l2")
    assert ranks(scores, torch.tensor([0]), "pessimistic").tolist() == [1.0]
    close(scores[0, 1], -1.0)


def test_native_and_half_precision():
    native = torch.tensor([[0.5, 0.1]])
    assert score_output(Output(scores=native), "native") is native
    half = score_output(Output(query=QUERY.half(), candidates=CANDIDATES.bfloat16()), "l2")
    assert half.dtype == torch.float32


def test_wrong_scorer_is_a_config_error():
    with pytest.raises(
        ConfigError,
        match="scorer 'native' needs a model with native scores; model 'jodie' gives embeddings; use eval.scorer=dot or l2",
    ):
        score_output(Output(query=QUERY, candidates=CANDIDATES), "native", "jodie")
    with pytest.raises(
        ConfigError, match="model 'popularity' gives native scores only; use eval.scorer=native"
    ):
        score_output(Output(scores=torch.zeros(1, 3)), "dot", "popularity")
    with pytest.raises(ConfigError, match="unknown scorer 'cosine'"):
        score_output(Output(query=QUERY, candidates=CANDIDATES), "cosine")
    with pytest.raises(ValueError, match="do not match"):
        score_output(Output(query=QUERY, candidates=torch.zeros(3, 5)), "dot")
    with pytest.raises(ValueError, match="do not match"):
        score_output(Output(query=QUERY, candidates=torch.zeros(3, 4, 2)), "l2")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.long])
def test_a_shared_score_row_ranks_as_its_dense_copy(dtype):
    """Queries sharing one row (`expand`, as popularity scores a step) take the sorted
    path; ties, NaN and -inf count exactly as in the dense path."""
    gen = torch.Generator().manual_seed(0)
    row = torch.randint(0, 5, (40,), generator=gen).to(dtype)
    if dtype.is_floating_point:
        row[3], row[7], row[11] = float("nan"), float("-inf"), float("inf")
    target = torch.arange(40).repeat(3)  # every item, NaN and -inf targets included
    shared = row.expand(120, -1)  # more queries than SHARED_ROW_SORT: the sorted path
    assert shared.stride(0) == 0
    for got, want in zip(rank_bounds(shared, target), rank_bounds(shared.clone(), target)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.long])
def test_column_tiles_count_as_whole_rows(dtype, monkeypatch):
    """On a CPU the comparisons run tile by tile; with tiles narrower than the row (and a
    last, partial tile) the bounds are the whole row's: a hand-written count per row."""
    import tempint.eval.ranking as ranking

    monkeypatch.setattr(ranking, "CPU_TILE_SCORES", 1)  # tiles of 1024 columns
    gen = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 7, (5, 2500), generator=gen).to(dtype)
    if dtype.is_floating_point:
        scores[:, 1500] = float("nan")
        scores[0, 2100] = float("-inf")
    target = torch.tensor([2100, 1500, 3, 1024, 2499])
    best, worst = rank_bounds(scores, target)
    for b in range(5):
        row, true = scores[b].tolist(), scores[b, target[b]].item()
        if math.isnan(true) or true == float("-inf"):
            assert (best[b].item(), worst[b].item()) == (1 + sum(s > -math.inf for s in row), 2500)
            continue
        above = sum(s > true for s in row)
        assert best[b].item() == 1 + above
        assert worst[b].item() == above + sum(s == true for s in row)
