"""Streaming evaluation: one code path that ranks every model the same way.

Validation then test are replayed in time order from the memory the model had at the
end of training. Every interaction is scored from the model's Output, which the model
computes from its state *before* the interaction, so the target never leaks into its
own prediction. The scorer is chosen on validation only; test reuses it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tempint.data.batch import TAG_NAMES, Chunk, Interactions
from tempint.errors import ConfigError
from tempint.eval.blocks import BlockRanker
from tempint.eval.ranking import TIES, RankingMetrics, as_floats, rank_bounds, score_output
from tempint.models.base import InteractionModel, Output, exact_scores

__all__ = [
    "StreamEvaluator",
    "StreamResult",
    "run_stream",
    "evaluate",
    "can_rank_blocks",
    "score_chunk",
    "MODES",
]

MODES = ("frozen", "online")
KS = (1, 10)


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
    ):
        if ties not in TIES:
            raise ConfigError(f"eval.ties={ties!r} is unknown; use one of {', '.join(TIES)}")
        self.tags = tuple(tags)
        self.metrics = {
            s: RankingMetrics(ks=tuple(ks), ties=ties, tags=self.tags).to(device) for s in scorers
        }
        self.flush_every = flush_every
        self._ranks: dict[str, list[tuple[Tensor, Tensor]]] = {s: [] for s in scorers}
        self._tags: list[dict[str, Tensor]] = []
        self._keep: list[Tensor | None] = []
        self._buffered = 0
        self.count = 0
        self.device = torch.device(device)

    def update(self, output: Output, batch: Interactions, mask: Tensor | None = None) -> None:
        """Rank the step's true items (those `mask` marks, if given) under every scorer.

        Scores are ranked outside autocast, in float32 or wider, whatever precision the
        model ran in. On an accelerator the mask is applied when the buffer is flushed,
        not here: selecting rows by a mask waits for the device at every step.
        """
        tags = {k: batch.tags[k] for k in self.tags}
        target = batch.item
        select = mask is not None and target.device.type == "cpu"
        if select:
            target = target[mask]
            tags = {k: v[mask] for k, v in tags.items()}
        bounds = {}
        with exact_scores(target.device):
            for scorer in self.metrics:
                scores = score_output(output, scorer)
                if select:
                    scores = scores[mask]
                bounds[scorer] = rank_bounds(scores, target)
        self.add_bounds(bounds, tags, None if select else mask)

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
        self.flush()
        return {s: as_floats(m.compute()) for s, m in self.metrics.items()}


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
    start = time.perf_counter()
    pending: Tensor | None = None
    window_start: float | None = None
    try:
        for chunk in chunks:
            chunk = chunk.to(device)
            if not online:
                score_chunk(model, chunk, evaluator)
                continue
            if chunk.block:
                raise ValueError("block chunks are for frozen replays; online needs steps")
            with torch.enable_grad():
                model.begin_chunk(chunk)
                for s, step in enumerate(chunk.steps):
                    mask = chunk.scored[s] if chunk.scored is not None else None
                    output = model(step)
                    with torch.no_grad():
                        evaluator.update(output, step, mask)
                    if output.loss is not None:
                        pending = output.loss if pending is None else pending + output.loss
                for extra in model.chunk_losses().values():
                    pending = extra if pending is None else pending + extra
            model.end_chunk(chunk)
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
    seconds = time.perf_counter() - start
    return StreamResult(evaluator.compute(), evaluator.count, seconds)


@torch.no_grad()
def _rank_block(model: InteractionModel, chunk: Chunk, evaluator: StreamEvaluator) -> None:
    """Replay a block chunk's t-batches, then rank all its interactions at once."""
    scorers = tuple(evaluator.metrics)
    if not set(scorers) <= set(model.block_scorers):
        raise ValueError(f"{type(model).__name__} cannot rank blocks with {', '.join(scorers)}")
    ranker = BlockRanker(scorers, model.candidate_table(), model.block_queries)
    model.begin_chunk(chunk)
    for step in chunk.steps:
        ranker.add(model(step))
    model.end_chunk(chunk)
    with exact_scores(chunk.steps[0].item.device):
        evaluator.add_bounds(*ranker.rank(chunk))


@torch.no_grad()
def score_chunk(model: InteractionModel, chunk: Chunk, evaluator: StreamEvaluator) -> None:
    """Frozen replay of one chunk: ranked as a block, or step by step."""
    if chunk.block:
        _rank_block(model, chunk, evaluator)
        return
    model.begin_chunk(chunk)
    for s, step in enumerate(chunk.steps):
        mask = chunk.scored[s] if chunk.scored is not None else None
        evaluator.update(model(step), step, mask)
    model.end_chunk(chunk)


def can_rank_blocks(model: InteractionModel, scorer: str, mode: str) -> bool:
    """Whether a frozen replay may use block chunks for every scorer it will try."""
    scorers = model.scorers if scorer == "auto" else (scorer,)
    return (
        mode == "frozen" and bool(model.block_scorers) and set(scorers) <= set(model.block_scorers)
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
) -> dict:
    """Validation then test, memory carried; the scorer picked on validation MRR.

    `baselines` maps a name to (model already fed the training stream, val chunks, test
    chunks); they are replayed on the same splits so every number stands beside them.
    Returns flat metric keys (`val/mrr`, `test/recall@10`, `test/mrr/repeat`,
    `test/recency/mrr`, ...) plus `scorer`, `ties`, `mode` and throughput.
    """
    if mode not in MODES:
        raise ConfigError(f"eval.mode={mode!r} is unknown; use frozen or online")
    if mode == "online" and (online_step is None or not model.learned):
        mode = "frozen"  # nothing to learn: online and frozen coincide
    candidates = list(model.scorers)
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
        StreamEvaluator(candidates, ties, device=device),
        device,
        step,
        online_window,
    )
    chosen = max(candidates, key=lambda s: (val.metrics[s]["mrr"], -candidates.index(s)))
    test = run_stream(
        model,
        test_chunks(),
        StreamEvaluator([chosen], ties, device=device),
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
    out["baselines"] = list(baselines or {})
    for name, (baseline, b_val, b_test) in (baselines or {}).items():
        b_scorer = baseline.scorers[0]
        for split, chunks in (("val", b_val), ("test", b_test)):
            res = run_stream(
                baseline, chunks(), StreamEvaluator([b_scorer], ties, device=device), device
            )
            out.update(_prefixed(f"{split}/{name}", res.metrics[b_scorer]))
    return out
