"""Result tables of finished runs: one run's summary, and a leaderboard of many.

Every model number is printed beside the heuristics measured on the same split, overall
and per tag, so no number is read alone.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from tempint.results import load_runs

__all__ = ["summary_table", "load_runs", "leaderboard", "bridge_table", "main"]

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
            + [
                _fmt(metrics.get(f"{prefix}/{m}"))
                for m in ("mrr", "recall@1", "recall@10", "ndcg@10")
            ]
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


def leaderboard(runs: Iterable[Mapping], split: str = "test") -> str:
    """Markdown: one row per run, with the heuristics of the same run beside it."""
    header = [
        "run",
        "model",
        "data",
        "MRR",
        "MRR repeat",
        "MRR new",
        "R@10",
        "recency MRR",
        "popularity MRR",
        "s/epoch",
    ]
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


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def bridge_table(runs: Iterable[Mapping], split: str = "test") -> str:
    """The JODIE→LiMNet bridge: each ablation's MRR (mean over seeds) and its gap.

    Removals are read against full JODIE (`bridge/jodie`), additions against the shared
    core (`bridge/core`); the closing line names the component whose removal costs most
    and the one whose addition gains most, overall and on repeat / new interactions.
    """
    groups: dict[str, list[Mapping]] = {}
    for r in runs:
        name = (r.get("choices") or {}).get("ablation", "?")
        groups.setdefault(name, []).append(r)
    cols = ("mrr", "mrr/repeat", "mrr/new")
    means = {
        name: {c: _mean([r.get(f"{split}/{c}") for r in rs]) for c in cols}
        for name, rs in groups.items()
    }
    for name, rs in groups.items():
        means[name]["n"] = len(rs)
    full = means.get("bridge/jodie")
    core = means.get("bridge/core")
    header = ["ablation", "seeds", "MRR", "MRR repeat", "MRR new", "Δ vs JODIE", "Δ vs core"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]

    def delta(m, ref, c="mrr"):
        return m[c] - ref[c] if ref else float("nan")

    for name in sorted(means):
        m = means[name]
        lines.append(
            f"| {name} | {m['n']} | {_fmt(m['mrr'])} | {_fmt(m['mrr/repeat'])} | "
            f"{_fmt(m['mrr/new'])} | {delta(m, full):+.4f} | {delta(m, core):+.4f} |"
        )
    verdicts = []
    for c, label in zip(cols, ("overall", "repeat", "new")):
        removals = {n: delta(m, full, c) for n, m in means.items() if "jodie_no_" in n}
        additions = {n: delta(m, core, c) for n, m in means.items() if "core_plus_" in n}
        parts = []
        if removals and full:
            worst = min(removals, key=removals.get)
            parts.append(
                f"removing {worst.split('jodie_no_')[1]} costs most ({removals[worst]:+.4f})"
            )
        if additions and core:
            best = max(additions, key=additions.get)
            parts.append(
                f"adding {best.split('core_plus_')[1]} gains most ({additions[best]:+.4f})"
            )
        if parts:
            verdicts.append(f"- {label}: " + "; ".join(parts))
    return "\n".join(lines + ([""] + verdicts if verdicts else []))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="tempint-report", description="Leaderboard of finished runs (metrics.json files)."
    )
    parser.add_argument("path", help="a run or multirun directory")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument(
        "--bridge", action="store_true", help="the JODIE→LiMNet bridge table of a bridge sweep"
    )
    parser.add_argument(
        "--out", default=None, help="folder for leaderboard.md and the figures (PNG)"
    )
    args = parser.parse_args(argv)
    runs = _load_or_exit(args.path)
    if not runs:
        print(f"tempint-report: no metrics.json under {args.path}", file=sys.stderr)
        sys.exit(2)
    table = bridge_table(runs, args.split) if args.bridge else leaderboard(runs, args.split)
    print(table)
    if args.out:
        write_report(args.path, args.out, table, f"{args.split}/mrr")


def _load_or_exit(path: str) -> list[dict]:
    """The runs under `path`; one stderr line per skipped file, exit 2 for a missing path."""
    import warnings

    from tempint.errors import UserError
    from tempint.results import BadRunFileWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BadRunFileWarning)
        try:
            runs = load_runs(path)
        except UserError as err:
            print(f"tempint-report: {err}", file=sys.stderr)
            sys.exit(2)
    for w in caught:
        if issubclass(w.category, BadRunFileWarning):
            print(f"tempint-report: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return runs


def write_report(runs_dir: str | Path, out: str | Path, table: str, metric: str) -> list[Path]:
    """leaderboard.md plus the results notebook's figures, for clusters with no notebook."""
    import matplotlib

    matplotlib.use("Agg")
    from tempint.io import atomic_write_text
    from tempint.results import runs_table, save_figures

    out = Path(out)
    written = [atomic_write_text(out / "leaderboard.md", table + "\n")]
    written += list(save_figures(runs_table(runs_dir), out, metric).values())
    return written
