"""DeePRed's published next-item evaluation, reproduced to explain its number.

Kefato et al. (WWW'21) report 0.885 MRR and 0.889 Recall@10 on Wikipedia. Their
evaluation script differs from tempint's protocol in every respect below, and this module
does each the way the script does, so the number can be rebuilt and taken apart:

- Label. The script reads the "true item" at position 4 of the collated batch, which is
  the item-history column, and its dataset fills that column with the *user's* window
  (the item side reads the user's neighbourhood too). The label it scores is therefore
  the oldest item in the user's window of `history` most recent items strictly earlier in
  time, within the split; the padding id when the window is empty (`EMPTY` here).
  `literal` scores that label; `corrected` scores the item of the interaction.
- Windows. Histories at evaluation come from the evaluated split alone (validation from
  validation, test from test, the pool's seed from training), with `history` = 100
  partners while the published model trained with 50.
- Candidates. Not the catalogue: a sliding pool of per-event embeddings. It starts as
  the last `pool_fraction` x N_train entries of the training events grouped by item
  (items in order of first appearance, each item's events in time order), labelled with
  their items; after each evaluated event its embedding is appended with the event's
  label (the literal one under `literal`: the script appends the same variable it scores)
  and the oldest entry leaves. Entries of one item are not merged: a rank counts entries.
- Query. The user's embedding from its previous evaluated event (validation and test are
  one pass), its long-term embedding E(u) before that.
- Score and metrics. Euclidean distance, top 10; MRR counts a rank beyond 10 as 0 and
  Recall@10 counts hits. The script never clears its lists between validation and test,
  so its "test" figure is the pooled validation + test one; `test` here is test alone.
- Embeddings. In the published code both sides of an event read the user's window and
  the co-attention is symmetric, so an event's item embedding *is* its user embedding:
  the query of a user's next event is exactly the pool entry its previous event added,
  at distance 0, labelled with that event's label. `official` reproduces that identity
  with tempint's DeePRed (query and candidate: the self-attention over the user's
  window); `model` uses the model as trained (query u(t), candidate i(t) from the item's
  own window).

Ties in distance are broken in the label's favour (rank = 1 + entries strictly closer than
the closest entry with the label); the script takes torch.topk's order, unspecified for
ties. Distances are the script's (it adds 1e-6 to each coordinate difference).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from tempint.data.batch import Interactions
from tempint.data.features import DeltaScale
from tempint.errors import ConfigError

__all__ = [
    "EMPTY",
    "LABELS",
    "EMBEDDINGS",
    "Windows",
    "windows_before",
    "literal_labels",
    "pool_seed",
    "pool_size",
    "previous_event",
    "pool_ranks",
    "script_ranks",
    "evaluated_events",
    "truncated_metrics",
    "evaluate_deepred_paper",
]

# The label of an event whose user window is empty: the script's padding id 0, which is
# no item (its ids start after the users'), yet matches pool entries appended with it.
EMPTY = -1
LABELS = ("literal", "corrected")
EMBEDDINGS = ("official", "model")
# Rows of the pool distance matrix computed together: [rows, pool + rows] floats.
_RANK_ROWS = 256
# Nearest entries ranked per event (the script keeps its top 10).
_DEPTH = 32
# The script's torch.nn.PairwiseDistance adds this to every coordinate difference.
_SCRIPT_EPS = 1e-6
# Events encoded together: bounds the [rows, k, k] alignments.
_ENCODE_ROWS = 1024


@dataclass(frozen=True)
class Windows:
    """Each row's owner's most recent partners strictly earlier in time, within a segment.

    partners [n, k] most recent first, -1 padded; gaps [n, k] raw seconds, 0 padded;
    count [n] how many earlier partners the owner had (may exceed k).
    """

    partners: np.ndarray
    gaps: np.ndarray
    count: np.ndarray


def windows_before(
    owner: np.ndarray,
    partner: np.ndarray,
    t: np.ndarray,
    k: int,
    rows: np.ndarray | None = None,
) -> Windows:
    """The published dataset's window: partners at times strictly before the row's time.

    `owner`, `partner`, `t` [n] are one segment in time order; only the segment is read,
    as the script builds each split's histories from that split's file. An owner's events
    at the row's own timestamp are not in its window (the script keeps `t < current`).
    `rows` restricts the output to those rows (all by default). O(n + rows·k), no loop.
    """
    n = int(owner.shape[0])
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    if n == 0 or k == 0:
        m = rows.shape[0]
        return Windows(np.full((m, k), -1, np.int64), np.zeros((m, k)), np.zeros(m, dtype=np.int64))
    order = np.argsort(owner, kind="stable")  # time order inside each owner
    owner_s, t_s, partner_s = owner[order], t[order], partner[order]
    position = np.arange(n)
    new_owner = np.ones(n, dtype=bool)
    new_owner[1:] = owner_s[1:] != owner_s[:-1]
    new_time = new_owner.copy()
    new_time[1:] |= t_s[1:] != t_s[:-1]
    owner_start = np.maximum.accumulate(np.where(new_owner, position, 0))
    time_start = np.maximum.accumulate(np.where(new_time, position, 0))
    where = np.empty(n, dtype=np.int64)
    where[order] = position  # sorted position of each row
    at = where[rows]
    count = time_start[at] - owner_start[at]
    back = np.arange(k)
    source = time_start[at][:, None] - 1 - back[None, :]  # most recent first
    valid = back[None, :] < count[:, None]
    source = np.where(valid, source, 0)
    partners = np.where(valid, partner_s[source], -1)
    gaps = np.where(valid, t_s[at][:, None] - t_s[source], 0.0)
    return Windows(partners.astype(np.int64), gaps, count.astype(np.int64))


def literal_labels(windows: Windows, k: int) -> np.ndarray:
    """The script's "true item": the oldest partner in the window of k, EMPTY if none."""
    count = windows.count
    last = np.minimum(count, k) - 1
    out = windows.partners[np.arange(count.shape[0]), np.clip(last, 0, None)]
    return np.where(count > 0, out, EMPTY).astype(np.int64)


def pool_size(num_train: int, fraction: float) -> int:
    """int(fraction x N_train) entries, as the script keeps; at least one is required."""
    size = int(num_train * fraction)
    if size < 1:
        raise ConfigError(
            f"deepred_paper.pool_fraction={fraction} keeps no candidate of {num_train} "
            "training events; raise it"
        )
    return size


def pool_seed(train_items: np.ndarray, size: int) -> np.ndarray:
    """Training positions of the pool's first entries, oldest entry first.

    The script lists training embeddings item by item (items in order of first
    appearance, each item's events in time order) and keeps the last `size`.
    """
    n = int(train_items.shape[0])
    first = np.full(int(train_items.max()) + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, train_items, np.arange(n))
    grouped = np.lexsort((np.arange(n), first[train_items]))
    return grouped[max(n - size, 0) :]


def previous_event(user: np.ndarray) -> np.ndarray:
    """Position of each row's user's previous row in the array, -1 for none."""
    n = int(user.shape[0])
    order = np.argsort(user, kind="stable")
    same = np.zeros(n, dtype=bool)
    same[1:] = user[order][1:] == user[order][:-1]
    previous = np.full(n, -1, dtype=np.int64)
    previous[order[1:][same[1:]]] = order[:-1][same[1:]]
    return previous


@torch.no_grad()
def pool_ranks(
    queries: Tensor,
    entries: Tensor,
    window: int,
    labelings: Sequence[tuple[Tensor, Tensor]],
    depth: int = _DEPTH,
    rows_per_block: int = _RANK_ROWS,
) -> list[Tensor]:
    """Rank [M] (float64) of each event's label in its sliding pool, inf beyond `depth`.

    `entries` [window + M, d] are the seed pool then one entry per event; event j is
    scored against entries [j, j + window) (its own entry comes after). Each labelling is
    (entry labels [window + M], event labels [M]); the distances are computed once for
    all. rank = 1 + #entries strictly closer than the closest entry with the label.

    As the script, only the nearest entries are ranked: the `depth` nearest by distance
    from matrix products (fast, float32), whose distances are then recomputed as the
    script's ||q - e + 1e-6|| (exact, so a query equal to an entry is nearest). A label
    with no entry among them gets inf; metrics truncated at k < depth are unaffected.
    """
    m = int(queries.shape[0])
    out = [torch.full((m,), math.inf, dtype=torch.float64) for _ in labelings]
    for lo in range(0, m, rows_per_block):
        hi = min(lo + rows_per_block, m)
        span = entries[lo : hi - 1 + window].float()
        query = queries[lo:hi].float()
        approx = torch.cdist(query, span, compute_mode="use_mm_for_euclid_dist")
        column = torch.arange(span.shape[0])[None, :]
        row = torch.arange(hi - lo)[:, None]
        inside = (column >= row) & (column < row + window)
        approx = approx.masked_fill(~inside, math.inf)
        near = approx.topk(min(depth, span.shape[0]), dim=1, largest=False).indices
        exact = (query[:, None, :] - span[near] + _SCRIPT_EPS).norm(dim=-1)
        exact = exact.masked_fill(~inside.gather(1, near), math.inf)
        for n, (entry_labels, event_labels) in enumerate(labelings):
            labels = entry_labels[lo : hi - 1 + window][near]
            match = (labels == event_labels[lo:hi, None]) & torch.isfinite(exact)
            best = exact.masked_fill(~match, math.inf).amin(1)
            closer = (exact < best[:, None]).sum(1)
            found = torch.isfinite(best)
            out[n][lo:hi] = torch.where(found, 1.0 + closer.double(), math.inf)
    return out


def truncated_metrics(rank: Tensor, k: int) -> dict[str, float]:
    """MRR with ranks beyond k counted as 0 (the script's top-k list), and Recall@k."""
    if rank.numel() == 0:
        return {f"mrr@{k}": float("nan"), f"recall@{k}": float("nan")}
    hit = rank <= k
    reciprocal = torch.where(hit, 1.0 / rank, torch.zeros_like(rank))
    return {f"mrr@{k}": float(reciprocal.mean()), f"recall@{k}": float(hit.double().mean())}


# ---- the model's embeddings --------------------------------------------------------------


def _gap_scale(user: np.ndarray, t: np.ndarray, train_end: int) -> DeltaScale:
    """The model's gap scale: user gaps' std over the training rows (as the data layer)."""
    users, times = user[:train_end], t[:train_end]
    order = np.argsort(users, kind="stable")
    gap = np.zeros(train_end)
    same = np.zeros(train_end, dtype=bool)
    same[1:] = users[order][1:] == users[order][:-1]
    gap[1:] = np.where(same[1:], np.diff(times[order]), 0.0)
    return DeltaScale(0.0, DeltaScale.fit(gap).std)


@dataclass
class _Segment:
    """One split's events with the script's windows, encoded by the model."""

    rows: np.ndarray  # positions in the stream
    user_windows: Windows
    literal: np.ndarray


def _segment(stream: Interactions, start: int, end: int, k: int, rows=None) -> _Segment:
    user = stream.user[start:end].numpy()
    item = stream.item[start:end].numpy()
    t = stream.t[start:end].numpy()
    local = np.arange(end - start) if rows is None else rows
    windows = windows_before(user, item, t, k, local)
    return _Segment(local + start, windows, literal_labels(windows, k))


@torch.no_grad()
def _encode(
    model, stream: Interactions, segment: _Segment, start: int, end: int, k: int, scale
) -> tuple[Tensor, Tensor, Tensor]:
    """u(t), i(t) and the self-attention over the user's window [n, d] of the segment's rows.

    The item side reads the item's own window (of the same segment); the model reads k
    partners of each.
    """
    device = model.embedding.weight.device
    local = segment.rows - start
    items = windows_before(
        stream.item[start:end].numpy(),
        stream.user[start:end].numpy(),
        stream.t[start:end].numpy(),
        k,
        local,
    )
    parts = []
    for lo in range(0, local.shape[0], _ENCODE_ROWS):
        part = slice(lo, lo + _ENCODE_ROWS)
        batch = replace(
            stream.select(torch.from_numpy(segment.rows[part])),
            user_history=torch.from_numpy(segment.user_windows.partners[part]),
            user_history_dt=torch.from_numpy(scale(segment.user_windows.gaps[part])),
            item_history=torch.from_numpy(items.partners[part]),
            item_history_dt=torch.from_numpy(scale(items.gaps[part])),
        )
        encoded = model.short_term(batch.to(device), history_k=k, every_history_query=True)
        parts.append(tuple(x.float().cpu() for x in encoded))
    return tuple(torch.cat(column) for column in zip(*parts))


def _check_model(model) -> None:
    if not (hasattr(model, "short_term") and hasattr(model, "embedding")):
        raise ConfigError(
            f"experiment=deepred_paper evaluates DeePRed's embeddings; "
            f"model {type(model).__name__} has none (use model=deepred)"
        )


def _check_options(labels: Iterable[str], embeddings: Iterable[str]) -> None:
    for name, given, known in (
        ("labels", labels, LABELS),
        ("embeddings", embeddings, EMBEDDINGS),
    ):
        unknown = [x for x in given if x not in known]
        if unknown:
            raise ConfigError(
                f"deepred_paper.{name}={unknown[0]!r} is unknown; use any of {', '.join(known)}"
            )


@dataclass
class EvaluatedEvents:
    """Validation + test events in time order: rows, users, items, literal labels, the
    position of the user's previous evaluated event (-1: none), test or not."""

    rows: np.ndarray
    user: np.ndarray
    item: np.ndarray
    literal: np.ndarray
    previous: np.ndarray
    is_test: np.ndarray


@torch.no_grad()
def _embedding_ranks(
    model,
    stream: Interactions,
    split,
    history: int,
    labels: Sequence[str],
    embeddings: Sequence[str],
    seed: _Segment,
    events: EvaluatedEvents,
    evaluated: Sequence[_Segment],
) -> dict[tuple[str, str], Tensor]:
    """Rank of every event's label, per (embeddings, label)."""
    scale = _gap_scale(stream.user.numpy(), stream.t.numpy(), split.train_end)
    was_training = model.training
    model.eval()
    try:
        seed_vectors = _encode(model, stream, seed, 0, split.train_end, history, scale)
        bounds = ((split.train_end, split.val_end), (split.val_end, split.num_interactions))
        event_vectors = [
            _encode(model, stream, segment, lo, hi, history, scale)
            for segment, (lo, hi) in zip(evaluated, bounds)
        ]
    finally:
        model.train(was_training)
    u_t, i_t, own = (torch.cat(column) for column in zip(*event_vectors))
    first_query = model.embedding.weight.detach().float().cpu()[torch.from_numpy(events.user)]
    seed_items = stream.item[torch.from_numpy(seed.rows)]
    targets = {
        "literal": torch.from_numpy(events.literal),
        "corrected": torch.from_numpy(events.item),
    }
    out = {}
    for kind in embeddings:
        if kind == "official":  # the event's item embedding is its user embedding
            per_event, candidate, seed_entry = own, own, seed_vectors[2]
        else:
            per_event, candidate, seed_entry = u_t, i_t, seed_vectors[1]
        ranks = script_ranks(
            seed_entry,
            seed_items,
            per_event,
            candidate,
            first_query,
            torch.from_numpy(events.previous),
            [targets[x] for x in labels],
        )
        out.update({(kind, x): r for x, r in zip(labels, ranks)})
    return out


def script_ranks(
    seed_entries: Tensor,
    seed_items: Tensor,
    user_vectors: Tensor,
    item_vectors: Tensor,
    first_queries: Tensor,
    previous: Tensor,
    targets: Sequence[Tensor],
) -> list[Tensor]:
    """The script's ranking of evaluated events, from their embeddings, per target labelling.

    seed_entries [P, d] with their items [P]: the pool's first entries. Per evaluated event
    in time order [M, ...]: its user's vector (the next query of that user), its item's
    vector (the pool entry it appends), the query used when the user has no earlier
    evaluated event (E(u)), and `previous`, the position of that earlier event or -1.
    Each target [M] is scored, and appended to the pool as the event's entry label.
    """
    earlier = (previous >= 0)[:, None]
    query = torch.where(earlier, user_vectors[previous.clamp(min=0)], first_queries)
    entries = torch.cat((seed_entries, item_vectors))
    labelings = [(torch.cat((seed_items, target)), target) for target in targets]
    return pool_ranks(query, entries, int(seed_entries.shape[0]), labelings)


def evaluated_events(
    stream: Interactions, split, history: int
) -> tuple[list[_Segment], EvaluatedEvents]:
    """Validation and test, each with windows from itself, as one pass in time order."""
    segments = [
        _segment(stream, split.train_end, split.val_end, history),
        _segment(stream, split.val_end, split.num_interactions, history),
    ]
    rows = np.concatenate([s.rows for s in segments])
    user = stream.user[torch.from_numpy(rows)].numpy()
    events = EvaluatedEvents(
        rows=rows,
        user=user,
        item=stream.item[torch.from_numpy(rows)].numpy(),
        literal=np.concatenate([s.literal for s in segments]),
        previous=previous_event(user),
        is_test=rows >= split.val_end,
    )
    return segments, events


def _per_split(prefix: str, rank: Tensor, is_test: Tensor, k: int) -> dict[str, float]:
    out = {}
    for name, mask in (("pooled", None), ("val", ~is_test), ("test", is_test)):
        part = rank if mask is None else rank[mask]
        for metric, value in truncated_metrics(part, k).items():
            out[f"{prefix}/{name}/{metric}"] = value
    return out


def _heuristic_ranks(
    heuristic: tuple, targets: Mapping[str, np.ndarray], events: EvaluatedEvents, device
) -> dict:
    """Rank (average ties) of each label among all items under a heuristic (model fed the
    training stream, validation chunks, test chunks), replayed over both splits."""
    from tempint.eval.ranking import rank_bounds, score_output
    from tempint.models.base import Mode

    baseline, val_chunks, test_chunks = heuristic
    baseline.eval()
    index = np.full(int(events.rows.max()) + 1, -1, dtype=np.int64)
    index[events.rows] = np.arange(events.rows.shape[0])
    ranks = {
        name: torch.full((events.rows.shape[0],), math.inf, dtype=torch.float64) for name in targets
    }
    with torch.no_grad():
        for chunks in (val_chunks(), test_chunks()):
            for chunk in chunks:
                chunk = chunk.to(device)
                outputs = baseline.run_chunk(chunk, Mode.SCORE)
                for s, (step, output) in enumerate(zip(chunk.steps, outputs, strict=True)):
                    mask = chunk.scored[s] if chunk.scored is not None else None
                    where = torch.from_numpy(index[step.index.cpu().numpy()])
                    keep = where >= 0 if mask is None else (where >= 0) & mask.cpu()
                    if not bool(keep.any()):
                        continue
                    scores = score_output(output, "native")[keep.to(device)]
                    at = where[keep]
                    for name, target in targets.items():
                        label = torch.from_numpy(target)[at]
                        known = label >= 0
                        best, worst = rank_bounds(scores, label.clamp(min=0).to(device))
                        rank = (best + worst).double().cpu() / 2
                        ranks[name][at] = torch.where(known, rank, math.inf)
    return ranks


def evaluate_deepred_paper(
    models: Mapping[str, torch.nn.Module],
    dm,
    *,
    history: int = 100,
    pool_fraction: float = 0.15,
    k: int = 10,
    labels: Sequence[str] = LABELS,
    embeddings: Sequence[str] = EMBEDDINGS,
    recency: tuple | None = None,
    device: torch.device | str = "cpu",
) -> dict:
    """Every number of the protocol, flat keys under `protocol/deepred_paper/`.

    `models` maps a name (e.g. trained, untrained) to a DeePRed; each gets
    `<name>/<embeddings>/<label>/<pooled|val|test>/<mrr@k|recall@k>`. Beside them, with no
    model: `label_repeat/<label>/...`, the share of events whose label equals the label of
    the user's previous evaluated event (what the `official` identity reduces the ranking
    to), and with `recency` (tempint's recency heuristic fed the training stream, its
    validation and test chunks) `recency/<label>/...`: the same labels ranked by it
    among all items.
    """
    labels, embeddings = list(labels), list(embeddings)
    _check_options(labels, embeddings)
    if int(history) < 1 or int(k) < 1:
        raise ConfigError(
            f"deepred_paper.history={history}, deepred_paper.k={k}: both must be at least 1"
        )
    for model in models.values():
        _check_model(model)
    stream, split = dm.stream, dm.split
    history = int(history)
    train_items = stream.item[: split.train_end].numpy()
    size = pool_size(split.train_end, float(pool_fraction))
    seed = _segment(stream, 0, split.train_end, history, pool_seed(train_items, size))
    evaluated, events = evaluated_events(stream, split, history)
    is_test = torch.from_numpy(events.is_test)
    base = "protocol/deepred_paper"
    out: dict = {
        f"{base}/history": history,
        f"{base}/pool_size": size,
        f"{base}/events": int(events.rows.shape[0]),
        f"{base}/empty_windows": float((events.literal == EMPTY).mean()),
    }
    targets = {"literal": events.literal, "corrected": events.item}
    previous = events.previous
    for name in labels:
        target = targets[name]
        repeat = (previous >= 0) & (target == target[np.clip(previous, 0, None)])
        rank = torch.from_numpy(np.where(repeat, 1.0, math.inf))
        out.update(_per_split(f"{base}/label_repeat/{name}", rank, is_test, k))
    for model_name, model in models.items():
        ranks = _embedding_ranks(
            model,
            stream,
            split,
            history,
            labels,
            embeddings,
            seed,
            events,
            evaluated,
        )
        for (kind, name), rank in ranks.items():
            out.update(_per_split(f"{base}/{model_name}/{kind}/{name}", rank, is_test, k))
    if recency is not None:
        chosen = {name: targets[name] for name in labels}
        for name, rank in _heuristic_ranks(recency, chosen, events, device).items():
            out.update(_per_split(f"{base}/recency/{name}", rank, is_test, k))
    return out
