"""Generated interaction streams shaped like the JODIE benchmarks.

Only Wikipedia ships with the package; Reddit and LastFM must be downloaded. Tests and
benchmarks still need streams of their size and, above all, of their repeat structure:
how often a user returns to an earlier item (88% of interactions on all three) and how
often to exactly the previous one (79% on Wikipedia, 11% on LastFM). That structure
decides which models and heuristics win, so the generator hits both rates by design.

How a stream is made (all vectorised):
- users get Zipf-like activity, every user at least one interaction; their events are
  spread over `duration` in random order;
- each of a user's events is `new` (an item the user has not had, drawn from item
  popularity that drifts over time), `last` (the previous item again) or `earlier`
  (an earlier item other than the previous one, recent ones favoured);
- the event kinds are drawn with the probabilities that give the target rates, then
  items are resolved by following each event's pointer back to its `new` ancestor.

Catalogue shapes (`CATALOGUES`: `ml20m`, `amazon`) are the other kind of data: large
catalogues, no (user, item) pair twice, long-tailed popularity, for scale work. They are
made by `generate_catalogue`, with memory linear in the number of events.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

from tempint.errors import ConfigError

__all__ = [
    "SHAPES",
    "generate_shape",
    "generate_stream",
    "last_item_rate",
    "repeat_rate",
    "to_jodie_csv",
    "generate_ratings",
    "CATALOGUES",
    "generate_catalogue",
]

_DAY = 86_400.0

# Sizes of the real datasets (JODIE paper); repeat = 1 - unique edges / interactions.
# Measured on the real files: Wikipedia repeat 0.884, last 0.791; LastFM last 0.114 on
# its first 108,501 rows. Reddit's last-item rate was not measured: 0.6 is an assumption
# (between the two, as a forum user often posts in the same community again).
SHAPES: dict[str, dict] = {
    "wikipedia": dict(
        num_users=8_227,
        num_items=1_000,
        num_interactions=157_474,
        repeat_prob=0.884,
        last_item_prob=0.791,
        user_activity_alpha=1.0,
        item_popularity_alpha=0.6,
        popularity_drift=1.0,
        duration=31 * _DAY,
    ),
    "reddit": dict(
        num_users=10_000,
        num_items=1_000,
        num_interactions=672_447,
        repeat_prob=1 - 78_516 / 672_447,
        last_item_prob=0.6,
        user_activity_alpha=0.8,
        item_popularity_alpha=0.8,
        popularity_drift=1.0,
        duration=31 * _DAY,
    ),
    "lastfm": dict(
        num_users=1_000,
        num_items=1_000,
        num_interactions=1_293_103,
        repeat_prob=1 - 154_993 / 1_293_103,
        last_item_prob=0.114,
        user_activity_alpha=0.3,
        item_popularity_alpha=0.6,
        popularity_drift=1.0,
        duration=4 * 365 * _DAY,
    ),
    "tiny": dict(
        num_users=20,
        num_items=10,
        num_interactions=400,
        repeat_prob=0.8,
        last_item_prob=0.4,
        user_activity_alpha=0.5,
        item_popularity_alpha=0.5,
        popularity_drift=0.5,
        duration=_DAY,
    ),
}

# Large-catalogue look-alikes, every (user, item) pair at most once. `per_user_min` and
# the log-normal spread of the rest (`activity_sigma`) shape the history lengths;
# `scale_items`: whether `scale` shrinks the catalogue too.
# ML-20M (GroupLens): every user has >= 20 ratings, mean 144, median 68, max 9,254.
# Amazon reviews (a category of the 2018 release): most users review 1 to 3 products.
CATALOGUES: dict[str, dict] = {
    "ml20m": dict(
        num_users=138_493,
        num_items=26_744,
        num_interactions=20_000_263,
        per_user_min=20,
        activity_sigma=1.4,
        item_popularity_alpha=0.6,
        duration=20 * 365 * _DAY,
        session_days=30.0,
        scale_items=False,
    ),
    "amazon": dict(
        num_users=1_000_000,
        num_items=250_000,
        num_interactions=2_000_000,
        per_user_min=1,
        activity_sigma=1.5,
        item_popularity_alpha=0.8,
        duration=5 * 365 * _DAY,
        session_days=180.0,
        scale_items=True,
    ),
}

_SEGMENTS = 32  # popularity changes step-wise over this many time segments
_DEDUP_ROUNDS = 12
_EXCLUDE_ROUNDS = 8
_CORRECTIONS = 2  # regenerations with corrected probabilities
_TOLERANCE = 0.003  # on the repeat and last-item rates


def generate_stream(
    num_users: int,
    num_items: int,
    num_interactions: int,
    *,
    repeat_prob: float,
    last_item_prob: float | None = None,
    seed: int = 0,
    user_activity_alpha: float = 0.6,
    item_popularity_alpha: float = 0.8,
    popularity_drift: float = 1.0,
    recency_scale: float = 10.0,
    state_label_prob: float = 0.0,
    duration: float = 30 * _DAY,
) -> pl.DataFrame:
    """A seeded stream with the columns of an event log, sorted by timestamp.

    `repeat_prob`: share of interactions whose (user, item) pair occurred before.
    `last_item_prob`: share repeating exactly the user's previous item (None: whatever
    recency-favouring repeats give). Activity and popularity follow (rank)^-alpha;
    `popularity_drift` is the standard deviation of each item's log-popularity change
    over the whole stream; `recency_scale` the mean distance, in the user's own events,
    of an `earlier` repeat. Timestamps are whole seconds in [0, duration).
    Rates are hit to within a few tenths of a percent unless impossible (a user with
    more `new` events than there are items must repeat).
    """
    _check(num_users, num_items, num_interactions, repeat_prob, last_item_prob)

    def make(rep: float, last: float | None) -> tuple[pl.DataFrame, float, float]:
        return _generate(
            num_users,
            num_items,
            num_interactions,
            rep,
            last,
            seed,
            user_activity_alpha,
            item_popularity_alpha,
            popularity_drift,
            recency_scale,
            state_label_prob,
            duration,
        )

    # Collisions the construction cannot avoid shift the rates a little: correct from
    # the measured rates, with the same seed so that the result stays deterministic.
    rep, last = repeat_prob, last_item_prob
    best, best_error = None, np.inf
    for _ in range(_CORRECTIONS + 1):
        frame, got_rep, got_last = make(rep, last)
        miss_rep = repeat_prob - got_rep
        miss_last = 0.0 if last is None else last_item_prob - got_last
        error = max(abs(miss_rep), abs(miss_last))
        if error < best_error:
            best, best_error = frame, error
        if error <= _TOLERANCE:
            break
        rep = float(np.clip(rep + miss_rep, 0.0, 0.999))
        if last is not None:
            last = float(np.clip(last + miss_last, 0.0, rep))
    return best


def generate_shape(name: str, scale: float = 1.0, seed: int = 0) -> pl.DataFrame:
    """A stream shaped like a known dataset; `scale` shrinks users and interactions.

    Items stay as in the real data and so does each user's mean history length, so a
    scaled stream keeps the repeat structure of the full one.
    """
    if name not in SHAPES and name not in CATALOGUES:
        known = ", ".join(sorted([*SHAPES, *CATALOGUES]))
        raise ConfigError(f"shape {name!r} is not known; known: {known}")
    if not scale > 0:
        raise ConfigError(f"scale={scale!r} must be positive")
    if name in CATALOGUES:
        params = dict(CATALOGUES[name])
        for key in ("num_users", "num_interactions") + (
            ("num_items",) if params.pop("scale_items") else ()
        ):
            params[key] = max(1, round(params[key] * scale))
        return generate_catalogue(**params, seed=seed)
    params = dict(SHAPES[name])
    params["num_users"] = max(1, round(params["num_users"] * scale))
    params["num_interactions"] = max(1, round(params["num_interactions"] * scale))
    return generate_stream(**params, seed=seed)


def repeat_rate(frame: pl.DataFrame) -> float:
    """Share of interactions whose (user, item) pair occurred earlier in the frame."""
    unique = frame.select(pl.struct("user_id", "item_id").n_unique()).item()
    return 1.0 - unique / frame.height


def last_item_rate(frame: pl.DataFrame) -> float:
    """Share of interactions with the same item as the user's previous interaction.

    Rows are taken in frame order (time order for an event log); the denominator is
    every interaction, as in the statistics of the real datasets.
    """
    same = pl.col("item_id") == pl.col("item_id").shift(1).over("user_id")
    return frame.select(same.fill_null(False).mean()).item()


def generate_ratings(
    num_users: int = 600,
    num_items: int = 3000,
    per_user: int = 40,
    num_genres: int = 12,
    taste: float = 0.85,
    seed: int = 0,
    duration: float = 365 * _DAY,
) -> pl.DataFrame:
    """A MovieLens-style log: many items, each user rates distinct items, never repeating.

    Items belong to genres; a user has a favourite genre and draws a share `taste` of
    its items from it (by popularity), the rest from the whole catalogue. With no repeats
    recency cannot help; popularity is the heuristic to beat, and a model that learns
    a user's genre from its first items can. Users arrive spread over `duration`, each
    rating its items over a few days. Columns: userId, movieId, rating, timestamp (the
    names of MovieLens's ratings.csv).
    """
    if min(num_users, num_items, per_user, num_genres) < 1 or per_user > num_items:
        raise ConfigError("generate_ratings needs positive sizes and per_user <= num_items")
    rng = np.random.default_rng(seed)
    genre = rng.integers(0, num_genres, num_items)
    popularity = _zipf(rng, num_items, 0.9)
    favourite = rng.integers(0, num_genres, num_users)
    counts = np.maximum(1, rng.poisson(per_user, num_users)).clip(max=num_items)
    users, items = [], []
    for u in range(num_users):
        weight = popularity * np.where(genre == favourite[u], taste, 1.0 - taste)
        weight = weight / weight.sum()
        chosen = rng.choice(num_items, size=int(counts[u]), replace=False, p=weight)
        users.append(np.full(len(chosen), u))
        items.append(chosen)
    users = np.concatenate(users)
    items = np.concatenate(items)
    arrival = rng.uniform(0, duration - 5 * _DAY, num_users)
    t = np.floor(arrival[users] + rng.uniform(0, 5 * _DAY, len(users))).astype(np.int64)
    order = np.argsort(t, kind="stable")
    return pl.DataFrame(
        {
            "userId": users[order] + 1,
            "movieId": items[order] + 1,
            "rating": rng.integers(1, 6, len(users)).astype(np.float64),
            "timestamp": t[order],
        }
    )


def generate_catalogue(
    num_users: int,
    num_items: int,
    num_interactions: int,
    *,
    per_user_min: int = 1,
    activity_sigma: float = 1.4,
    item_popularity_alpha: float = 0.8,
    duration: float = 365 * _DAY,
    session_days: float = 30.0,
    seed: int = 0,
) -> pl.DataFrame:
    """A seeded event log over a large catalogue with no (user, item) pair twice.

    Every user has at least `per_user_min` events (fewer only where events run out) and
    a log-normal share of the rest, at most a third of the catalogue; every item occurs
    at least once when there are events enough. Items follow Zipf-like popularity
    ((rank)^-alpha); a user arrives at a uniform time and spreads its events over an
    exponential span of mean `session_days`. Memory is a few arrays of 8 bytes per
    event: 20M events in about 1.5 GiB. Columns and order as `generate_stream`.
    """
    _check(num_users, num_items, num_interactions, 0.0, None)
    cap = max(1, num_items // 3)
    if num_interactions > num_users * min(cap, num_items):
        raise ConfigError(
            f"{num_interactions:,} interactions cannot be spread over {num_users:,} users "
            f"without a pair twice (at most {min(cap, num_items):,} items each)"
        )
    rng = np.random.default_rng(seed)
    counts = _history_lengths(rng, num_users, num_interactions, per_user_min, activity_sigma, cap)
    user = np.repeat(np.arange(num_users, dtype=np.int64), counts)  # user-major
    cdf = np.cumsum(_zipf(rng, num_items, item_popularity_alpha))
    cdf /= cdf[-1]
    item = _distinct_per_user(rng, user, cdf, num_items)
    item = _cover_items(rng, item, num_items)
    # times: user-major, then one sort into time order
    arrival = rng.uniform(0.0, duration, num_users)
    span = np.minimum(rng.exponential(session_days * _DAY, num_users), duration - arrival)
    t = np.floor(np.repeat(arrival, counts) + rng.random(user.size) * np.repeat(span, counts))
    order = np.argsort(t, kind="stable")
    return pl.DataFrame(
        {
            "user_id": pl.Series(user[order], dtype=pl.Int64),
            "item_id": pl.Series(item[order], dtype=pl.Int64),
            "timestamp": pl.Series(t[order], dtype=pl.Float64),
            "state_label": pl.Series(np.zeros(user.size, dtype=np.int8), dtype=pl.Int8),
        }
    )


def _history_lengths(
    rng: np.random.Generator, num_users: int, n: int, minimum: int, sigma: float, cap: int
) -> np.ndarray:
    """Events per user summing to n: `minimum` each, the rest log-normal, none above cap."""
    base = min(minimum, n // num_users)
    counts = np.full(num_users, base, dtype=np.int64)
    counts[rng.permutation(num_users)[: n - base * num_users if base < minimum else 0]] += 1
    weights = rng.lognormal(0.0, sigma, num_users)
    rest = n - int(counts.sum())
    while rest > 0:
        room = np.flatnonzero(counts < cap)
        share = weights[room] / weights[room].sum()
        counts[room] += rng.multinomial(rest, share)
        over = np.maximum(counts - cap, 0)
        counts -= over
        rest = int(over.sum())
    return counts


_DISTINCT_ROUNDS = 64


def _distinct_per_user(
    rng: np.random.Generator, user: np.ndarray, cdf: np.ndarray, num_items: int
) -> np.ndarray:
    """One item per event from the popularity `cdf`, no item twice for a user.

    All items are drawn at once, then only the clashing events are drawn again, checked
    against the sorted keys (user * items + item) kept so far: each round costs the
    clashes, not the stream. Later rounds draw uniformly: a heavy user may already hold
    every popular item.
    """
    # the first draw as exact counts per item, shuffled: far faster than a search per event
    counts = rng.multinomial(user.size, np.diff(cdf, prepend=0.0).clip(min=0.0))
    item = np.repeat(np.arange(num_items, dtype=np.int64), counts)
    rng.shuffle(item)
    key = user * num_items + item
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    del key
    clash = np.empty(sorted_key.size, dtype=bool)
    clash[0] = False
    np.equal(sorted_key[1:], sorted_key[:-1], out=clash[1:])
    redo = order[clash]
    kept = sorted_key[~clash]
    del order, sorted_key, clash
    for round_ in range(_DISTINCT_ROUNDS):
        if redo.size == 0:
            return item
        if round_ < 4:
            fresh = np.searchsorted(cdf, rng.random(redo.size), side="right")
            fresh = fresh.clip(max=num_items - 1)
        else:
            fresh = rng.integers(0, num_items, redo.size)
        key = user[redo] * num_items + fresh
        at = np.searchsorted(kept, key).clip(max=kept.size - 1)
        taken = kept[at] == key
        _, first = np.unique(key, return_index=True)
        ok = np.zeros(redo.size, dtype=bool)
        ok[first] = True
        ok &= ~taken
        item[redo[ok]] = fresh[ok]
        new_keys = np.sort(key[ok])
        kept = np.insert(kept, np.searchsorted(kept, new_keys), new_keys)
        redo = redo[~ok]
    raise ConfigError(
        f"could not give {redo.size:,} events an item new to their user; "
        "use fewer interactions or more items"
    )


def to_jodie_csv(
    frame: pl.DataFrame, path: str | os.PathLike, num_features: int = 0, seed: int = 0
) -> Path:
    """Write the original JODIE CSV layout: its five-name header, then 4 + k fields a row.

    The k features are random float32 values with four decimals, so that they read back
    exactly.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    out = frame.select(
        pl.col("user_id").cast(pl.Int64),
        pl.col("item_id").cast(pl.Int64),
        pl.col("timestamp").cast(pl.Float64),
        pl.col("state_label").cast(pl.Int8),
    )
    if num_features:
        values = rng.standard_normal((frame.height, num_features)).round(4).astype(np.float32)
        out = out.hstack(pl.DataFrame(values, schema=[f"f{i}" for i in range(num_features)]))
    with path.open("wb") as f:
        f.write(b"user_id,item_id,timestamp,state_label,comma_separated_list_of_features\n")
        out.write_csv(f, include_header=False)
    return path


# ----------------------------------------------------------------------------- internals


def _check(
    num_users: int,
    num_items: int,
    num_interactions: int,
    repeat_prob: float,
    last_item_prob: float | None,
) -> None:
    for name, value in (
        ("num_users", num_users),
        ("num_items", num_items),
        ("num_interactions", num_interactions),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ConfigError(f"{name}={value!r} must be a positive integer")
    if not 0.0 <= repeat_prob < 1.0:
        raise ConfigError(f"repeat_prob={repeat_prob!r} must be in [0, 1)")
    if last_item_prob is not None and not 0.0 <= last_item_prob <= repeat_prob:
        raise ConfigError(
            f"last_item_prob={last_item_prob!r} must be in [0, repeat_prob={repeat_prob}]: "
            "repeating the last item is one kind of repeat"
        )


def _zipf(rng: np.random.Generator, n: int, alpha: float) -> np.ndarray:
    """Weights (rank)^-alpha over a random permutation of ids, so id order means nothing."""
    weights = (rng.permutation(n) + 1.0) ** -float(alpha)
    return weights / weights.sum()


def _generate(
    num_users: int,
    num_items: int,
    num_interactions: int,
    repeat_prob: float,
    last_item_prob: float | None,
    seed: int,
    user_alpha: float,
    item_alpha: float,
    drift: float,
    recency_scale: float,
    label_prob: float,
    duration: float,
) -> tuple[pl.DataFrame, float, float]:
    """The stream and its measured repeat and last-item rates."""
    rng = np.random.default_rng(seed)
    n = int(num_interactions)
    # Who acts when: per-user counts, shuffled over sorted times.
    weights = _zipf(rng, num_users, user_alpha)
    if n >= num_users:
        counts = 1 + rng.multinomial(n - num_users, weights)
    else:
        counts = rng.multinomial(n, weights)
    # Sorted uniform times without a sort: normalised sums of exponential gaps.
    gaps = np.cumsum(rng.exponential(1.0, n + 1))
    t = np.floor(gaps[:n] / gaps[-1] * duration)
    user = rng.permutation(np.repeat(np.arange(num_users), counts))

    # User-major view: each user's events contiguous and in time order (a small
    # integer type lets numpy's stable sort use radix sort).
    narrow = np.int16 if num_users <= np.iinfo(np.int16).max else np.int32
    order = np.argsort(user.astype(narrow), kind="stable")
    first = np.repeat(np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    pos = np.arange(n)
    k = pos - first  # index of the event in its user's history

    kind = _kinds(rng, k, n, repeat_prob, last_item_prob)
    geo_p = 1.0 / max(float(recency_scale), 1.0)
    ptr = pos.copy()
    ptr[kind == _LAST] = pos[kind == _LAST] - 1
    earlier = np.flatnonzero(kind == _EARLIER)
    # With no last-item target, a repeat may land on the previous event (offset 0).
    start = 1 if last_item_prob is not None else 0
    ptr[earlier] = _back(rng, earlier, first[earlier], geo_p, start)
    root = _resolve(ptr)
    if last_item_prob is not None:
        # An `earlier` repeat must differ from the previous item, else it is a `last`.
        for round_ in range(_EXCLUDE_ROUNDS):
            clash = earlier[root[earlier] == root[earlier - 1]]
            if clash.size <= n // 10_000:  # what is left cannot move the rates
                break
            scale = geo_p / 2 ** (round_ + 1)
            ptr[clash] = _back(rng, clash, first[clash], scale, 1)
            root = _resolve(ptr)

    # Items of `new` events: drifting popularity, distinct within each user.
    roots = np.flatnonzero(ptr == pos)
    segment = np.minimum((t[order[roots]] / duration * _SEGMENTS).astype(np.int64), _SEGMENTS - 1)
    cdf = _popularity_cdf(rng, num_items, item_alpha, drift)
    items = _sample(rng, cdf, segment)
    root_user = user[order[roots]]
    for round_ in range(_DEDUP_ROUNDS):
        key = root_user * num_items + items
        _, keep = np.unique(key, return_index=True)
        dup = np.ones(roots.size, dtype=bool)
        dup[keep] = False
        dup = np.flatnonzero(dup)
        if dup.size == 0:
            break
        if round_ < _DEDUP_ROUNDS // 2:
            items[dup] = _sample(rng, cdf, segment[dup])
        else:  # users who hold the popular items already: try the whole catalogue
            items[dup] = rng.integers(0, num_items, dup.size)
    items = _cover_items(rng, items, num_items)

    item_of = np.empty(n, dtype=np.int64)
    item_of[roots] = items
    item_um = item_of[root]
    item = np.empty(n, dtype=np.int64)
    item[order] = item_um
    label = (rng.random(n) < label_prob).astype(np.int8)
    # The rates as `repeat_rate` / `last_item_rate` measure them, from the user-major view:
    # every event copies the item of one of its user's `new` events.
    keys = np.sort(root_user * num_items + items)
    distinct = 1 + np.count_nonzero(keys[1:] != keys[:-1])
    same_as_last = np.count_nonzero((k[1:] >= 1) & (item_um[1:] == item_um[:-1]))
    frame = pl.DataFrame(
        {
            "user_id": pl.Series(user, dtype=pl.Int64),
            "item_id": pl.Series(item, dtype=pl.Int64),
            "timestamp": pl.Series(t, dtype=pl.Float64),
            "state_label": pl.Series(label, dtype=pl.Int8),
        }
    )
    return frame, 1.0 - distinct / n, same_as_last / n


_NEW, _LAST, _EARLIER = 0, 1, 2


def _kinds(
    rng: np.random.Generator,
    k: np.ndarray,
    n: int,
    repeat_prob: float,
    last_item_prob: float | None,
) -> np.ndarray:
    """Event kinds with probabilities scaled so the shares over all n events hit targets.

    A user's first event is always new and the second cannot be an `earlier` repeat, so
    the other events carry those shares.
    """
    u = rng.random(n)
    kind = np.full(n, _NEW, dtype=np.int8)
    has_prev = k >= 1
    if last_item_prob is None:
        p_rep = min(1.0, repeat_prob * n / max(int(has_prev.sum()), 1))
        kind[has_prev & (u < p_rep)] = _EARLIER
        return kind
    p_last = min(1.0, last_item_prob * n / max(int(has_prev.sum()), 1))
    p_earlier = (repeat_prob - last_item_prob) * n / max(int((k >= 2).sum()), 1)
    p_earlier = min(p_earlier, 1.0 - p_last)
    kind[has_prev & (u < p_last)] = _LAST
    kind[(k >= 2) & (u >= p_last) & (u < p_last + p_earlier)] = _EARLIER
    return kind


def _back(
    rng: np.random.Generator, at: np.ndarray, first: np.ndarray, p: float, start: int
) -> np.ndarray:
    """Earlier positions at a geometric distance (>= start + 1 back), kept in the user."""
    offset = rng.geometric(p, at.size) - 1 + start
    return np.maximum(at - 1 - offset, first)


def _resolve(ptr: np.ndarray) -> np.ndarray:
    """The `new` ancestor of every event, by pointer doubling (pointers go back in time)."""
    root = ptr
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


def _popularity_cdf(
    rng: np.random.Generator, num_items: int, alpha: float, drift: float
) -> np.ndarray:
    """[S, I] cumulative popularity per time segment: Zipf base plus a random walk."""
    base = np.log(_zipf(rng, num_items, alpha))
    steps = rng.normal(0.0, drift / np.sqrt(_SEGMENTS), (_SEGMENTS, num_items))
    logits = base + np.cumsum(steps, axis=0)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(weights, axis=1)
    return cdf / cdf[:, -1:]


def _sample(rng: np.random.Generator, cdf: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """One item per event from its segment's popularity (inverse CDF, all rows at once)."""
    num_segments, num_items = cdf.shape
    flat = (cdf + np.arange(num_segments)[:, None]).ravel()
    hit = np.searchsorted(flat, segment + rng.random(segment.size), side="right")
    return np.clip(hit - segment * num_items, 0, num_items - 1)


def _cover_items(rng: np.random.Generator, items: np.ndarray, num_items: int) -> np.ndarray:
    """Give every unused item to a `new` event whose item occurs elsewhere too.

    Unused items belong to no user yet, so this cannot create a repeat.
    """
    counts = np.bincount(items, minlength=num_items)
    missing = np.flatnonzero(counts == 0)
    if missing.size == 0:
        return items
    by_item = np.argsort(items, kind="stable")
    first_of_item = np.concatenate(([True], items[by_item][1:] != items[by_item][:-1]))
    spare = by_item[~first_of_item]
    take = min(missing.size, spare.size)
    if take:
        items = items.copy()
        items[rng.choice(spare, take, replace=False)] = rng.permutation(missing)[:take]
    return items
