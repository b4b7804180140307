"""The benchmark's results as a markdown report, and the targets they are checked against."""

from __future__ import annotations

__all__ = [
    "TARGETS",
    "check_targets",
    "case_checks",
    "scaling_ratios",
    "precision_section",
    "render",
]

GIB = 2**30
EVAL_MIN = 5_000.0  # frozen-evaluation interactions per second, every model
MEMORY_MAX = 4 * GIB  # peak resident memory of every Wikipedia run
# (model, shape, sampler) -> most seconds one training epoch may take
EPOCH_MAX = {
    ("jodie", "wikipedia", "tbatch"): 30.0,
    ("limnet", "wikipedia", "tbatch"): 20.0,
    ("jodie", "lastfm", "tbatch"): 300.0,
    ("limnet", "lastfm", "tbatch"): 300.0,
}
TARGETS = (
    "JODIE Wikipedia epoch ≤ 30 s",
    "LiMNet Wikipedia epoch ≤ 20 s",
    "frozen evaluation ≥ 5,000 interactions/s, every model",
    "JODIE Wikipedia frozen evaluation ≥ 20,000 interactions/s",
    "LiMNet (d = 32) Wikipedia streaming inference ≥ 50,000 interactions/s",
    "LastFM-shaped epoch ≤ 300 s, JODIE",
    "LastFM-shaped epoch ≤ 300 s, LiMNet",
    "peak memory < 4 GiB, every Wikipedia run",
)
MARK = {True: "✓", False: "✗", None: "–"}


def _key(case: dict) -> tuple[str, str, str]:
    return case["model"], case["shape"], case["sampler"]


def _name(case: dict) -> str:
    return f"{case['model']}/{case['sampler']}/{case['shape']}"


def _ok(case: dict) -> bool:
    return case.get("status") == "ok"


def _epoch_target(cases: list[dict], key: tuple[str, str, str], limit: float) -> dict:
    case = next((c for c in cases if _key(c) == key), None)
    if case is None:
        return {"measured": "not run", "passed": None}
    if case["status"] == "timeout":
        return {"measured": f"> {case['time_limit']:.0f} s (timed out)", "passed": False}
    if not _ok(case):
        return {"measured": case["status"], "passed": None}
    seconds = case["seconds_per_epoch"]
    return {"measured": f"{seconds:.1f} s", "passed": seconds <= limit}


def _rate_target(cases: list[dict], key: tuple[str, str, str], least: float) -> dict:
    """Frozen evaluation (validation + test: score, then update) of one case."""
    case = next((c for c in cases if _key(c) == key and _ok(c)), None)
    if case is None:
        return {"measured": "not run", "passed": None}
    rate = case["eval_interactions_per_second"]
    return {"measured": f"{rate:,.0f}/s", "passed": rate >= least}


def _all_target(cases: list[dict], measure, passes, describe) -> dict:
    """One bound over many cases: ✗ if any measured case misses it, – if none measured.

    `describe(values)` words the worst of the values it is given.
    """
    measured = [c for c in cases if _ok(c) and measure(c) is not None]
    if not measured:
        return {"measured": "not run", "passed": None}
    failing = [c for c in measured if not passes(measure(c))]
    text = describe([measure(c) for c in failing or measured])
    missing = [c for c in cases if not _ok(c)]
    if failing:
        text += " (" + ", ".join(_name(c) for c in failing) + ")"
        return {"measured": text, "passed": False}
    if missing:
        text += f"; {len(missing)} case(s) not measured"
        return {"measured": text, "passed": None}
    return {"measured": text, "passed": True}


def _slowest(values: list[float]) -> str:
    return f"min {min(values):,.0f}/s"


def _largest(values: list[float]) -> str:
    return f"max {max(values) / GIB:.2f} GiB"


def check_targets(cases: list[dict]) -> list[dict]:
    """Each target with what was measured and ✓ / ✗ / – (not measured)."""
    rows = [
        _epoch_target(cases, ("jodie", "wikipedia", "tbatch"), 30.0),
        _epoch_target(cases, ("limnet", "wikipedia", "tbatch"), 20.0),
        _all_target(
            cases,
            lambda c: c.get("eval_interactions_per_second"),
            lambda v: v >= EVAL_MIN,
            _slowest,
        ),
        _rate_target(cases, ("jodie", "wikipedia", "tbatch"), 20_000.0),
        _rate_target(cases, ("limnet", "wikipedia", "tbatch"), 50_000.0),
        _epoch_target(cases, ("jodie", "lastfm", "tbatch"), 300.0),
        _epoch_target(cases, ("limnet", "lastfm", "tbatch"), 300.0),
        _all_target(
            [c for c in cases if c["shape"] == "wikipedia"],
            lambda c: c.get("peak_rss_bytes"),
            lambda v: v < MEMORY_MAX,
            _largest,
        ),
    ]
    return [{"target": name, **row} for name, row in zip(TARGETS, rows, strict=True)]


def case_checks(case: dict) -> str:
    """✓, or ✗ with the targets this case misses; – when it was not measured."""
    if case.get("status") == "timeout" and _key(case) in EPOCH_MAX:
        return "✗ epoch"
    if not _ok(case):
        return MARK[None]
    missed = []
    limit = EPOCH_MAX.get(_key(case))
    if limit is not None and case["seconds_per_epoch"] > limit:
        missed.append(f"epoch > {limit:.0f} s")
    if case["eval_interactions_per_second"] < EVAL_MIN:
        missed.append("eval < 5k/s")
    if case["shape"] == "wikipedia" and case["peak_rss_bytes"] >= MEMORY_MAX:
        missed.append("memory ≥ 4 GiB")
    return "✗ " + ", ".join(missed) if missed else MARK[True]


def scaling_ratios(points: list[dict]) -> list[dict]:
    """Time ratios along each axis of the size grid: linear cost means time ratio ≈ size ratio."""
    out = []
    sizes = sorted({p["interactions"] for p in points})
    items = sorted({p["items"] for p in points})
    at = {(p["interactions"], p["items"]): p for p in points}
    for i in items:
        lo, hi = at.get((sizes[0], i)), at.get((sizes[-1], i))
        if lo and hi and lo is not hi:
            out.append(
                {
                    "axis": "interactions",
                    "fixed": f"{i:,} items",
                    "size_ratio": hi["evaluated"] / lo["evaluated"],
                    "time_ratio": hi["seconds"] / lo["seconds"],
                }
            )
    for n in sizes:
        lo, hi = at.get((n, items[0])), at.get((n, items[-1]))
        if lo and hi and lo is not hi:
            out.append(
                {
                    "axis": "items",
                    "fixed": f"{n:,} interactions",
                    "size_ratio": hi["items"] / lo["items"],
                    "time_ratio": hi["seconds"] / lo["seconds"],
                }
            )
    return out


def _case_row(case: dict) -> list[str]:
    head = [case["model"], case["sampler"], case["shape"]]
    if case["status"] == "timeout":
        return head + [
            f"timed out (> {case['time_limit']:.0f} s)",
            "",
            "",
            "",
            "",
            case_checks(case),
        ]
    if not _ok(case):
        return head + [case["status"], "", "", "", "", MARK[None]]
    ratio = case.get("ratio_to_bare")
    memory = f"{case['peak_rss_bytes'] / GIB:.2f}"
    if case.get("peak_cuda_bytes") is not None:
        memory += f" (GPU {case['peak_cuda_bytes'] / GIB:.2f})"
    return head + [
        f"{case['seconds_per_epoch']:.1f}",
        f"{case['train_interactions_per_second']:,.0f}",
        "" if ratio is None else f"{ratio:.3f}",
        f"{case['eval_interactions_per_second']:,.0f}",
        memory,
        case_checks(case),
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def precision_section(precision: dict) -> list[str]:
    """Epoch time, evaluation rate and test MRR per `trainer.precision`, with the ratio to
    the first precision (all measured in one process, one after the other)."""
    if precision.get("status") != "ok":
        return [
            f"not measured ({precision.get('status', 'skipped')}: {precision.get('error', '')})"
        ]
    names = precision["precisions"]
    ref = names[0]
    lines = [
        f"{precision['shape']}, {precision['sampler']}, all in one process: each model "
        f"trained and evaluated in {', '.join(names)}; ratios are to {ref} (below 1: slower "
        "for epoch rate, lower for evaluation rate).",
        "",
    ]
    header = ["model", "precision", "epoch s", "epoch rate ×", "eval int/s", "eval ×", "test MRR"]
    rows = []
    for row in precision["rows"]:
        base = row["runs"].get(ref) or {}
        for name in names:
            run = row["runs"].get(name) or {}
            if "error" in run or "seconds_per_epoch" not in run:
                rows.append([row["model"], name, run.get("error", "not run"), "", "", "", ""])
                continue
            speed = eval_ratio = ""
            if "seconds_per_epoch" in base:
                speed = f"{base['seconds_per_epoch'] / run['seconds_per_epoch']:.2f}"
                eval_ratio = f"{run['eval_interactions_per_second'] / base['eval_interactions_per_second']:.2f}"
            rows.append(
                [
                    row["model"],
                    name,
                    f"{run['seconds_per_epoch']:.1f}",
                    speed,
                    f"{run['eval_interactions_per_second']:,.0f}",
                    eval_ratio,
                    f"{run['test_mrr']:.4f}",
                ]
            )
    return lines + _table(header, rows)


def render(results: dict) -> str:
    """The markdown report of a results dict (as written to results.json)."""
    lines = ["# tempint benchmark", ""]
    machine = results.get("machine") or {}
    if machine:
        parts = [
            f"CPU {machine.get('cpu')} ({machine.get('logical_cores')} logical / "
            f"{machine.get('physical_cores')} physical cores, {machine.get('memory_gib')} GiB)",
            f"torch {machine.get('torch')}",
            f"torch threads {machine.get('threads')}",
            f"device {machine.get('gpu') or machine.get('device')}",
            f"Python {machine.get('python')}",
        ]
        lines += ["Machine: " + "; ".join(parts) + ".", ""]
    options = results.get("options") or {}
    if options:
        lines += [
            f"Run {results.get('created', '')}; {options.get('epochs', 1)} training epoch(s) per "
            f"case, each case in a fresh process (time limit {options.get('time_limit', 0):.0f} s).",
            "",
        ]
    cases = results.get("cases") or []
    header = [
        "model",
        "sampler",
        "data",
        "epoch s",
        "train int/s",
        "ratio to bare",
        "eval int/s",
        "peak RSS GiB",
        "targets",
    ]
    lines += _table(header, [_case_row(c) for c in cases])
    errors = [c for c in cases if c["status"] not in ("ok", "timeout")]
    if errors:
        lines += [""] + [f"- {_name(c)} {c['status']}: {c.get('error', '')}" for c in errors]
    reference = results.get("reference") or {}
    lines += ["", "## Bare recurrent arithmetic", ""]
    if reference.get("status") == "ok":
        rates = ", ".join(f"d={d}: {r:,.0f}/s" for d, r in reference["rates"].items())
        lines.append(
            f"Two `nn.GRUCell`s, forward + backward, {reference['interactions']:,} interactions "
            f"in batches of {reference['batch_size']:,}: {rates}. "
            '"ratio to bare" = a model\'s training interactions/s over this rate at its d.'
        )
    else:
        lines.append(
            f"not measured ({reference.get('status', 'skipped')}: {reference.get('error', '')})"
        )
    scaling = results.get("scaling") or {}
    lines += ["", "## Frozen-evaluation scaling", ""]
    if scaling.get("status") == "ok":
        lines.append(
            f"{scaling['model']} (untrained), generated streams of {scaling['num_users']:,} users; "
            "validation + test (20% of the stream) replayed, best of 2 passes."
        )
        lines.append("")
        rows = [
            [
                f"{p['interactions']:,}",
                f"{p['items']:,}",
                f"{p['evaluated']:,}",
                f"{p['seconds']:.2f}",
                f"{p['interactions_per_second']:,.0f}",
            ]
            for p in scaling["points"]
        ]
        lines += _table(["stream", "items", "evaluated", "seconds", "eval int/s"], rows)
        lines.append("")
        for r in scaling_ratios(scaling["points"]):
            lines.append(
                f"- {r['axis']} ×{r['size_ratio']:.2f} ({r['fixed']}): time ×{r['time_ratio']:.2f}"
            )
    else:
        lines.append(
            f"not measured ({scaling.get('status', 'skipped')}: {scaling.get('error', '')})"
        )
    lines += ["", "## Mixed precision", ""]
    lines += precision_section(results.get("precision") or {})
    lines += ["", "## Targets", ""]
    rows = [[t["target"], t["measured"], MARK[t["passed"]]] for t in check_targets(cases)]
    lines += _table(["target", "measured", "met"], rows)
    return "\n".join(lines) + "\n"
