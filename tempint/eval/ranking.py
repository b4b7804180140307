"""Full-ranking scores, tie-aware ranks and streaming ranking metrics.

Every model is judged by the rank of the true item among ALL items (no sampled negatives,
no masking of seen items), so that the numbers of different models are comparable. Ties
are resolved by a policy, never by item id: a sort-based rank would reward a model for
the order in which items happen to be numbered.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from tempint.errors import ConfigError
from tempint.models.base import SCORERS, Output

__all__ = [
    "TIES",
    "score_output",
    "score_candidates",
    "rank_bounds",
    "candidate_bounds",
    "exclude_pairs",
    "average_precision",
    "auroc",
    "ranks",
    "reciprocal_rank",
    "recall_at_k",
    "ndcg_at_k",
    "interaction_metrics",
    "RankingMetrics",
    "as_floats",
]

# How items with the same score as the true item count: half of them ahead of it
# (the expected rank under a random tie order), none, or all.
TIES = ("average", "optimistic", "pessimistic")


def score_output(output: Output, scorer: str, model_name: str | None = None) -> Tensor:
    """Item scores [B, I] of one Output under one scorer; higher is better.

    "dot": cosine similarity of the L2-normalised query [B, d] and candidates ([I, d] or
    per-query [B, I, d]), so that embedding norms (which drift with training and activity)
    do not decide the ranking. "l2": minus the euclidean distance, computed pair by pair:
    the expansion |q|^2 + |c|^2 - 2 q.c cancels badly and would scramble near-equal
    distances into false wins and false ties. "native": the model's own `scores`.
    Half-precision embeddings are scored in float32 for the same reason.
    """
    who = f"model '{model_name}'" if model_name else "the model"
    if scorer not in SCORERS:
        raise ConfigError(f"unknown scorer '{scorer}'; known: {', '.join(SCORERS)} (eval.scorer)")
    if scorer == "native":
        if output.scores is None:
            raise ConfigError(
                f"scorer 'native' needs a model with native scores; {who} gives embeddings; "
                "use eval.scorer=dot or l2"
            )
        scores = output.scores
        return scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
    if output.query is None or output.candidates is None:
        gives = "native scores only" if output.scores is not None else "no embeddings"
        raise ConfigError(
            f"scorer '{scorer}' needs query and candidate embeddings; {who} gives {gives}; "
            "use eval.scorer=native"
        )
    query, candidates = _embeddings(output.query, output.candidates)
    per_query = candidates.dim() == 3
    if scorer == "dot":
        query = F.normalize(query, dim=-1)
        candidates = F.normalize(candidates, dim=-1)
        if per_query:
            return torch.bmm(candidates, query.unsqueeze(-1)).squeeze(-1)
        return query @ candidates.T
    mode = "donot_use_mm_for_euclid_dist"
    if per_query:
        return -torch.cdist(query.unsqueeze(1), candidates, compute_mode=mode).squeeze(1)
    return -torch.cdist(query, candidates, compute_mode=mode)


def score_candidates(output: Output, scorer: str, items: Tensor) -> Tensor:
    """Scores [B, K] of the items [B, K] (long) each query is ranked against.

    The same numbers `score_output` gives at those columns, computed from the candidates'
    rows alone, so that ranking against a fixed sample of items never builds the
    [B, num_items] matrix (native models give it anyway; it is then gathered from).
    """
    items = items.long()
    if scorer == "native":
        return score_output(output, scorer).gather(1, items)
    if output.query is None or output.candidates is None:
        return score_output(output, scorer).gather(1, items)  # raises the scorer's error
    query, candidates = _embeddings(output.query, output.candidates)
    if candidates.dim() == 3:
        rows = candidates.gather(1, items.unsqueeze(-1).expand(-1, -1, candidates.shape[-1]))
    else:
        rows = candidates[items]  # [B, K, d]
    if scorer == "dot":
        q = F.normalize(query, dim=-1).unsqueeze(-1)
        return torch.bmm(F.normalize(rows, dim=-1), q).squeeze(-1)
    if scorer == "l2":
        return -(rows - query.unsqueeze(1)).square().sum(-1).sqrt()
    raise ConfigError(f"unknown scorer '{scorer}'; known: {', '.join(SCORERS)} (eval.scorer)")


def _embeddings(query: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """Check shapes (a mismatch is a model bug, not a user mistake) and lift half precision."""
    ok = query.dim() == 2 and candidates.dim() in (2, 3)
    ok = ok and candidates.shape[-1] == query.shape[-1]
    ok = ok and (candidates.dim() == 2 or candidates.shape[0] == query.shape[0])
    if not ok:
        raise ValueError(
            f"query {tuple(query.shape)} and candidates {tuple(candidates.shape)} do not match; "
            "expected query [B, d] with candidates [I, d] or [B, I, d]"
        )
    low = (torch.float16, torch.bfloat16)
    query = query.float() if query.dtype in low else query
    candidates = candidates.float() if candidates.dtype in low else candidates
    return query, candidates


def rank_bounds(scores: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Best and worst rank [B] (long) of each true item among all I items of its row.

    best = 1 + #(s > s_true); worst = best + #(s == s_true, other items). NaN scores are
    treated as -inf: a NaN neither beats the true item nor, as the true item's own score,
    beats anything finite, so a model that emits NaN cannot win by it.
    """
    if scores.dim() != 2 or target.shape != scores.shape[:1]:
        raise ValueError(
            f"scores {tuple(scores.shape)} and target {tuple(target.shape)} do not match; "
            "expected scores [B, I] and target [B]"
        )
    scores = scores.detach()
    if scores.shape[0] > SHARED_ROW_SORT and scores.stride(0) == 0:
        return _shared_row_bounds(scores[0], target.long())
    true = scores.gather(1, target.long().unsqueeze(1))
    if not scores.is_floating_point():
        above, equal = _above_and_equal(scores, true)
        return 1 + above, above + equal
    # NaN compares false with everything, so a NaN item already neither beats nor ties a
    # true score, as -inf would not. A true score that is NaN or -inf ranks as -inf: below
    # every score above -inf, tied with all the rest (NaN included), so its worst rank is
    # the catalogue size. Counted without rewriting the scores, and without a host sync.
    low = true.isnan() | (true == float("-inf"))
    true = torch.where(low, float("-inf"), true)
    above, equal = _above_and_equal(scores, true)
    best = 1 + above
    worst = torch.where(low.squeeze(1), scores.shape[1], above + equal)
    return best, worst


# On a CPU the comparisons run over column tiles of about this many scores, so that each
# tile's masks are summed while still in cache: three times faster than whole rows at
# 10^5 items. Other devices compare whole rows in one launch.
CPU_TILE_SCORES = 1 << 19


def _above_and_equal(scores: Tensor, true: Tensor) -> tuple[Tensor, Tensor]:
    """(#(s > true), #(s == true)) [B] (long) of each row of `scores` [B, I], true [B, 1]."""
    rows, size = scores.shape
    width = size
    if scores.device.type == "cpu":
        width = max(1024, CPU_TILE_SCORES // max(rows, 1))
    above = torch.zeros(rows, dtype=torch.long, device=scores.device)
    equal = torch.zeros_like(above)
    for lo in range(0, size, width):
        tile = scores[:, lo : lo + width]
        # a bool mask summed as bytes into int32: no widening of the mask to int64
        above += (tile > true).view(torch.uint8).sum(1, dtype=torch.int32)
        equal += (tile == true).view(torch.uint8).sum(1, dtype=torch.int32)
    return above, equal


# Queries sharing one score row are ranked by sorting it once when there are more of them
# than this; fewer compare against the (never copied) row directly, cheaper than a sort.
SHARED_ROW_SORT = 64


def _shared_row_bounds(row: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """`rank_bounds` of queries that share one score row [I] (a popularity heuristic's
    `expand`): one sort and two binary searches per query instead of a pass over the
    row per query, the same numbers (NaN and -inf as there)."""
    values = torch.sort(row[~row.isnan()] if row.is_floating_point() else row).values
    true = row[target]
    low = None
    if row.is_floating_point():
        low = true.isnan() | (true == float("-inf"))
        true = torch.where(low, float("-inf"), true)
    above = values.shape[0] - torch.searchsorted(values, true, right=True)
    ties = torch.searchsorted(values, true, right=True) - torch.searchsorted(values, true)
    best = 1 + above
    worst = best + ties - 1
    if low is not None:
        worst = torch.where(low, row.shape[0], worst)
    return best, worst


def candidate_bounds(positive: Tensor, negative: Tensor) -> tuple[Tensor, Tensor]:
    """Rank bounds [B] of each positive score [B] among its negatives' scores [B, K].

    best = 1 + #(negative > positive), worst = 1 + #(negative >= positive): TGB's
    optimistic and pessimistic ranks plus one, whose mean is its rank.
    """
    scores = torch.cat([positive.reshape(-1, 1).to(negative.dtype), negative], dim=1)
    return rank_bounds(scores, torch.zeros_like(positive, dtype=torch.long).reshape(-1))


def exclude_pairs(scores: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Scores with entries (rows[e], cols[e]) taken out of the ranking (set to NaN).

    A NaN neither beats nor ties a finite true score (`rank_bounds`), so an excluded
    item does not count as a negative: TGB leaves out the other items a user interacts
    with at the same timestamp, which are positives too.
    """
    if rows.numel() == 0:
        return scores
    scores = scores.clone() if scores.is_floating_point() else scores.double()
    scores[rows.long(), cols.long()] = float("nan")
    return scores


def ranks(scores: Tensor, target: Tensor, ties: str = "average") -> Tensor:
    """Rank [B] (float64) of each true item: 1 + #(s > s_true) + w * #(s == s_true, others).

    w is 0.5 for "average" (the expected rank under a uniformly random tie order, hence
    possibly a half-integer), 0 for "optimistic" and 1 for "pessimistic". float64 keeps
    half ranks exact at any catalogue size. NaN scores count as -inf (see `rank_bounds`).
    """
    _check_ties(ties)
    best, worst = rank_bounds(scores, target)
    if ties == "optimistic":
        return best.double()
    if ties == "pessimistic":
        return worst.double()
    return (best + worst).double() / 2


def reciprocal_rank(rank: Tensor) -> Tensor:
    """1 / rank [B]; for an average rank this is 1 / ((best + worst) / 2), the TGB convention."""
    return 1.0 / rank.double()


def recall_at_k(rank: Tensor, k: int, worst: Tensor | None = None) -> Tensor:
    """Hit indicator 1[rank <= k] [B]; with `worst`, its expectation over tied positions.

    When `worst` is given, `rank` is the best rank and the true item is taken to sit at a
    uniformly random position in [rank, worst] (both integer-valued): the value is the
    share of those positions within the top k. A constant scorer over n items then gets
    recall@k = k / n exactly, as a random ranking would.
    """
    _check_k(k)
    if worst is None:
        return (rank.double() <= k).double()
    lo, hi = rank.long(), worst.long()
    hits = hi.clamp(max=k) - (lo - 1).clamp(max=k)
    return hits.double() / (hi - lo + 1).double()


def ndcg_at_k(rank: Tensor, k: int, worst: Tensor | None = None) -> Tensor:
    """1 / log2(1 + rank) if rank <= k else 0 [B]; with `worst`, the expectation over ties.

    With one relevant item per query the ideal DCG is 1, so this is the NDCG itself. When
    `worst` is given the discount is averaged over the uniformly random position in
    [rank, worst], like `recall_at_k`; prefix sums of the discounts keep it vectorised.
    """
    _check_k(k)
    if worst is None:
        r = rank.double()
        return torch.where(r <= k, 1.0 / torch.log2(1.0 + r), torch.zeros_like(r))
    lo, hi = rank.long(), worst.long()
    cumulative = torch.tensor(_discount_prefix(k), dtype=torch.float64, device=lo.device)
    total = cumulative[hi.clamp(max=k)] - cumulative[(lo - 1).clamp(max=k)]
    return total / (hi - lo + 1).double()


@functools.cache
def _discount_prefix(k: int) -> tuple[float, ...]:
    """Sums of the DCG discounts 1 / log2(1 + p) for p = 1..j, j = 0..k, in Python floats:
    the same on every device (a floating cumsum on a GPU is not deterministic)."""
    return (0.0, *itertools.accumulate(1.0 / math.log2(1.0 + p) for p in range(1, k + 1)))


def interaction_metrics(
    best: Tensor,
    worst: Tensor,
    ties: str = "average",
    ks: Sequence[int] = (1, 10),
    ndcg_ks: Sequence[int] = (10,),
    hits_ks: Sequence[int] = (),
) -> dict[str, Tensor]:
    """Per-interaction terms [B] (float64) whose means are the reported metrics.

    Keys "mrr", "recall@k" for k in `ks`, "ndcg@k" for k in `ndcg_ks`. Under "average"
    ties the reciprocal rank uses the average rank (rank 2.5 -> 0.4, as TGB does), while
    recall and NDCG take their expectation over the tied positions (a reciprocal of an
    average is not an average of reciprocals: the two choices are kept apart on purpose).
    "optimistic" and "pessimistic" use the single best or worst rank for everything.
    "hits@k" for k in `hits_ks` is TGB's: 1[rank <= k] of the tie policy's single rank
    (the mean of best and worst under "average"), not an expectation over ties.
    """
    _check_ties(ties)
    if ties == "optimistic":
        worst = best
    elif ties == "pessimistic":
        best = worst
    out = {"mrr": 2.0 / (best + worst).double()}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(best, k, worst)
    for k in ndcg_ks:
        out[f"ndcg@{k}"] = ndcg_at_k(best, k, worst)
    for k in hits_ks:
        out[f"hits@{k}"] = ((best + worst).double() / 2 <= k).double()
    return out


def average_precision(scores: Tensor, labels: Tensor) -> Tensor:
    """Average precision (0-d float64) of binary `labels` [N] ranked by `scores` [N].

    Σ over distinct thresholds of (recall gain) × precision, tied scores entering together,
    as scikit-learn's `average_precision_score` defines it: exact on ties, whatever the
    order of tied rows.
    """
    positives, total = _threshold_counts(scores, labels)
    n_pos = positives[-1]
    precision = positives / total
    gain = torch.diff(positives, prepend=positives.new_zeros(1)) / n_pos
    return (gain * precision).sum()


def auroc(scores: Tensor, labels: Tensor) -> Tensor:
    """Area under the ROC curve (0-d float64): P(positive > negative) + ½ P(tie).

    The trapezoids over the distinct thresholds, which count a tied positive-negative pair
    as one half.
    """
    positives, total = _threshold_counts(scores, labels)
    negatives = total - positives
    tpr = torch.cat([positives.new_zeros(1), positives / positives[-1]])
    fpr = torch.cat([negatives.new_zeros(1), negatives / negatives[-1]])
    return ((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2).sum()


def _threshold_counts(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Cumulative positives and rows [T] at each distinct score, highest first (float64)."""
    if scores.shape != labels.shape or scores.dim() != 1:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} differ")
    labels = labels.double()
    if not bool((labels > 0).any()) or not bool((labels == 0).any()):
        raise ValueError("AP and AUROC need at least one positive and one negative")
    values, inverse = torch.unique(scores.double(), sorted=True, return_inverse=True)
    count = torch.zeros_like(values).index_add_(0, inverse, torch.ones_like(labels))
    hits = torch.zeros_like(values).index_add_(0, inverse, labels)
    return hits.flip(0).cumsum(0), count.flip(0).cumsum(0)


class RankingMetrics(Metric):
    """MRR, recall@k and NDCG@k over a stream, overall and per tag.

    The state is one float64 matrix of sums [1 + num_tags, 1 + num_metrics] (row 0 all
    interactions, then one row per tag; column 0 the count), reduced by "sum" across
    processes. Metrics are sum / count over every interaction seen, never a mean of batch
    means, so the result does not depend on how the stream was batched; score matrices
    are reduced to ranks inside `update` and never kept.

    `compute()` gives 0-d tensors: "mrr", "recall@k", "ndcg@k", "count", and per tag
    "<metric>/<tag>", "share/<tag>" (fraction of interactions with the tag) and
    "count/<tag>". A tag (or a stream) with no interactions gives NaN metrics and share 0.
    `ndcg_ks` defaults to every k in `ks` above 1 (NDCG@1 equals recall@1).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self,
        ks: Sequence[int] = (1, 10),
        ties: str = "average",
        tags: Sequence[str] = (),
        ndcg_ks: Sequence[int] | None = None,
        hits_ks: Sequence[int] = (),
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.ks = tuple(_check_k(k, "eval.ks") for k in ks)
        if not self.ks:
            raise ConfigError("eval.ks is empty; give at least one cutoff, e.g. [1, 10]")
        if ndcg_ks is None:
            ndcg_ks = [k for k in self.ks if k > 1]
        self.ndcg_ks = tuple(_check_k(k, "eval.ndcg_ks") for k in ndcg_ks)
        self.hits_ks = tuple(_check_k(k, "eval.hits_ks") for k in hits_ks)
        self.ties = _check_ties(ties)
        self.tags = tuple(str(t) for t in tags)
        if len(set(self.tags)) != len(self.tags):
            raise ConfigError(f"eval tags {list(self.tags)} repeat a name; give each tag once")
        metric_names = ["mrr", *(f"recall@{k}" for k in self.ks)]
        self.columns = (
            "count",
            *metric_names,
            *(f"ndcg@{k}" for k in self.ndcg_ks),
            *(f"hits@{k}" for k in self.hits_ks),
        )
        zeros = torch.zeros(1 + len(self.tags), len(self.columns), dtype=torch.float64)
        self.add_state("sums", zeros, dist_reduce_fx="sum")

    def update(
        self,
        scores: Tensor | None = None,
        target: Tensor | None = None,
        tags: Mapping[str, Tensor] | None = None,
        *,
        best: Tensor | None = None,
        worst: Tensor | None = None,
    ) -> None:
        """Add a batch: scores [B, I] with target [B], or precomputed `best`/`worst` ranks [B].

        `tags` maps every tracked tag name to a bool mask [B]; extra names are ignored.
        """
        if scores is not None:
            if target is None:
                raise ValueError("RankingMetrics.update got scores without target")
            best, worst = rank_bounds(scores, target)
        elif best is None:
            raise ValueError("RankingMetrics.update needs scores and target, or best ranks")
        if worst is None:
            worst = best
        terms = interaction_metrics(best, worst, self.ties, self.ks, self.ndcg_ks, self.hits_ks)
        values = torch.stack([torch.ones_like(terms["mrr"]), *terms.values()], dim=1)
        values = values.to(self.sums)
        masks = self._masks(tags, values.shape[0], values.device).to(values.dtype)
        self.sums += masks.T @ values

    def update_ranks(
        self,
        best: Tensor,
        worst: Tensor | None = None,
        tags: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Add a batch of ranks [B] from `rank_bounds` (untied ranks: `best` alone)."""
        self.update(tags=tags, best=best, worst=worst)

    def _masks(self, tags: Mapping[str, Tensor] | None, n: int, device) -> Tensor:
        """Membership [B, 1 + num_tags]: column 0 is every interaction."""
        columns = [torch.ones(n, dtype=torch.bool, device=device)]
        tags = tags or {}
        for name in self.tags:
            if name not in tags:
                raise ValueError(f"tag '{name}' is tracked but missing; got {sorted(tags)}")
            mask = tags[name]
            if mask.dtype != torch.bool or mask.shape != (n,):
                raise ValueError(
                    f"tag '{name}' must be a bool mask of shape ({n},); "
                    f"got {mask.dtype} {tuple(mask.shape)}"
                )
            columns.append(mask.to(device))
        return torch.stack(columns, dim=1)

    def compute(self) -> dict[str, Tensor]:
        sums = self.sums.clone()
        count = sums[:, 0]
        means = sums[:, 1:] / count.unsqueeze(1)
        names = self.columns[1:]
        out = {name: means[0, j] for j, name in enumerate(names)}
        out["count"] = count[0]
        total = count[0].clamp(min=1.0)
        for i, tag in enumerate(self.tags, start=1):
            out.update({f"{name}/{tag}": means[i, j] for j, name in enumerate(names)})
            out[f"share/{tag}"] = count[i] / total
            out[f"count/{tag}"] = count[i]
        return out


def as_floats(values: Mapping[str, Tensor | float]) -> dict[str, float]:
    """Plain Python floats of a metrics dict, for JSON files and printing."""
    return {name: float(value) for name, value in values.items()}


def _check_ties(ties: str) -> str:
    if ties not in TIES:
        raise ConfigError(f"unknown tie policy '{ties}'; known: {', '.join(TIES)} (eval.ties)")
    return ties


def _check_k(k: int, where: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise ConfigError(f"{where} got cutoff {k!r}; use positive integers, e.g. [1, 10]")
    return int(k)
