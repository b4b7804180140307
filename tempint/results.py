"""Finished runs as one polars table, and the figures of `notebooks/results.ipynb`.

One row per run (its `metrics.json`): a multirun of any sweep, several multiruns side by
side, or runs fetched from W&B all become the same table. Every figure groups that table
by model and by the key a sweep varied, and shows the spread over seeds, so no single
seed is read as a result.

Columns: `run` (the run directory), `sweep` (its parent, the multirun), `job`, `model`,
`dataset`, `seed`, `overrides` (Hydra's command-line overrides of the run), every numeric
metric under its own key (`test/mrr`, `train/seconds_per_epoch`, ...) and every config
leaf as `cfg.<dotted key>` (`cfg.model.layers`, `cfg.sampler.length`, ...).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from tempint.errors import UserError

__all__ = [
    "ABLATIONS",
    "BadRunFileWarning",
    "load_runs",
    "runs_table",
    "runs_from_wandb",
    "fetch_wandb",
    "spread",
    "swept_runs",
    "model_comparison",
    "ablation",
    "training_speed",
    "save_figures",
]

# figure name -> (config column the sweep varies, axis label); conf/sweep/ has one grid each
ABLATIONS: dict[str, tuple[str, str]] = {
    "time_features": ("cfg.model.time_features", "cyclic time features"),
    "normalisation": ("cfg.model.normalize", "L2-normalised embeddings"),
    "stacked_layers": ("cfg.model.layers", "stacked memory layers"),
    "sequence_length": ("cfg.sampler.length", "window length L (sequence sampler)"),
}
BASELINES = ("recency", "popularity")


# ---- loading -----------------------------------------------------------------------
def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, (list, tuple)):
        out[prefix] = json.dumps(value)
    else:
        out[prefix] = value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _overrides(run_dir: Path) -> str:
    """Hydra's record of the run's command-line overrides ('' for runs made in-process)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return ""
    from omegaconf import OmegaConf

    return " ".join(str(o) for o in OmegaConf.load(path))


def _row(metrics: Mapping[str, Any], run: str, sweep: str, overrides: str) -> dict[str, Any]:
    config = metrics.get("config") or {}
    job = Path(run).name
    row: dict[str, Any] = {
        "run": run,
        "sweep": sweep,
        "job": int(job) if job.isdigit() else None,
        "model": metrics.get("model"),
        "dataset": metrics.get("dataset"),
        "seed": config.get("seed"),
        "overrides": overrides,
    }
    for key, value in metrics.items():
        if "/" in key and (value is None or _is_number(value)):
            row[key] = value
    flat: dict[str, Any] = {}
    _flatten(config, "", flat)
    row.update({f"cfg.{k}": v for k, v in flat.items()})
    return row


def _column(values: list) -> pl.Series:
    """One typed column from the values of many runs (a key may be int in one, absent in another)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        dtype: Any = pl.Boolean
    elif present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        dtype = pl.Int64
    elif present and all(_is_number(v) for v in present):
        dtype = pl.Float64
        values = [None if v is None or math.isnan(float(v)) else float(v) for v in values]
    else:
        dtype = pl.String
        values = [None if v is None else str(v) for v in values]
    return pl.Series(values=values, dtype=dtype)


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return pl.DataFrame({k: _column([row.get(k) for row in rows]) for k in keys})


def _job_order(path: Path) -> tuple:
    """Multirun jobs in launch order (2 before 10), so tables and axes follow the sweep."""
    parts = path.parent.parts
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


class BadRunFileWarning(UserWarning):
    """A metrics.json that cannot be read as a run's results; it is skipped."""


def _read_run(path: Path) -> dict | None:
    """The results of one run, or None (with a warning naming the file) when unreadable:
    one truncated or emptied file must not hide every other run of a sweep."""
    try:
        text = path.read_text()
        metrics = json.loads(text) if text.strip() else None
        problem = None if isinstance(metrics, dict) else f"holds {text.strip()[:20]!r}, not a run"
        if not text.strip():
            problem = "is empty"
    except (OSError, UnicodeDecodeError, ValueError) as err:
        problem = f"cannot be read ({str(err).splitlines()[0]})"
    if problem:
        warnings.warn(BadRunFileWarning(f"{path} {problem}; skipped"), stacklevel=3)
        return None
    return metrics


def load_runs(*roots: str | Path) -> list[dict]:
    """Every `metrics.json` under the given run or multirun directories, in launch order;
    each dict also holds its run directory under `_path`. Unreadable files are skipped
    with a `BadRunFileWarning` each; a root that does not exist is a `UserError`."""
    runs = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise UserError(f"{root}: no such file or directory; give a run or multirun folder")
        files = [root] if root.is_file() else sorted(root.rglob("metrics.json"), key=_job_order)
        for path in files:
            metrics = _read_run(path)
            if metrics is None:
                continue
            metrics["_path"] = str(path.parent)
            runs.append(metrics)
    return runs


def runs_table(*roots: str | Path) -> pl.DataFrame:
    """Every `metrics.json` under the given run or multirun directories, one row each."""
    rows = []
    for metrics in load_runs(*roots):
        run_dir = Path(metrics.pop("_path"))
        rows.append(_row(metrics, str(run_dir), str(run_dir.parent), _overrides(run_dir)))
    if not rows:
        where = ", ".join(str(r) for r in roots)
        raise UserError(f"no metrics.json under {where}; point it at a run or multirun directory")
    return _frame(rows)


def runs_from_wandb(runs: Iterable[Any]) -> pl.DataFrame:
    """The same table from W&B runs (objects with `.config`, `.summary`, `.name`, `.group`).

    The summary holds the metrics.json values train.py logged at the end; the config is
    the resolved config, so `cfg.*` columns line up with those of local runs.
    """
    rows = []
    for run in runs:
        summary = {k: v for k, v in dict(run.summary).items() if not k.startswith("_")}
        config = dict(run.config)
        target = str((config.get("model") or {}).get("_target_", ""))
        metrics = {**summary, "config": config, "model": target.rsplit(".", 1)[-1] or None}
        metrics["dataset"] = (config.get("data") or {}).get("name")
        row = _row(metrics, f"wandb:{run.name}", f"wandb:{run.group}", "")
        rows.append(row)
    if not rows:
        raise UserError("the W&B query returned no runs")
    return _frame(rows)


def fetch_wandb(path: str = "tempint", **filters: Any) -> pl.DataFrame:
    """Runs of a W&B project ('entity/project'); needs the network and an API key."""
    import wandb

    return runs_from_wandb(wandb.Api().runs(path, filters=filters or None))


# ---- summaries ---------------------------------------------------------------------
def spread(df: pl.DataFrame, by: list[str], metric: str = "test/mrr") -> pl.DataFrame:
    """Mean, standard deviation (0 for one run) and count of `metric` per group."""
    return (
        df.filter(pl.col(metric).is_not_null())
        .group_by(by, maintain_order=True)
        .agg(
            pl.col(metric).mean().alias("mean"),
            pl.col(metric).std().fill_null(0.0).alias("std"),
            pl.col(metric).count().alias("runs"),
        )
        .sort(by)
    )


def swept_runs(df: pl.DataFrame, column: str) -> pl.DataFrame:
    """Runs where `column` has a value; only those of the sweep that varied it, if known."""
    df = df.filter(pl.col(column).is_not_null())
    key = column.removeprefix("cfg.") + "="
    varied = df.filter(pl.col("overrides").str.contains(key, literal=True))
    return varied if varied.height else df


# ---- figures -----------------------------------------------------------------------
def _figure(width: float = 7.0, height: float = 4.0, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _bars(ax, df: pl.DataFrame, metric: str, ylabel: str) -> None:
    stats = spread(df, ["model"], metric).sort("mean", descending=True)
    names = stats["model"].to_list()
    ax.bar(names, stats["mean"].to_list(), yerr=stats["std"].to_list(), capsize=4, color="C0")
    for x, name in enumerate(names):
        values = df.filter(pl.col("model") == name)[metric].drop_nulls().to_list()
        ax.plot([x] * len(values), values, "k.", alpha=0.6)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=30)


def model_comparison(df: pl.DataFrame, metric: str = "test/mrr"):
    """Each model's MRR (bars: mean ± sd over seeds, dots: runs), heuristics as lines.

    The right panel is the same on `new` interactions (items the user never had), where
    remembering the user's past items cannot help.
    """
    split, _, name = metric.partition("/")
    panels = [(metric, f"{split} {name}")]
    if f"{metric}/new" in df.columns and df[f"{metric}/new"].drop_nulls().len():
        panels.append((f"{metric}/new", f"{split} {name}, new items only"))
    fig, axes = _figure(4.0 + 3.5 * len(panels), 4.2, ncols=len(panels))
    for ax, (column, label) in zip(axes, panels):
        _bars(ax, df, column, label)
        suffix = column.removeprefix(f"{split}/{name}")
        for i, baseline in enumerate(BASELINES):
            col = f"{split}/{baseline}/{name}{suffix}"
            if col in df.columns and df[col].drop_nulls().len():
                ax.axhline(df[col].mean(), ls="--", color=f"C{i + 1}", label=baseline)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(title="heuristic, same split", fontsize=8)
    fig.suptitle(f"Model comparison ({df.height} runs)")
    return fig


def ablation(df: pl.DataFrame, column: str, metric: str = "test/mrr", label: str | None = None):
    """MRR against the swept value of `column`, one line per model, mean ± sd over seeds.

    None when fewer than two values of `column` were run: nothing to compare.
    """
    if column not in df.columns:
        return None
    runs = swept_runs(df, column)
    values = runs[column].drop_nulls().unique(maintain_order=True).to_list()
    if runs[column].dtype != pl.String:
        values = sorted(values)  # numbers and booleans in order, names in sweep order
    if len(values) < 2:
        return None
    stats = spread(runs, ["model", column], metric)
    positions = {v: i for i, v in enumerate(values)}
    fig, (ax,) = _figure(6.5, 4.0)
    for i, model in enumerate(stats["model"].unique(maintain_order=True).to_list()):
        part = stats.filter(pl.col("model") == model)
        xs = [positions[v] for v in part[column].to_list()]
        ax.errorbar(
            xs,
            part["mean"].to_list(),
            yerr=part["std"].to_list(),
            marker="o",
            capsize=4,
            color=f"C{i}",
            label=str(model),
        )
    ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set_xlabel(label or column.removeprefix("cfg."))
    ax.set_ylabel(f"{metric} (mean ± sd over seeds)")
    ax.legend(fontsize=8)
    ax.set_title(f"{label or column}: {runs.height} runs")
    return fig


def training_speed(df: pl.DataFrame):
    """Seconds per training epoch and training interactions per second of each model."""
    panels = [
        (c, label)
        for c, label in (
            ("train/seconds_per_epoch", "seconds per epoch"),
            ("train/interactions_per_second", "training interactions / s"),
        )
        if c in df.columns and df[c].drop_nulls().len()
    ]
    if not panels:
        return None
    fig, axes = _figure(4.0 + 3.5 * len(panels), 4.2, ncols=len(panels))
    for ax, (column, label) in zip(axes, panels):
        _bars(ax, df, column, label)
        ax.set_yscale("log")
    fig.suptitle("Training speed (mean ± sd over runs)")
    return fig


def save_figures(
    df: pl.DataFrame, out_dir: str | Path, metric: str = "test/mrr"
) -> dict[str, Path]:
    """Every figure the table can support, as `<out_dir>/<name>.png`; {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "model_comparison": model_comparison(df, metric),
        "training_speed": training_speed(df),
    }
    for name, (column, label) in ABLATIONS.items():
        figures[name] = ablation(df, column, metric, label)
    written = {}
    for name, fig in figures.items():
        if fig is not None:
            written[name] = out / f"{name}.png"
            fig.savefig(written[name], dpi=120)
    return written
