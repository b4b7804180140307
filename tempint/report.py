"""Result tables of finished runs: one run's summary, and a leaderboard of many.

Every model number is printed beside the heuristics measured on the same split, overall
and per tag, so no number is read alone.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["summary_table", "load_runs", "leaderboard", "main"]

SUMMARY_TAGS = ("repeat", "new", "last")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4f}"


def summary_table(metrics: Mapping, split: str = "test") -> str:
    """Markdown table: the model and each baseline, overall and per tag, on one split."""
    baselines = list(metrics.get("baselines") or [])
    header = ["model", "MRR", "R@1", "R@10", "NDCG@10"] + [f"MRR {t}" for t in SUMMARY_TAGS]
    shares = " · ".join(
        f"{t} {metrics.get(f'{split}/share/{t}', float('nan')):.1%}" for t in SUMMARY_TAGS
    )
    rows = []
    for name, prefix in [(str(metrics.get("model", "model")), split)] + [
        (b, f"{split}/{b}") for b in baselines
    ]:
        rows.append(
            [name]
            + [_fmt(metrics.get(f"{prefix}/{m}")) for m in ("mrr", "recall@1", "recall@10", "ndcg@10")]
            + [_fmt(metrics.get(f"{prefix}/mrr/{t}")) for t in SUMMARY_TAGS]
        )
    lines = [
        f"{split} split, protocol: {metrics.get('mode', '?')} weights, {metrics.get('ties', '?')} "
        f"ties, scorer {metrics.get('scorer', '?')} (chosen on validation); shares: {shares}",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def load_runs(root: str | Path) -> list[dict]:
    """Every `metrics.json` under a run or multirun directory."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.rglob("metrics.json"))
    runs = []
    for f in files:
        with open(f) as fh:
            payload = json.load(fh)
        payload["_path"] = str(f.parent)
        runs.append(payload)
    return runs


def leaderboard(runs: Iterable[Mapping], split: str = "test") -> str:
    """Markdown: one row per run, with the heuristics of the same run beside it."""
    header = ["run", "model", "data", "MRR", "MRR repeat", "MRR new", "R@10", "recency MRR",
              "popularity MRR", "s/epoch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in runs:
        lines.append(
            "| "
            + " | ".join(
                [
                    Path(r.get("_path", "")).name,
                    str(r.get("model", "?")),
                    str(r.get("dataset", "?")),
                    _fmt(r.get(f"{split}/mrr")),
                    _fmt(r.get(f"{split}/mrr/repeat")),
                    _fmt(r.get(f"{split}/mrr/new")),
                    _fmt(r.get(f"{split}/recall@10")),
                    _fmt(r.get(f"{split}/recency/mrr")),
                    _fmt(r.get(f"{split}/popularity/mrr")),
                    _fmt(r.get("train/seconds_per_epoch")),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="tempint-report", description="Leaderboard of finished runs (metrics.json files)."
    )
    parser.add_argument("path", help="a run or multirun directory")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    args = parser.parse_args(argv)
    runs = load_runs(args.path)
    if not runs:
        print(f"tempint-report: no metrics.json under {args.path}", file=sys.stderr)
        sys.exit(2)
    print(leaderboard(runs, args.split))
