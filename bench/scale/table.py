"""Reading a case's output and writing `results.md`."""

from __future__ import annotations

import json
import shlex
from typing import Any

from bench.scale.case import PHASE_MARK, RESULT_MARK
from bench.scale.plan import GIB, check_targets

TITLES = {
    "movielens": "MovieLens 100K (raw file): every model, 1 epoch + frozen evaluation",
    "amazon": "Amazon-shaped, full scale (generated): 1 epoch + full evaluation",
    "ml20m_quarter": "MovieLens 20M-shaped, scale 0.25 (generated): 1 epoch + full evaluation",
    "ml20m_full": "MovieLens 20M-shaped, full scale (generated): setup + 1 LiMNet epoch, no evaluation",
}


def parse_output(text: str) -> dict[str, Any] | None:
    """The result a case printed (its last `SCALE_RESULT` line), or None."""
    for line in reversed(text.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    return None


def parse_epoch(text: str) -> dict[str, Any] | None:
    """The training numbers a case printed before its evaluation, or None."""
    for line in reversed(text.splitlines()):
        if line.startswith(PHASE_MARK):
            return json.loads(line[len(PHASE_MARK) :])
    return None


def error_line(text: str) -> str:
    """The last line that names an error, else the last non-empty line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no output"


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return format(value, fmt)


def _row(entry: dict) -> list[str]:
    case, result = entry["case"], entry.get("result") or {}
    status = entry["status"]
    missed = check_targets(case, result) if status == "ok" else []
    if status != "ok":
        verdict = f"not finished ({status}): {entry.get('note', '')}"
        rate_target = (case.get("targets") or {}).get("train_rate")
        rate = result.get("train_interactions_per_second")
        if rate_target and rate is not None:  # the epoch ended before the stop
            verdict += "; training " + ("✓" if rate >= rate_target else f"✗ < {rate_target:,}")
    elif not case.get("targets"):
        verdict = "–"
    else:
        verdict = "✓" if not missed else "✗ " + "; ".join(missed)
    rss = result.get("peak_rss_bytes") or entry.get("max_rss_seen_bytes")
    return [
        case["model"],
        next((o.split("=", 1)[1] for o in case["overrides"] if o.startswith("sampler=")), "–"),
        _num(result.get("num_interactions"), ","),
        _num(result.get("test_mrr"), ".4f"),
        _num(result.get("setup_seconds"), ".1f"),
        _num(result.get("seconds_per_epoch"), ".1f"),
        _num(result.get("train_interactions_per_second"), ",.0f"),
        _num(result.get("eval_seconds"), ".1f"),
        _num(result.get("eval_interactions_per_second"), ",.0f"),
        _num(entry.get("elapsed_seconds"), ".0f"),
        _num(None if rss is None else rss / GIB, ".2f"),
        entry.get("code", "–"),
        verdict,
    ]


HEADER = [
    "model",
    "sampler",
    "events",
    "test MRR",
    "setup s",
    "epoch s",
    "train ev/s",
    "eval s",
    "eval ev/s",
    "wall s",
    "peak RSS GiB",
    "code",
    "targets",
]


def _command(argv: list[str], movielens_root: str | None) -> str:
    """The case's command; the local MovieLens folder shown as `$MOVIELENS_ROOT`."""
    text = shlex.join(argv)
    if movielens_root:
        text = text.replace(
            f"data.root={shlex.quote(movielens_root)}", 'data.root="$MOVIELENS_ROOT"'
        )
        text = text.replace(f"'data.root={movielens_root}'", 'data.root="$MOVIELENS_ROOT"')
    return text


def render(entries: list[dict], meta: dict) -> str:
    """results.md: the caveat, the machine, one table per group, every command."""
    out = [
        "# Scale benchmark",
        "",
        f"Written by `{meta.get('command', 'python bench/scale/run.py')}` at "
        f"{meta.get('date', '?')}.",
        "",
        "Each case is a fresh process (`bench/scale/case.py`) with one torch thread; peak "
        "RSS is the process's `VmHWM`. Validation during fit, checkpoints, loggers, the "
        "progress bar and the baselines beside the model are off. **The machine was "
        "shared with other jobs while these numbers were taken: times are upper bounds "
        "and rates lower bounds.**",
        "",
        f"Machine: {meta.get('machine', '?')}. Limits per case: "
        f"{meta.get('time_limit', '?')} s, {meta.get('rss_limit_gib', '?')} GiB RSS "
        "(past either, the case is stopped and reported as not finished).",
        "",
        "Columns: `setup s` data loading/generation and features (fit-only cases); `epoch s` "
        "one training epoch (80% of the stream); `eval s` / `eval ev/s` the frozen "
        "validation + test replay ranked against every item; `wall s` the whole process; "
        '`code` the commit the case ran ("+changes": the package differed from it).',
    ]
    for group in dict.fromkeys(e["case"]["group"] for e in entries):
        rows = [e for e in entries if e["case"]["group"] == group]
        out += ["", f"## {TITLES.get(group, group)}", ""]
        out.append("| " + " | ".join(HEADER) + " |")
        out.append("|" + "---|" * len(HEADER))
        out += ["| " + " | ".join(_row(e)) + " |" for e in rows]
        out += ["", "Commands (from the repository root):", "", "```"]
        out += [_command(e["argv"], meta.get("movielens_root")) for e in rows]
        out += ["```"]
    if meta.get("notes"):
        out += ["", "## Notes", "", *meta["notes"]]
    return "\n".join(out) + "\n"
