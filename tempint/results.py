"""Finished runs as one polars table, and the figures of `notebooks/results.ipynb`.

One row per run (its `metrics.json`): a multirun of any sweep, several multiruns side by
side, or runs fetched from W&B all become the same table. Every figure groups that table
by model and by the key a sweep varied, and shows the spread over seeds, so no single
seed is read as a result.

Numbers measured under different protocols or configurations are never pooled: every
summary and figure groups by `dataset`, `protocol` and `config_id`, and only seeds are
averaged.

Columns: `run` (the run directory), `sweep` (its parent, the multirun), `job`, `model`,
`dataset`, `seed`, `protocol` (split, mode, ties, negatives, batch size: `protocol_of`),
`configuration` and `config_id` (the run's config less its seed and where it was
written: `configuration_of`), `overrides` (Hydra's command-line overrides of the run), every numeric
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
    "protocol_of",
    "configuration_of",
    "GROUP",
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
# what a number was measured on and under; figures and tables never pool across these
GROUP = ["dataset", "protocol"]
# config keys that do not change what a run measures (seeds are averaged over)
_NOT_CONFIGURATION = {
    "seed",
    "output_dir",
    "group",
    "tags",
    "resume",
    "threads",
    "logger",
    "callbacks",
    "hydra",
    "task_name",
    "data",
    "eval",
}


def protocol_of(metrics: Mapping[str, Any]) -> str:
    """The protocol a run's numbers were measured under, as one readable key: split mode,
    weights (frozen / online), tie policy, negatives and evaluation batch size."""
    proto = metrics.get("protocol") or {}
    if not isinstance(proto, Mapping):
        proto = {}
    split = metrics.get("split") or {}
    split_mode = split.get("mode", "position") if isinstance(split, Mapping) else "position"
    negatives = proto.get("negatives", "all")
    negatives = "all items" if negatives == "all" else f"{negatives} sampled"
    if proto.get("exclude_same_time"):
        negatives += " less same-time"
    if proto.get("min_train_events"):
        negatives += f", >= {proto['min_train_events']} training events"
    return (
        f"{proto.get('name', 'streaming')}: {split_mode} split, {metrics.get('mode', '?')}, "
        f"{metrics.get('ties', '?')} ties, {negatives}, batch {proto.get('batch_size', 1)}"
    )


def configuration_of(metrics: Mapping[str, Any]) -> tuple[str, str]:
    """(label, id) of a run's configuration: its config less seed, paths, data and
    protocol (columns of their own). The label is the model and its non-default choices."""
    import hashlib

    config = dict(metrics.get("config") or {})
    kept = {k: v for k, v in config.items() if k not in _NOT_CONFIGURATION}
    digest = hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()
    choices = metrics.get("choices") or {}
    extras = [
        f"{k}={choices[k]}"
        for k in ("experiment", "ablation")
        if choices.get(k) not in (None, "none", "default")
    ]
    label = " ".join([str(metrics.get("model", "?")), *extras])
    return label, digest[:8]


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
        "protocol": protocol_of(metrics),
        "overrides": overrides,
    }
    row["configuration"], row["config_id"] = configuration_of(metrics)
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


def _groups(df: pl.DataFrame, keys: list[str] | None = None) -> list[tuple[dict, pl.DataFrame]]:
    """The runs split by `keys` (default `GROUP`: dataset and protocol), in run order."""
    keys = [k for k in (keys or GROUP) if k in df.columns]
    if not keys:
        return [({}, df)]
    out = []
    for values in df.select(keys).unique(maintain_order=True).rows():
        mask = pl.lit(True)
        for k, v in zip(keys, values):
            mask = mask & (pl.col(k).is_null() if v is None else pl.col(k) == v)
        out.append((dict(zip(keys, values)), df.filter(mask)))
    return out


def _group_title(key: Mapping[str, Any]) -> str:
    return " · ".join(str(v) for v in key.values())


def _bars(ax, df: pl.DataFrame, metric: str, ylabel: str) -> None:
    """One bar per configuration (mean ± sd over its seeds), its runs as dots."""
    by = ["model", "config_id", "configuration"] if "config_id" in df.columns else ["model"]
    stats = spread(df, by, metric).sort("mean", descending=True)
    label = "configuration" if "configuration" in stats.columns else "model"
    names = stats[label].to_list()
    xs = list(range(len(names)))
    ax.bar(xs, stats["mean"].to_list(), yerr=stats["std"].to_list(), capsize=4, color="C0")
    for x, row in zip(xs, stats.iter_rows(named=True)):
        mask = pl.lit(True)
        for k in by:
            mask = mask & (pl.col(k) == row[k])
        values = df.filter(mask)[metric].drop_nulls().to_list()
        ax.plot([x] * len(values), values, "k.", alpha=0.6)
    ax.set_xticks(xs, names)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=30)


def model_comparison(df: pl.DataFrame, metric: str = "test/mrr"):
    """Each configuration's MRR (bars: mean ± sd over seeds, dots: runs), heuristics as
    lines; one row of panels per dataset and protocol, never pooled across them.

    The right panel is the same on `new` interactions (items the user never had), where
    remembering the user's past items cannot help.
    """
    split, _, name = metric.partition("/")
    panels = [(metric, f"{split} {name}")]
    if f"{metric}/new" in df.columns and df[f"{metric}/new"].drop_nulls().len():
        panels.append((f"{metric}/new", f"{split} {name}, new items only"))
    groups = _groups(df)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.0 + 3.5 * len(panels), 4.2 * len(groups)), layout="constrained")
    for g, (key, part) in enumerate(groups):
        for p, (column, label) in enumerate(panels):
            ax = fig.add_subplot(len(groups), len(panels), g * len(panels) + p + 1)
            _bars(ax, part, column, label)
            ax.set_title(_group_title(key), fontsize=8)
            suffix = column.removeprefix(f"{split}/{name}")
            for i, baseline in enumerate(BASELINES):
                col = f"{split}/{baseline}/{name}{suffix}"
                if col in part.columns and part[col].drop_nulls().len():
                    ax.axhline(part[col].mean(), ls="--", color=f"C{i + 1}", label=baseline)
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
    keys = [k for k in GROUP if k in runs.columns]
    stats = spread(runs, [*keys, "model", column], metric)
    positions = {v: i for i, v in enumerate(values)}
    fig, (ax,) = _figure(6.5, 4.0)
    lines = _groups(stats, [*keys, "model"])
    several = len({tuple(k[g] for g in keys) for k, _ in lines}) > 1
    for i, (key, part) in enumerate(lines):
        model = key["model"]
        if several:  # never one line across datasets or protocols
            model = f"{model} ({_group_title({g: key[g] for g in keys})})"
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
    from matplotlib.figure import Figure

    groups = _groups(df, ["dataset"])
    fig = Figure(figsize=(4.0 + 3.5 * len(panels), 4.2 * len(groups)), layout="constrained")
    for g, (key, part) in enumerate(groups):
        for p, (column, label) in enumerate(panels):
            ax = fig.add_subplot(len(groups), len(panels), g * len(panels) + p + 1)
            _bars(ax, part, column, label)
            ax.set_yscale("log")
            ax.set_title(_group_title(key), fontsize=8)
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
