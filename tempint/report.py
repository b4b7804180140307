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

from tempint.results import configuration_of, load_runs, protocol_of

__all__ = [
    "summary_table",
    "load_runs",
    "leaderboard",
    "bridge_table",
    "protocols_table",
    "PUBLISHED",
    "main",
]

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
        f"{split} split, protocol {protocol_of(metrics)}: {metrics.get('mode', '?')} weights, "
        f"{metrics.get('ties', '?')} ties, scorer {metrics.get('scorer', '?')} (chosen on "
        f"validation); shares: {shares}",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    strongest = metrics.get(f"{split}/strongest_heuristic")
    if strongest:
        lines.append(
            f"strongest heuristic on {split}: {strongest} "
            f"(MRR {_fmt(metrics.get(f'{split}/strongest_heuristic/mrr'))}); the model's gap to "
            f"it: {metrics.get(f'{split}/gap_to_strongest_heuristic', float('nan')):+.4f}"
        )
    return "\n".join(lines)


def _with_other_protocols(runs: Iterable[Mapping]) -> list[Mapping]:
    """Each run, then the same checkpoint under each of its `eval.also` protocols as a
    run of its own (keys `protocol/<name>/...`), so that each lands in its own section."""
    out = []
    for r in runs:
        out.append(r)
        names = {k.split("/")[1] for k in r if k.startswith("protocol/") and k.count("/") >= 2}
        for name in sorted(names):
            prefix = f"protocol/{name}/"
            other = {
                k: v
                for k, v in r.items()
                if not k.startswith(("val/", "test/", "protocol/")) and k != "baselines"
            }
            if prefix + "mode" not in r:  # older runs: read it from the name
                other.update(_protocol_from_name(name, r.get("protocol")))
            other.update({k[len(prefix) :]: v for k, v in r.items() if k.startswith(prefix)})
            out.append(other)
    return out


def _protocol_from_name(name: str, main: Mapping | None) -> dict:
    """Mode, ties and batch size of an `eval.also` entry named `<mode>_<ties>[_batch<B>]`
    by runs that did not record them; the rest is the run's main protocol."""
    parts = name.split("_")
    proto = dict(main) if isinstance(main, Mapping) else {}
    if len(parts) > 2 and parts[2].startswith("batch"):
        proto["batch_size"] = int(parts[2].removeprefix("batch"))
    return {"mode": parts[0], "ties": parts[1] if len(parts) > 1 else "?", "protocol": proto}


def _sections(runs: Iterable[Mapping]) -> dict[tuple[str, str], list[Mapping]]:
    """Runs by (dataset, protocol), in run order: numbers of different sections are never
    read against each other."""
    out: dict[tuple[str, str], list[Mapping]] = {}
    for r in _with_other_protocols(runs):
        out.setdefault((str(r.get("dataset", "?")), protocol_of(r)), []).append(r)
    return out


def _dataset_name(dataset: str) -> str:
    """A dataset's name for tables: the file stem of a path."""
    return Path(dataset).stem if "/" in dataset else dataset


def leaderboard(runs: Iterable[Mapping], split: str = "test") -> str:
    """Markdown: a section per dataset and protocol, one row per run, with the
    heuristics of the same run beside it, then each configuration's mean over seeds."""
    header = [
        "run",
        "model",
        "MRR",
        "MRR repeat",
        "MRR new",
        "R@10",
        "recency MRR",
        "popularity MRR",
        "strongest heuristic",
        "s/epoch",
    ]
    lines: list[str] = []
    for (dataset, protocol), group in _sections(runs).items():
        lines += [f"### {_dataset_name(dataset)} · {protocol}", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for r in group:
            strongest = r.get(f"{split}/strongest_heuristic")
            best = (
                f"{strongest} {_fmt(r.get(f'{split}/strongest_heuristic/mrr'))}"
                if strongest
                else "–"
            )
            cells = [
                Path(r.get("_path", "")).name,
                configuration_of(r)[0],
                _fmt(r.get(f"{split}/mrr")),
                _fmt(r.get(f"{split}/mrr/repeat")),
                _fmt(r.get(f"{split}/mrr/new")),
                _fmt(r.get(f"{split}/recall@10")),
                _fmt(r.get(f"{split}/recency/mrr")),
                _fmt(r.get(f"{split}/popularity/mrr")),
                best,
                _fmt(r.get("train/seconds_per_epoch")),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", _seed_means(group, split), ""]
    return "\n".join(lines).rstrip()


def _seed_means(group: list[Mapping], split: str) -> str:
    """Each configuration of a section: MRR mean ± sd over its seeds."""
    configs: dict[str, list[Mapping]] = {}
    labels: dict[str, str] = {}
    for r in group:
        label, cid = configuration_of(r)
        configs.setdefault(cid, []).append(r)
        labels[cid] = label
    parts = []
    for cid, rs in configs.items():
        mean, sd = _mean_sd([r.get(f"{split}/mrr") for r in rs])
        parts.append(f"{labels[cid]} [{cid}]: {_fmt(mean)} ± {_fmt(sd)} ({len(rs)} seeds)")
    return f"{split} MRR over seeds: " + "; ".join(parts)


def _mean_sd(values: list) -> tuple[float, float]:
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not finite:
        return float("nan"), float("nan")
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))


_TGB = "TGB leaderboard, tgbl-wiki-v2 (batch size the submitter's: DyGLib_TGB runs 1)"
# Published test figures: (dataset, protocol name or "online_optimistic" for JODIE's own,
# model) -> (MRR, recall/hits@10 or None, source). Wikipedia under TGB is tgbl-wiki-v2.
PUBLISHED: dict[tuple[str, str], list[tuple[str, float, float | None, str]]] = {
    ("wikipedia", "tgb"): [
        ("TPNet", 0.827, None, _TGB),
        ("heuristic", 0.821, None, _TGB),
        ("DyGFormer", 0.798, None, _TGB),
        ("CAWN", 0.711, None, _TGB),
        ("EdgeBank(tw)", 0.571, None, "TGB leaderboard, tgbl-wiki-v2 (TGB's example: batch 200)"),
        ("TGN", 0.396, None, _TGB),
    ],
    ("wikipedia", "jodie"): [("JODIE", 0.746, 0.822, "Kumar et al. KDD'19, table 2")],
    ("wikipedia", "deepred"): [("DeePRed", 0.885, 0.889, "Kefato et al. WWW'21")],
}
# our names for the published ones, to set a measured row beside its published figure
_SAME_MODEL = {
    "JODIE": "JODIE",
    "DeePRed": "DeePRed",
    "edgebank_tw": "EdgeBank(tw)",
}


def _published_key(run: Mapping) -> tuple[str, str]:
    """(dataset family, protocol family) of a run, for `PUBLISHED`."""
    dataset = str(run.get("dataset", "")).lower()
    dataset = "wikipedia" if "wikipedia" in dataset else dataset
    proto = run.get("protocol") or {}
    name = str(proto.get("name", "streaming")) if isinstance(proto, Mapping) else "streaming"
    if name.startswith("deepred"):
        return dataset, "deepred"
    if name == "streaming" and run.get("mode") == "online" and run.get("ties") == "optimistic":
        return dataset, "jodie"
    return dataset, name


def protocols_table(runs: Iterable[Mapping], split: str = "test") -> str:
    """One table: each model (and heuristic) under each protocol, mean ± sd over seeds,
    with the published figure of the same model under the same protocol beside it and
    the other published figures of that protocol as rows of their own."""
    header = ["dataset", "protocol", "model", "seeds", "MRR", "@10", "published", "source"]
    header.append("AP / AUROC (random)")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for (dataset, protocol), group in _sections(runs).items():
        shown: set[str] = set()
        dataset = _dataset_name(dataset)
        pkey = _published_key(group[0])
        published = {name: (m, k, src) for name, m, k, src in PUBLISHED.get(pkey, [])}
        at10 = "hits@10" if any(f"{split}/hits@10" in r for r in group) else "recall@10"
        rows: dict[str, tuple[str, list, list, list]] = {}
        for r in group:
            label, cid = configuration_of(r)
            entry = rows.setdefault(cid, (label, [], [], []))
            entry[1].append(r.get(f"{split}/mrr"))
            entry[2].append(r.get(f"{split}/{at10}"))
            entry[3].append((r.get(f"{split}/ap/random"), r.get(f"{split}/auroc/random")))
            for b in r.get("baselines") or []:
                b_entry = rows.setdefault(f"baseline:{b}", (b, [], [], []))
                if len(b_entry[1]) < 1:  # a heuristic is the same in every run of a section
                    b_entry[1].append(r.get(f"{split}/{b}/mrr"))
                    b_entry[2].append(r.get(f"{split}/{b}/{at10}"))
                    pair = (r.get(f"{split}/{b}/ap/random"), r.get(f"{split}/{b}/auroc/random"))
                    b_entry[3].append(pair)
        for label, mrrs, tens, pairs in rows.values():
            ap, _ = _mean_sd([p[0] for p in pairs])
            roc, _ = _mean_sd([p[1] for p in pairs])
            mean, sd = _mean_sd(mrrs)
            ten, _ = _mean_sd(tens)
            model = label.split(" ")[0]
            pub = published.get(_SAME_MODEL.get(model, ""))
            if pub:
                shown.add(_SAME_MODEL[model])
            cells = [
                dataset,
                protocol,
                label,
                str(len([m for m in mrrs if m is not None])),
                f"{_fmt(mean)} ± {_fmt(sd)}" if len(mrrs) > 1 else _fmt(mean),
                _fmt(ten),
                "–" if not pub else f"{pub[0]:.3f}" + (f" / {pub[1]:.3f}" if pub[1] else ""),
                "–" if not pub else pub[2],
                "–" if math.isnan(ap) else f"{ap:.4f} / {roc:.4f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        for name, (m, k, src) in published.items():
            if name in shown:
                continue
            pub = f"{m:.3f}" + (f" / {k:.3f}" if k else "")
            lines.append(
                f"| {dataset} | {protocol} | {name} (published) | – | – | – | {pub} | {src} |"
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
        "--protocols",
        action="store_true",
        help="each model under each protocol, beside the published figures",
    )
    parser.add_argument(
        "--out", default=None, help="folder for leaderboard.md and the figures (PNG)"
    )
    args = parser.parse_args(argv)
    runs = _load_or_exit(args.path)
    if not runs:
        print(f"tempint-report: no metrics.json under {args.path}", file=sys.stderr)
        sys.exit(2)
    if args.bridge:
        table = bridge_table(runs, args.split)
    elif args.protocols:
        table = protocols_table(runs, args.split)
    else:
        table = leaderboard(runs, args.split)
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
