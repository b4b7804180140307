"""Speed and memory at scale: `python bench/scale/run.py --movielens-root DIR`.

Runs the cases of `bench/scale/plan.py` one at a time, each in a fresh process
(`bench/scale/case.py`) watched from here: its resident memory is polled, and past
`--rss-limit-gib` or `--time-limit` the case is stopped and reported as not finished with
what was seen. `results.md` and `results.json` in `--out` are rewritten after every case,
so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from bench.scale.plan import GIB, GROUPS, case_argv, plan_cases  # noqa: E402
from bench.scale.table import error_line, parse_epoch, parse_output, render  # noqa: E402

REPO = Path(__file__).resolve().parent.parent.parent


def resident_bytes(pid: int) -> int | None:
    """Current resident memory of `pid` (VmRSS), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_watched(argv: list[str], time_limit: float, rss_limit: float, poll: float = 0.5) -> dict:
    """Run `argv` from the repository root; stop it past `time_limit` s or `rss_limit` bytes."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.perf_counter()
    max_seen = 0
    stopped = None
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            rss = resident_bytes(proc.pid) or 0
            max_seen = max(max_seen, rss)
            elapsed = time.perf_counter() - start
            if rss > rss_limit:
                stopped = f"stopped at {rss / GIB:.1f} GiB RSS after {elapsed:.0f} s"
            elif elapsed > time_limit:
                stopped = f"stopped after {elapsed:.0f} s at {rss / GIB:.1f} GiB RSS"
            if stopped:
                proc.kill()
                proc.wait()
                break
            time.sleep(poll)
        elapsed = time.perf_counter() - start
        log.seek(0)
        text = log.read()
    entry = {
        "elapsed_seconds": elapsed,
        "max_rss_seen_bytes": max_seen,
        "returncode": proc.returncode,
    }
    result = parse_output(text)
    if stopped:
        entry.update(status="stopped", note=stopped)
        epoch = parse_epoch(text)
        if epoch is not None:  # stopped in its evaluation: the epoch's numbers stand
            entry["result"] = epoch
            entry["note"] = stopped + ", in the evaluation after its epoch"
    elif result is None:
        entry.update(status="failed", note=error_line(text))
    else:
        entry.update(status="ok", result=result)
    return entry


def code_version() -> str:
    """The commit the cases run, marked "+changes" when the package differs from it:
    every row of the results names the code that made it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--", "tempint") else "")


def machine_line() -> str:
    from bench.cases import machine_info

    info = machine_info("cpu")
    return (
        f"{info['cpu']}, {info['logical_cores']} logical cores, {info['memory_gib']} GiB, "
        f"torch {info['torch']}, Python {info['python']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--movielens-root", help="folder holding ml-100k.u.data (or ml-100k/u.data)"
    )
    parser.add_argument("--groups", nargs="+", choices=GROUPS, default=list(GROUPS))
    parser.add_argument("--models", nargs="+", help="only these models, in every group")
    parser.add_argument("--time-limit", type=float, default=900.0, help="seconds per case")
    parser.add_argument("--rss-limit-gib", type=float, default=12.0)
    parser.add_argument("--out", default=str(REPO / "bench" / "scale"))
    parser.add_argument(
        "--keep", action="store_true", help="keep the cases of results.json not rerun now"
    )
    args = parser.parse_args(argv)
    from tempint.config import CONF_DIR

    root = str(Path(args.movielens_root).resolve()) if args.movielens_root else None
    cases = plan_cases(args.groups, root, Path(CONF_DIR), args.models)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    entries: list[dict] = []
    kept_root = None
    if args.keep and json_path.exists():
        kept = json.loads(json_path.read_text())
        entries, kept_root = kept["entries"], kept["meta"].get("movielens_root")
    meta = {
        "command": 'python bench/scale/run.py --movielens-root "$MOVIELENS_ROOT"',
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_line(),
        "time_limit": args.time_limit,
        "rss_limit_gib": args.rss_limit_gib,
        "movielens_root": root or kept_root,  # shown as $MOVIELENS_ROOT in the commands
    }

    def key(case: dict) -> tuple:
        return (case["group"], case["model"], tuple(case["overrides"]))

    for case in cases:
        argv_case = case_argv(case)
        print(f"[scale] {shlex.join(argv_case)}", flush=True)
        entry = run_watched(
            [sys.executable, *argv_case[1:]], args.time_limit, args.rss_limit_gib * GIB
        )
        entry.update(case=case, argv=argv_case, code=code_version())
        entries = [e for e in entries if key(e["case"]) != key(case)] + [entry]
        order = {g: i for i, g in enumerate(GROUPS)}
        entries.sort(key=lambda e: order.get(e["case"]["group"], len(GROUPS)))
        print(f"[scale]   {entry['status']} in {entry['elapsed_seconds']:.0f} s", flush=True)
        json_path.write_text(json.dumps({"meta": meta, "entries": entries}, indent=1))
        (out_dir / "results.md").write_text(render(entries, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
