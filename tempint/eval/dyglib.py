"""DyGLib's negative pairs (Yu et al. 2023, `utils/utils.py::NegativeEdgeSampler`).

One negative (user, item) pair per positive, drawn per evaluation batch of consecutive
interactions, three ways:

- random: the positive's user with an item drawn uniformly from every item of the stream
  (`RandomState(seed).randint`, a source drawn and dropped before it, as DyGLib does, so
  the same seed and batches give its draws);
- historical: pairs seen from the stream's start up to the batch's first timestamp and
  not in the batch (times [batch start, batch end]); topped up with random pairs of any
  user and item that are not in the batch when there are too few;
- inductive: those historical pairs not yet seen by the end of the previous split.

Seeds are DyGLib's: 0 for validation, 2 for test, one generator per strategy and split,
used batch after batch. DyGLib draws from Python sets, whose order depends on hashing;
here candidates are sorted by (user, item) before the draw, so the rule is DyGLib's and
the draws are reproducible, but historical and inductive draws are not DyGLib's own.
State is one sorted array of the distinct pairs with their first time: linear in pairs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["STRATEGIES", "SEEDS", "dyglib_negatives"]

STRATEGIES = ("random", "historical", "inductive")
SEEDS = {"val": 0, "test": 2}


def dyglib_negatives(
    users: np.ndarray,
    items: np.ndarray,
    t: np.ndarray,
    rows: range,
    last_observed_time: float,
    strategy: str,
    seed: int,
    batch_size: int = 200,
) -> tuple[np.ndarray, np.ndarray]:
    """Negative users and items [len(rows)] for the interactions of `rows`, in order."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown negative strategy {strategy!r}; use {', '.join(STRATEGIES)}")
    rng = np.random.RandomState(seed)
    num_items = int(items.max()) + 1
    all_users = np.unique(users)
    all_items = np.unique(items)
    width = np.int64(num_items)
    keys = users.astype(np.int64) * width + items
    # each distinct pair and the time it first occurred (rows are in time order)
    pair_keys, first = np.unique(keys, return_index=True)
    first_t = t[first]
    observed = first_t <= last_observed_time
    out_u = np.empty(len(rows), dtype=np.int64)
    out_i = np.empty(len(rows), dtype=np.int64)
    for lo in range(rows.start, rows.stop, batch_size):
        hi = min(lo + batch_size, rows.stop)
        size = hi - lo
        if strategy == "random":
            # DyGLib draws a source too, then keeps the positive's: the same two draws
            rng.randint(0, len(all_users), size)
            neg_u = users[lo:hi]
            neg_i = all_items[rng.randint(0, len(all_items), size)]
        else:
            start_t, end_t = t[lo], t[hi - 1]
            a = np.searchsorted(t, start_t, side="left")
            b = np.searchsorted(t, end_t, side="right")
            in_batch = np.unique(keys[a:b])  # pairs with a time in [start, end]
            candidates = (first_t <= start_t) & ~np.isin(pair_keys, in_batch)
            if strategy == "inductive":
                candidates &= ~observed
            pool = pair_keys[candidates]
            if size > len(pool):
                extra = _random_pairs(rng, size - len(pool), all_users, all_items, in_batch, width)
                chosen = np.concatenate([extra, pool])
            else:
                chosen = pool[rng.choice(len(pool), size=size, replace=False)]
            neg_u, neg_i = chosen // width, chosen % width
        out_u[lo - rows.start : hi - rows.start] = neg_u
        out_i[lo - rows.start : hi - rows.start] = neg_i
    return out_u, out_i


def _random_pairs(rng, size, all_users, all_items, exclude, width) -> np.ndarray:
    """`size` distinct pairs drawn uniformly from users x items less `exclude` (keys),
    by rejection: the product is far larger than a batch."""
    chosen: list[np.ndarray] = []
    have = np.zeros(0, dtype=np.int64)
    while len(have) < size:
        u = all_users[rng.randint(0, len(all_users), size)]
        i = all_items[rng.randint(0, len(all_items), size)]
        draw = u.astype(np.int64) * width + i
        draw = draw[~np.isin(draw, exclude) & ~np.isin(draw, have)]
        _, first = np.unique(draw, return_index=True)
        draw = draw[np.sort(first)][: size - len(have)]
        chosen.append(draw)
        have = np.concatenate(chosen)
    return have
