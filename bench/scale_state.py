"""Heuristics on a real-catalogue-sized stream: state built from events, ranking bounded.

`python bench/scale_state.py` builds a stream of 2M interactions between 10^6 users and
10^5 items (most users with one to three interactions, long-tailed items), feeds the
first 80 % to `recency` and `popularity`, then ranks an evaluated slice against all
items in exact steps of at most `max_scores // items` rows, and prints seconds and peak
resident memory. A users × items table would be 10^11 entries; nothing here is.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tempint.data.batch import Chunk, Interactions  # noqa: E402
from tempint.data.datamodule import MAX_SCORES_PER_BLOCK  # noqa: E402
from tempint.data.samplers import exact_segments  # noqa: E402
from tempint.eval.protocol import StreamEvaluator, run_stream  # noqa: E402
from tempint.models.heuristics import Popularity, Recency  # noqa: E402


def make_stream(users: int, items: int, events: int, seed: int = 0) -> Interactions:
    """A time-sorted stream: users uniform (two interactions each on average, as on
    Amazon reviews), items long-tailed (density ∝ 1/√rank)."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, events)
    item = (items * rng.random(events) ** 2).astype(np.int64)
    t = np.sort(rng.uniform(0.0, 3.0e7, events))
    n = events
    return Interactions(
        user=torch.from_numpy(user.astype(np.int64)),
        item=torch.from_numpy(item.astype(np.int64)),
        t=torch.from_numpy(t),
        state_label=torch.zeros(n, dtype=torch.long),
        delta_user=torch.zeros(n),
        delta_item=torch.zeros(n),
        prev_item=torch.full((n,), -1, dtype=torch.long),
        cyclic=torch.zeros(n, 4),
        index=torch.arange(n),
    )


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10**6)
    parser.add_argument("--items", type=int, default=10**5)
    parser.add_argument("--events", type=int, default=2 * 10**6)
    parser.add_argument("--evaluated", type=int, default=100_000, help="interactions ranked")
    parser.add_argument("--max-scores", type=int, default=MAX_SCORES_PER_BLOCK)
    parser.add_argument("--models", nargs="+", default=["recency", "popularity"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    stream = make_stream(args.users, args.items, args.events)
    print(f"stream: {args.events:,} events in {time.perf_counter() - start:.1f} s")
    train_end = int(0.8 * args.events)
    rows = max(1, args.max_scores // args.items)
    users, items = stream.user.numpy(), stream.item.numpy()
    plans = exact_segments(users, items, train_end, train_end + args.evaluated, rows)
    print(f"evaluation: {args.evaluated:,} interactions in {len(plans):,} steps of <= {rows}")
    models = {"recency": Recency, "popularity": Popularity}
    for name in args.models:
        begin = time.perf_counter()
        model = models[name](args.users, args.items)
        model.train()
        with torch.no_grad():
            for lo in range(0, train_end, 200_000):
                part = stream.select(torch.arange(lo, min(lo + 200_000, train_end)))
                model.train_chunk(Chunk(steps=[part]))
        fed = time.perf_counter() - begin
        chunks = (Chunk(steps=[stream.select(torch.from_numpy(p.steps[0]))]) for p in plans)
        result = run_stream(model, chunks, StreamEvaluator(["native"], tags=()))
        state = sum(b.numel() * b.element_size() for b in model.buffers()) / 2**20
        print(
            f"{name}: fed {train_end:,} in {fed:.1f} s; ranked {result.count:,} in "
            f"{result.seconds:.1f} s ({result.count / result.seconds:,.0f}/s), "
            f"MRR {result.metrics['native']['mrr']:.4f}; state {state:.0f} MiB; "
            f"peak RSS {peak_rss_gib():.2f} GiB"
        )


if __name__ == "__main__":
    main()
