"""Streaming evaluation: one code path that ranks every model the same way.

Validation then test are replayed in time order from the memory the model had at the
end of training. Every interaction is scored from the model's Output, which the model
computes from its state *before* the interaction, so the target never leaks into its
own prediction. The scorer is chosen on validation only; test reuses it.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from tempint.data.batch import TAG_NAMES, Chunk, Interactions, TimeBatch
from tempint.errors import ConfigError
from tempint.eval.blocks import BlockRanker, CandidateTable
from tempint.eval.negatives import PositionPairs
from tempint.eval.ranking import (
    TIES,
    RankingMetrics,
    as_floats,
    candidate_bounds,
    exclude_pairs,
    rank_bounds,
    score_candidates,
    score_output,
)
from tempint.models.base import InteractionModel, Mode, Output, exact_scores

__all__ = [
    "StreamEvaluator",
    "StreamResult",
    "run_stream",
    "evaluate",
    "can_rank_blocks",
    "score_chunk",
    "MODES",
    "Protocol",
    "snapshot_state",
    "restore_state",
]

MODES = ("frozen", "online")
KS = (1, 10)


@dataclass(frozen=True)
class Protocol:
    """What a number is measured under, beyond the model: named in every result.

    `batch_size` 1 is event-by-event streaming; B > 1 scores each batch of B consecutive
    interactions from the state before it and feeds it to the model after (TGB's
    examples use 200). `exclusions` are items taken out of a positive's ranking (TGB: the
    user's other items at the same timestamp); `negatives` [n, K] fixed items per stream
    position from `negatives_start` on rank each positive against K candidates instead of
    all items (TGB-Seq). `keep` [N] (bool, per stream position) drops interactions from
    the metrics, not from the stream (TGB-Seq's filter of users and items with fewer
    than `min_train_events` training interactions). `hits_ks` adds TGB's hits@k.
    """

    name: str = "streaming"
    batch_size: int = 1
    exclusions: PositionPairs | None = None
    negatives: Tensor | None = None
    negatives_start: int = 0
    hits_ks: tuple[int, ...] = ()
    keep: Tensor | None = None
    min_train_events: int = 0
    # DyGLib: strategy -> (users, items) [n] of one negative pair per position from
    # `negatives_start`, and `probe(users, items, positions)` making their interactions
    pair_negatives: Mapping[str, tuple[Tensor, Tensor]] | None = None
    probe: Callable[..., Interactions] | None = None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "batch_size": self.batch_size,
            "negatives": "all" if self.negatives is None else int(self.negatives.shape[1]),
            "exclude_same_time": self.exclusions is not None,
            "min_train_events": self.min_train_events,
            "pair_negatives": sorted(self.pair_negatives or {}),
        }


class StreamEvaluator:
    """Ranking metrics of one pass, one accumulator per candidate scorer.

    Each step only computes the true item's rank bounds ([B] integers, O(B·I)); they are
    buffered and folded into the metrics in large blocks, so a stream of thousands of
    small exact steps does not pay the metric update thousands of times.
    """

    def __init__(
        self,
        scorers: Sequence[str],
        ties: str = "average",
        ks: Sequence[int] = KS,
        tags: Sequence[str] = TAG_NAMES,
        device: torch.device | str = "cpu",
        flush_every: int = 8192,
        protocol: Protocol | None = None,
    ):
        if ties not in TIES:
            raise ConfigError(f"eval.ties={ties!r} is unknown; use one of {', '.join(TIES)}")
        self.tags = tuple(tags)
        self.protocol = protocol or Protocol()
        # the metric filter per stream position, on the evaluation device once
        keep = self.protocol.keep
        self._kept_positions = None if keep is None else keep.to(device)
        hits = self.protocol.hits_ks
        self.metrics = {
            s: RankingMetrics(ks=tuple(ks), ties=ties, tags=self.tags, hits_ks=hits).to(device)
            for s in scorers
        }
        self.flush_every = flush_every
        # DyGLib: per scorer and strategy, sums of per-batch AP and AUROC, and batches
        self._pairs = {s: {} for s in scorers}
        self._pending_negatives: dict[str, dict[str, Tensor]] | None = None
        self._ranks: dict[str, list[tuple[Tensor, Tensor]]] = {s: [] for s in scorers}
        self._tags: list[dict[str, Tensor]] = []
        self._keep: list[Tensor | None] = []
        self._buffered = 0
        self.count = 0
        self.device = torch.device(device)
        # the candidate rows of a frozen block replay, carried across the pass's blocks
        self.block_table: CandidateTable | None = None

    def update(self, output: Output, batch: Interactions, mask: Tensor | None = None) -> None:
        """Rank the step's true items (those `mask` marks, if given) under every scorer.

        Scores are ranked outside autocast, in float32 or wider, whatever precision the
        model ran in. On an accelerator the mask is applied when the buffer is flushed,
        not here: selecting rows by a mask waits for the device at every step.
        """
        tags = {k: batch.tags[k] for k in self.tags}
        target = batch.item
        if self._kept_positions is not None:
            kept = self._kept_positions.to(batch.index.device)[batch.index]
            mask = kept if mask is None else mask & kept
        # fixed negatives, exclusions and pair negatives read the kept rows' positions:
        # select them now; otherwise an accelerator defers the mask to the flush
        plain = (
            self.protocol.negatives is None
            and self.protocol.exclusions is None
            and self._pending_negatives is None
        )
        select = mask is not None and (target.device.type == "cpu" or not plain)
        if select:
            if target.device.type == "cpu" and not bool(mask.any()):
                return
            target = target[mask]
            tags = {k: v[mask] for k, v in tags.items()}
        position = batch.index[mask] if select else batch.index
        bounds = {}
        with exact_scores(target.device):
            if self._pending_negatives is not None:
                self._pair_metrics(output, target)
            for scorer in self.metrics:
                bounds[scorer] = self._bounds(
                    output, scorer, mask if select else None, target, position
                )
        self.add_bounds(bounds, tags, None if select else mask)

    def add_pair_negatives(self, scores: dict[str, dict[str, Tensor]]) -> None:
        """Negative pair scores {scorer: {strategy: [B]}} of the batch scored next."""
        self._pending_negatives = scores

    def _pair_metrics(self, output: Output, target: Tensor) -> None:
        """DyGLib's AP and AUROC of one batch (positives against their negatives)."""
        from tempint.eval.ranking import auroc, average_precision

        negatives, self._pending_negatives = self._pending_negatives, None
        for scorer, by_strategy in negatives.items():
            positive = score_candidates(output, scorer, target.unsqueeze(1))[:, 0]
            for strategy, negative in by_strategy.items():
                scores = torch.cat([positive, negative.to(positive)]).double()
                labels = torch.cat([torch.ones_like(positive), torch.zeros_like(positive)])
                sums = self._pairs[scorer].setdefault(strategy, [0.0, 0.0, 0])
                sums[0] += float(average_precision(scores, labels))
                sums[1] += float(auroc(scores, labels))
                sums[2] += 1

    def _bounds(self, output: Output, scorer: str, mask, target, position):
        """The true items' rank bounds under the protocol: among all items less the
        exclusions, or among the fixed negatives of each position."""
        negatives = self.protocol.negatives
        if negatives is not None:
            rows = (position - self.protocol.negatives_start).to(negatives.device)
            items = torch.cat([target.unsqueeze(1), negatives[rows].to(target.device)], dim=1)
            if mask is not None:
                output = _select_output(output, mask)
            scores = score_candidates(output, scorer, items)
            return candidate_bounds(scores[:, 0], scores[:, 1:])
        scores = score_output(output, scorer)
        if mask is not None:
            scores = scores[mask]
        if self.protocol.exclusions is not None:
            scores = exclude_pairs(scores, *self.protocol.exclusions.lookup(position))
        return rank_bounds(scores, target)

    def add_bounds(
        self,
        bounds: Mapping[str, tuple[Tensor, Tensor]],
        tags: Mapping[str, Tensor],
        keep: Tensor | None = None,
    ) -> None:
        """Buffer the true items' rank bounds (every scorer) and their tags; `keep` [B]
        (bool) marks the rows to count, the others are dropped at the flush."""
        for scorer in self.metrics:
            self._ranks[scorer].append(bounds[scorer])
        self._tags.append(dict(tags))
        n = int(next(iter(bounds.values()))[0].shape[0])
        self._keep.append(keep)
        self._buffered += n
        if self._buffered >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._buffered:
            return
        tags = {k: torch.cat([t[k] for t in self._tags]) for k in self.tags}
        keep = None
        if any(k is not None for k in self._keep):
            parts = self._ranks[next(iter(self.metrics))]
            keep = torch.cat(
                [
                    torch.ones_like(b, dtype=torch.bool) if k is None else k
                    for k, (b, _) in zip(self._keep, parts, strict=True)
                ]
            )
            tags = {k: v[keep] for k, v in tags.items()}
        for scorer, metric in self.metrics.items():
            pairs = self._ranks[scorer]
            best = torch.cat([b for b, _ in pairs])
            worst = torch.cat([w for _, w in pairs])
            if keep is not None:
                best, worst = best[keep], worst[keep]
            metric.update_ranks(best, worst, tags=tags)
            pairs.clear()
        self.count += self._buffered if keep is None else int(keep.sum())
        self._tags.clear()
        self._keep.clear()
        self._buffered = 0

    def compute(self) -> dict[str, dict[str, float]]:
        """Per scorer: ranking metrics, and DyGLib's `ap/<strategy>`, `auroc/<strategy>`
        (means over batches, as DyGLib averages them)."""
        self.flush()
        out = {s: as_floats(m.compute()) for s, m in self.metrics.items()}
        for scorer, by_strategy in self._pairs.items():
            for strategy, (ap, roc, batches) in by_strategy.items():
                out[scorer][f"ap/{strategy}"] = ap / batches
                out[scorer][f"auroc/{strategy}"] = roc / batches
        return out


def _select_output(output: Output, mask: Tensor) -> Output:
    """The Output's rows of the masked interactions (a shared candidate table stays)."""

    def rows(x):
        return None if x is None else x[mask]

    candidates = output.candidates
    if candidates is not None and candidates.dim() == 3:
        candidates = candidates[mask]
    return Output(query=rows(output.query), candidates=candidates, scores=rows(output.scores))


@dataclass
class StreamResult:
    metrics: dict[str, dict[str, float]]
    count: int
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


def run_stream(
    model: InteractionModel,
    chunks: Iterable[Chunk],
    evaluator: StreamEvaluator,
    device: torch.device | str = "cpu",
    online_step: Callable[[Tensor], None] | None = None,
    online_window: float | None = None,
) -> StreamResult:
    """Score every interaction of `chunks`, then let it update the model's state.

    Frozen: weights fixed, under no_grad. Online (JODIE's test-then-train): losses of
    already-scored interactions are summed until `online_window` seconds of stream time
    have passed, then `online_step(loss)` takes a gradient step and memory is detached.
    Block chunks (frozen replays of models with `block_scorers`) are replayed in
    t-batches and ranked at once, each interaction against the candidates as of its
    own position (`tempint.eval.blocks`).
    """
    online = online_step is not None
    was_training = model.training
    model.eval()
    # everything alive now (stream, cached chunks, model) stays alive through the pass:
    # kept out of the collector's scans, which otherwise walked them again and again
    # (a quarter of Wikipedia's block evaluation)
    gc.freeze()
    start = time.perf_counter()
    pending: Tensor | None = None
    window_start: float | None = None
    try:
        for chunk in chunks:
            chunk = chunk.to(device)
            if isinstance(chunk, TimeBatch):
                if online:
                    raise ConfigError("eval.batch_size > 1 needs eval.mode=frozen")
                score_time_batch(model, chunk, evaluator)
                continue
            if not online:
                score_chunk(model, chunk, evaluator)
                continue
            if chunk.block:
                raise ValueError("block chunks are for frozen replays; online needs steps")
            with torch.enable_grad():
                outputs = model.run_chunk(chunk, Mode.ONLINE)
                for s, (step, output) in enumerate(zip(chunk.steps, outputs, strict=True)):
                    mask = chunk.scored[s] if chunk.scored is not None else None
                    with torch.no_grad():
                        evaluator.update(output, step, mask)
                    if output.loss is not None:
                        pending = output.loss if pending is None else pending + output.loss
            t_last = float(chunk.steps[-1].t.max())
            if window_start is None:
                window_start = float(chunk.steps[0].t.min())
            if online_window is None or t_last - window_start >= online_window:
                if pending is not None and pending.requires_grad:
                    online_step(pending)
                pending = None
                window_start = None
                model.detach_state()
        if online and pending is not None and pending.requires_grad:
            online_step(pending)
            model.detach_state()
    finally:
        model.train(was_training)
        gc.unfreeze()
    seconds = time.perf_counter() - start
    return StreamResult(evaluator.compute(), evaluator.count, seconds)


@torch.no_grad()
def _rank_block(model: InteractionModel, chunk: Chunk, evaluator: StreamEvaluator) -> None:
    """Replay a block chunk's t-batches, then rank all its interactions at once."""
    scorers = tuple(evaluator.metrics)
    if evaluator.protocol.negatives is not None or evaluator.protocol.keep is not None:
        raise ValueError("block chunks rank all items of every step; this protocol needs steps")
    if evaluator.block_table is None:  # read once per pass, then carried block to block
        evaluator.block_table = CandidateTable(model.candidate_table())
    ranker = BlockRanker(scorers, evaluator.block_table, model.block_queries)
    for output in model.run_chunk(chunk, Mode.REPLAY):
        ranker.add(output)
    with exact_scores(chunk.steps[0].item.device):
        evaluator.add_bounds(*ranker.rank(chunk, evaluator.protocol.exclusions))


@torch.no_grad()
def score_chunk(model: InteractionModel, chunk: Chunk, evaluator: StreamEvaluator) -> None:
    """Frozen replay of one chunk: ranked as a block, a run of steps replayed at once by a
    model that can (`replays_steps`), or step by step."""
    if chunk.block:
        if set(evaluator.metrics) <= set(model.capabilities.block_scorers):
            _rank_block(model, chunk, evaluator)
            return
        chunk = one_at_a_time(chunk)  # a model without block replay: the simple path
    if chunk.run and model.capabilities.replays_steps and len(chunk.steps) > 1:  # one step: forward
        model.begin_chunk(chunk, Mode.SCORE)
        output = model.replay_steps(chunk.steps)
        model.end_chunk(chunk, Mode.SCORE)
        evaluator.update(output, Interactions.concat(chunk.steps))
        return
    outputs = model.run_chunk(chunk, Mode.SCORE)
    for s, (step, output) in enumerate(zip(chunk.steps, outputs, strict=True)):
        mask = chunk.scored[s] if chunk.scored is not None else None
        evaluator.update(output, step, mask)


def one_at_a_time(block: Chunk) -> Chunk:
    """A block chunk's interactions (laid out in t-batches) back in stream order, one per
    step: what the protocol replays for a model that cannot rank blocks. It is the
    reference every faster path is checked against, exact whatever the model's state."""
    rows = Interactions.concat(block.steps) if len(block.steps) > 1 else block.steps[0]
    order = torch.argsort(rows.index)
    rows = rows.select(order)
    scored = None if block.scored is None else torch.cat(list(block.scored))[order]
    return Chunk(
        steps=[rows.select(slice(k, k + 1)) for k in range(len(rows))],
        scored=None if scored is None else list(scored.split(1)),
    )


@torch.no_grad()
def score_time_batch(model: InteractionModel, batch: TimeBatch, evaluator: StreamEvaluator) -> None:
    """Score a whole batch from the state before it, then feed it to the model.

    When the model's step updates commute, one forward does both. Otherwise the forward
    that scores the batch also updates the state with the batch's nodes repeated in one
    step, which only exact steps do right: the state is put back and the batch replayed.
    """
    pairs = evaluator.protocol.pair_negatives is not None
    # one copy of the state before the batch serves the negative pairs and the replay
    saved = snapshot_state(model) if pairs or batch.replay is not None else None
    if pairs:
        _score_pair_negatives(model, batch.scored, evaluator, saved)
    score_chunk(model, batch.scored, evaluator)
    if batch.replay is None:
        return
    restore_state(model, saved)
    for chunk in batch.replay:
        for _ in model.run_chunk(chunk, Mode.SCORE):
            pass


def _score_pair_negatives(
    model: InteractionModel, scored: Chunk, evaluator, saved: Mapping[str, Tensor]
) -> None:
    """Score each strategy's negative pairs from the state before the batch (`saved`, put
    back after each), and hand them to the evaluator for the batch's AP and AUROC."""
    protocol = evaluator.protocol
    (step,) = scored.steps
    rows = (step.index - protocol.negatives_start).cpu()
    device = step.user.device
    out: dict[str, dict[str, Tensor]] = {s: {} for s in evaluator.metrics}
    position = step.index.cpu().numpy()
    # read the stream before the batch, as the batch's own rows do (`_batch_step`)
    before = np.full_like(position, position.min())
    for strategy, (users, items) in protocol.pair_negatives.items():
        probe = protocol.probe(users[rows].numpy(), items[rows].numpy(), position, before)
        probe = probe.to(device)
        (output,) = model.run_chunk(Chunk(steps=[probe]), Mode.SCORE)
        with exact_scores(device):  # scored in float32 or wider, as the positives
            for scorer in out:
                candidates = probe.item.unsqueeze(1)
                out[scorer][strategy] = score_candidates(output, scorer, candidates)[:, 0]
        restore_state(model, saved)
    evaluator.add_pair_negatives(out)


def snapshot_state(model: InteractionModel) -> dict[str, Tensor]:
    """Copies of the model's stream state (its buffers)."""
    return {name: b.detach().clone() for name, b in model.named_buffers()}


def restore_state(model: InteractionModel, saved: Mapping[str, Tensor]) -> None:
    """Put back a `snapshot_state`, also the buffers that have grown since (pair tables),
    and drop any per-chunk state kept beside the buffers."""
    for name, value in saved.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        current = owner._buffers[leaf]
        if current is not None and current.shape == value.shape:
            current.copy_(value)
        else:
            owner._buffers[leaf] = value.clone()
    model.detach_state()


def can_rank_blocks(model: InteractionModel, scorer: str, mode: str) -> bool:
    """Whether a frozen replay may use block chunks for every scorer it will try."""
    scorers = model.capabilities.scorers if scorer == "auto" else (scorer,)
    return (
        mode == "frozen"
        and bool(model.capabilities.block_scorers)
        and set(scorers) <= set(model.capabilities.block_scorers)
    )


def _prefixed(prefix: str, values: Mapping[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def evaluate(
    model: InteractionModel,
    val_chunks: Callable[[], Iterable[Chunk]],
    test_chunks: Callable[[], Iterable[Chunk]],
    *,
    scorer: str = "auto",
    ties: str = "average",
    mode: str = "frozen",
    device: torch.device | str = "cpu",
    online_step: Callable[[Tensor], None] | None = None,
    online_window: float | None = None,
    baselines: Mapping[str, tuple[InteractionModel, Callable, Callable]] | None = None,
    protocol: Protocol | None = None,
) -> dict:
    """Validation then test, memory carried; the scorer picked on validation MRR.

    `baselines` maps a name to (model already fed the training stream, val chunks, test
    chunks); they are replayed on the same splits so every number stands beside them.
    Returns flat metric keys (`val/mrr`, `test/recall@10`, `test/mrr/repeat`,
    `test/recency/mrr`, ...) plus `scorer`, `ties`, `mode`, `protocol` and throughput.
    `protocol` applies to the model and the baselines alike.
    """
    protocol = protocol or Protocol()
    if mode not in MODES:
        raise ConfigError(f"eval.mode={mode!r} is unknown; use frozen or online")
    if mode == "online" and (online_step is None or not model.capabilities.learned):
        mode = "frozen"  # nothing to learn: online and frozen coincide
    candidates = list(model.capabilities.scorers)
    if scorer != "auto":
        if scorer not in candidates:
            raise ConfigError(
                f"eval.scorer={scorer!r} does not apply to {type(model).__name__}; "
                f"use auto or one of {', '.join(candidates)}"
            )
        candidates = [scorer]
    step = online_step if mode == "online" else None
    val = run_stream(
        model,
        val_chunks(),
        StreamEvaluator(candidates, ties, device=device, protocol=protocol),
        device,
        step,
        online_window,
    )
    chosen = max(candidates, key=lambda s: (val.metrics[s]["mrr"], -candidates.index(s)))
    test = run_stream(
        model,
        test_chunks(),
        StreamEvaluator([chosen], ties, device=device, protocol=protocol),
        device,
        step,
        online_window,
    )
    out: dict = {}
    out.update(_prefixed("val", val.metrics[chosen]))
    for s in candidates:
        out[f"val/{s}/mrr"] = val.metrics[s]["mrr"]
    out.update(_prefixed("test", test.metrics[chosen]))
    seconds = val.seconds + test.seconds
    out["eval/interactions_per_second"] = (val.count + test.count) / max(seconds, 1e-9)
    out["eval/seconds"] = seconds
    out["scorer"] = chosen
    out["ties"] = ties
    out["mode"] = mode
    out["protocol"] = protocol.describe()
    out["baselines"] = list(baselines or {})
    for name, (baseline, b_val, b_test) in (baselines or {}).items():
        b_scorer = baseline.capabilities.scorers[0]
        for split, chunks in (("val", b_val), ("test", b_test)):
            evaluator = StreamEvaluator([b_scorer], ties, device=device, protocol=protocol)
            res = run_stream(baseline, chunks(), evaluator, device)
            out.update(_prefixed(f"{split}/{name}", res.metrics[b_scorer]))
    _strongest_heuristic(out, list(baselines or {}))
    return out


def _strongest_heuristic(out: dict, names: Sequence[str]) -> None:
    """Name the heuristic with the best test MRR and the model's gap to it (model − best)."""
    scored = [(out.get(f"test/{n}/mrr", float("nan")), n) for n in names]
    scored = [(v, n) for v, n in scored if v == v]
    if not scored:
        return
    best_mrr, best = max(scored)
    out["test/strongest_heuristic"] = best
    out["test/strongest_heuristic/mrr"] = best_mrr
    out["test/gap_to_strongest_heuristic"] = out["test/mrr"] - best_mrr
