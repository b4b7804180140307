"""Speed and memory of every model: `python bench/run.py` (`make bench`).

Every case (model × sampler × data shape, the bare-arithmetic reference, the evaluation
scaling grid) runs in a fresh process, so its peak memory is its own and a case that
fails or overruns its time limit is reported as such while the others go on. The
report goes to stdout and to `results.md` / `results.json` in `--out` (written after
every case, so an interrupted run keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.table import render  # noqa: E402

__all__ = [
    "MODEL_ORDER",
    "CROSS_RNN_SAMPLERS",
    "discover_models",
    "model_dim",
    "plan_cases",
    "run_isolated",
    "run_case",
    "error_line",
    "main",
]

BENCH_DIR = Path(__file__).resolve().parent
CONF_DIR = BENCH_DIR.parent / "conf"
MODEL_ORDER = (
    "jodie",
    "limnet",
    "deepred",
    "tlstm",
    "imn",
    "static",
    "repeat_aware",
    "popularity",
    "recent_popularity",
    "recency",
)
CROSS_RNN_SAMPLERS = {
    "jodie": ("tbatch", "sequence", "chrono"),
    "limnet": ("tbatch", "sequence", "chrono"),
}
NATURAL_SAMPLER = {"deepred": "shuffle"}  # every other model trains on t-batches
SHAPES = ("wikipedia", "reddit", "lastfm")
QUICK = {
    "models": ("jodie", "limnet", "recency", "static"),
    "shapes": ("wikipedia",),
    "samplers": ("tbatch",),
}
SCALING = {
    "full": {"interactions": [50_000, 100_000], "items": [1_000, 4_000]},
    "quick": {"interactions": [20_000, 40_000], "items": [500, 2_000]},
}
REFERENCE = {"interactions": 126_000, "batch_size": 1024}
# models trained once per precision in one process (ratios to float32 in one run)
PRECISION = {"models": ("jodie", "limnet"), "precisions": ("32", "bf16-mixed")}


# ---- what to run ---------------------------------------------------------------------
def discover_models(conf_dir: Path = CONF_DIR) -> list[str]:
    """Every `conf/model/*.yaml`, in the order of MODEL_ORDER, unknown names after."""
    found = {p.stem for p in (conf_dir / "model").glob("*.yaml")}
    known = [m for m in MODEL_ORDER if m in found]
    return known + sorted(found - set(known))


def model_dim(name: str, conf_dir: Path = CONF_DIR) -> int | None:
    """The model's `dim` (its base's, for a wrapper); None for heuristics or no config."""
    from omegaconf import OmegaConf

    path = conf_dir / "model" / f"{name}.yaml"
    if not path.exists():
        return None
    cfg = OmegaConf.load(path)
    dim = cfg.get("dim")
    base = cfg.get("base")
    if dim is None and base is not None:
        dim = base.get("dim")
    return None if dim is None else int(dim)


def samplers_for(model: str, samplers: Sequence[str] | None) -> list[str]:
    """Each sampler for the cross-RNNs (filtered by --samplers); else the model's own."""
    if model in CROSS_RNN_SAMPLERS:
        return [s for s in CROSS_RNN_SAMPLERS[model] if samplers is None or s in samplers]
    return [NATURAL_SAMPLER.get(model, "tbatch")]


def plan_cases(
    models: Sequence[str], shapes: Sequence[str], samplers: Sequence[str] | None = None
) -> list[dict[str, str]]:
    """(model, sampler, shape) of every case, shape-major so the small data runs first."""
    return [
        {"model": m, "sampler": s, "shape": shape}
        for shape in shapes
        for m in models
        for s in samplers_for(m, samplers)
    ]


# ---- running one case in its own process ---------------------------------------------
def error_line(err: BaseException) -> str:
    """The last line of the innermost cause: what went wrong, not where it was wrapped."""
    while err.__cause__ is not None or (
        err.__context__ is not None and not err.__suppress_context__
    ):
        err = err.__cause__ or err.__context__
    lines = [ln.strip() for ln in "".join(traceback.format_exception_only(err)).splitlines()]
    return next((ln for ln in reversed(lines) if ln), type(err).__name__)


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    return next((ln for ln in reversed(lines) if ln), "")


def run_isolated(argv: Sequence[str], result_path: Path, time_limit: float) -> dict[str, Any]:
    """Run `argv` in a new session, kill its whole group past `time_limit` seconds.

    The process writes its result as JSON to `result_path`; without one, the last line
    it printed to stderr is the error.
    """
    result_path = Path(result_path)
    log_path = result_path.with_suffix(".log")
    start = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=time_limit)
        except BaseException as err:  # past the limit, or the benchmark itself interrupted
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if not isinstance(err, subprocess.TimeoutExpired):
                raise
            return {
                "status": "timeout",
                "time_limit": time_limit,
                "wall_seconds": time.perf_counter() - start,
            }
    wall = time.perf_counter() - start
    if result_path.exists():
        result = json.loads(result_path.read_text())
        result.setdefault("status", "ok" if code == 0 else "failed")
    else:
        result = {"status": "failed", "error": _last_line(log_path) or f"exit code {code}"}
    result.setdefault("wall_seconds", wall)
    result["time_limit"] = time_limit
    return result


def run_case(spec: dict[str, Any], time_limit: float, workdir: Path) -> dict[str, Any]:
    """One spec (see bench/cases.py) in a fresh interpreter."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(suffix=".json", dir=workdir)
    os.close(fd)
    os.unlink(name)
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--case",
        json.dumps(spec),
        "--result",
        name,
    ]
    return run_isolated(argv, Path(name), time_limit)


def _child(spec_json: str, result: str) -> int:
    """Inside the case's process: measure, write the result, never raise."""
    from bench.cases import run_spec

    spec = json.loads(spec_json)
    try:
        out = {"status": "ok", **run_spec(spec)}
        code = 0
    except BaseException as err:  # noqa: BLE001 - every failure is a table entry
        out = {"status": "failed", "error": error_line(err)}
        code = 1
    tmp = Path(result + ".part")
    tmp.write_text(json.dumps(out, default=str))
    tmp.replace(result)
    return code


# ---- the whole benchmark ---------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="wikipedia only, jodie+limnet+recency+static, tbatch only (< 3 min)",
    )
    p.add_argument("--models", nargs="+", help="model configs (default: every conf/model/*.yaml)")
    p.add_argument(
        "--shapes",
        nargs="+",
        help="wikipedia (real data) or a generated shape: reddit, lastfm, tiny",
    )
    p.add_argument("--samplers", nargs="+", help="samplers of the cross-RNNs (jodie, limnet)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs per case")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--threads", type=int, default=_cores(), help="torch threads (default: all cores)"
    )
    p.add_argument("--time-limit", type=float, default=900.0, help="seconds per case")
    p.add_argument(
        "--out", type=Path, default=BENCH_DIR, help="folder for results.md and results.json"
    )
    p.add_argument("--no-reference", action="store_true", help="skip the bare-arithmetic reference")
    p.add_argument("--no-scaling", action="store_true", help="skip the evaluation scaling grid")
    p.add_argument(
        "--no-precision", action="store_true", help="skip the float32 vs bf16-mixed comparison"
    )
    p.add_argument(
        "--precisions",
        nargs="+",
        default=list(PRECISION["precisions"]),
        help="trainer.precision values compared (the first is the reference)",
    )
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs={args.epochs} must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads={args.threads} must be at least 1")
    return args


def _cores() -> int:
    """The cores this process may run on (a cluster job's allocation, not the node's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_shapes(shapes: Sequence[str]) -> None:
    from tempint.data.synthetic import SHAPES as GENERATED

    known = {"wikipedia", *GENERATED}
    unknown = [s for s in shapes if s not in known]
    if unknown:
        raise SystemExit(
            f"bench/run.py: unknown shape(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(known))}"
        )


def _write(results: dict, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    text = render(results)
    for name, content in (
        ("results.json", json.dumps(results, indent=2, default=str) + "\n"),
        ("results.md", text),
    ):
        tmp = out / (name + ".part")
        tmp.write_text(content)
        tmp.replace(out / name)
    return text


def _progress(i: int, n: int, label: str, r: dict) -> None:
    if r["status"] == "ok" and "seconds_per_epoch" in r:
        what = (
            f"{r['seconds_per_epoch']:.1f} s/epoch, eval {r['eval_interactions_per_second']:,.0f}/s, "
            f"{r['peak_rss_bytes'] / 2**30:.2f} GiB"
        )
    elif r["status"] == "ok":
        what = "done"
    elif r["status"] == "timeout":
        what = f"timed out after {r['time_limit']:.0f} s"
    else:
        what = f"failed: {r.get('error', '')}"
    print(
        f"[{i}/{n}] {label}: {what} ({r.get('wall_seconds', 0):.0f} s)", file=sys.stderr, flush=True
    )


def _label(spec: dict) -> str:
    if spec["kind"] == "reference":
        return f"bare GRU cells d={spec['dims']}"
    if spec["kind"] == "scaling":
        return f"{spec['model']} evaluation scaling"
    if spec["kind"] == "precision":
        return f"{'+'.join(spec['models'])} in {' vs '.join(spec['precisions'])}"
    return f"{spec['model']}/{spec['sampler']}/{spec['shape']}"


def _record(results: dict, spec: dict, r: dict) -> None:
    """File one job's result: the machine once, the ratio to bare arithmetic per case."""
    machine = r.pop("machine", None)
    if machine and not results["machine"]:
        results["machine"] = machine
    if spec["kind"] == "reference":
        r.pop("peak_rss_bytes", None)
        results["reference"] = r
    elif spec["kind"] == "scaling":
        results["scaling"] = r
    elif spec["kind"] == "precision":
        r.pop("peak_rss_bytes", None)
        results["precision"] = r
    else:
        rate = (results["reference"].get("rates") or {}).get(str(r.get("dim")))
        if r["status"] == "ok" and rate and r.get("learned"):
            r["ratio_to_bare"] = r["train_interactions_per_second"] / rate
        case = {k: spec[k] for k in ("model", "sampler", "shape")}
        results["cases"].append({**case, **r})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.case:
        return _child(args.case, args.result)
    quick = QUICK if args.quick else {}
    available = discover_models()
    models = list(args.models or quick.get("models") or available)
    shapes = list(args.shapes or quick.get("shapes") or SHAPES)
    samplers = args.samplers or quick.get("samplers")
    _check_shapes(shapes)
    common = {"device": args.device, "threads": args.threads}
    plan = plan_cases(models, shapes, samplers)
    results: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": {
            "quick": args.quick,
            "models": models,
            "shapes": shapes,
            "samplers": samplers,
            "epochs": args.epochs,
            "device": args.device,
            "threads": args.threads,
            "time_limit": args.time_limit,
        },
        "machine": {},
        "reference": {"status": "skipped"},
        "cases": [],
        "scaling": {"status": "skipped"},
        "precision": {"status": "skipped"},
    }
    jobs: list[dict] = []  # the reference first: every case's ratio needs it
    if not args.no_reference:
        dims = sorted({d for m in models if (d := model_dim(m)) is not None}) or [32]
        jobs.append({"kind": "reference", "dims": dims, **REFERENCE})
    jobs += [{"kind": "train", **case, "epochs": args.epochs} for case in plan]
    precision_models = [m for m in PRECISION["models"] if m in models]
    if not args.no_precision and precision_models and len(args.precisions) > 1:
        jobs.append(
            {
                "kind": "precision",
                "models": precision_models,
                "shape": shapes[0],
                "sampler": "tbatch",
                "precisions": list(args.precisions),
                "epochs": args.epochs,
            }
        )
    if not args.no_scaling:
        sizes = SCALING["quick" if args.quick else "full"]
        jobs.append({"kind": "scaling", "model": "limnet", **sizes})
    with tempfile.TemporaryDirectory(prefix="tempint-bench-") as tmp:
        for i, spec in enumerate(jobs, 1):
            if spec["kind"] == "train" and spec["model"] not in available:
                r = {"status": "failed", "error": f"no config conf/model/{spec['model']}.yaml"}
            else:
                r = run_case({**spec, **common}, args.time_limit, Path(tmp))
            _progress(i, len(jobs), _label(spec), r)
            _record(results, spec, r)
            _write(results, args.out)
    print(_write(results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
