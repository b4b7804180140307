"""How much room a stream leaves above the recency heuristic.

    python scripts/repeat_ceiling.py [EVENT_LOG] [--test 0.1]

For the test split (the last `--test` share of the stream) it prints how often users stay
on their last item, per bucket of time since their previous interaction, and the MRR of
two rankings of the user's own past items (new pairs count 0 for both):
- recency: most recent first;
- oracle switch: told whether the user stays, ranks the last item first if so, else the
  other past items by recency. No model can know this in advance; it bounds what a
  better stay-or-switch decision alone could add.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tempint.data.events import load_events

BUNDLED = Path(__file__).resolve().parents[1] / "tempint" / "resources" / "wikipedia.parquet"
GAPS = ((0, 60), (60, 600), (600, 3600), (3600, 86400), (86400, float("inf")))


def ceiling(users: np.ndarray, items: np.ndarray, t: np.ndarray, test_start: int) -> dict:
    """Recency and oracle-switch MRR over positions >= test_start, and stay rates by gap."""
    history: dict[int, list[int]] = {}  # user -> past items, most recent last
    last_time: dict[int, float] = {}
    position, gap = [], []
    for k, (u, i) in enumerate(zip(users.tolist(), items.tolist())):
        past = history.setdefault(u, [])
        if k >= test_start:
            ranked = past[::-1]
            position.append(ranked.index(i) if i in ranked else -1)
            gap.append(t[k] - last_time[u] if u in last_time else np.inf)
        if i in past:
            past.remove(i)
        past.append(i)
        last_time[u] = t[k]
    position, gap = np.asarray(position), np.asarray(gap, dtype=float)
    seen = position >= 0
    recency = np.where(seen, 1.0 / np.maximum(position + 1.0, 1.0), 0.0)
    oracle = np.where(position == 0, 1.0, np.where(position > 0, 1.0 / np.maximum(position, 1), 0))
    stay = {}
    for lo, hi in GAPS:
        inside = (gap >= lo) & (gap < hi)
        if inside.any():
            stay[(lo, hi)] = (float(inside.mean()), float((position[inside] == 0).mean()))
    return {
        "count": int(len(position)),
        "last": float((position == 0).mean()),
        "repeat": float(seen.mean()),
        "recency_mrr": float(recency.mean()),
        "oracle_switch_mrr": float(oracle.mean()),
        "stay_by_gap": stay,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "path", nargs="?", default=str(BUNDLED), help="event log (default: Wikipedia)"
    )
    parser.add_argument("--test", type=float, default=0.1, help="share of the stream tested")
    args = parser.parse_args(argv)
    frame = load_events(args.path).frame
    users, items = frame["user_id"].to_numpy(), frame["item_id"].to_numpy()
    t = frame["timestamp"].to_numpy().astype(float)
    out = ceiling(users, items, t, int(len(users) * (1.0 - args.test)))
    print(
        f"test interactions {out['count']:,}: repeat {out['repeat']:.1%}, last item {out['last']:.1%}"
    )
    print(
        f"recency MRR {out['recency_mrr']:.4f}; oracle stay-or-switch MRR {out['oracle_switch_mrr']:.4f}"
    )
    print("seconds since the user's previous interaction: share of test, P(stays on last item)")
    for (lo, hi), (share, stay) in out["stay_by_gap"].items():
        print(f"  [{lo:g}, {hi:g}): {share:.1%}, {stay:.1%}")


if __name__ == "__main__":
    main()
