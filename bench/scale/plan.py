"""Which scale cases run, in what order, with which targets.

A case is a list of `tempint-train` overrides run by `bench/scale/case.py` in its own
process. The groups follow the questions asked of the package at scale: every model on
real MovieLens 100K against popularity, then generated streams of Amazon's and
MovieLens 20M's shapes, largest last, so an interrupted run keeps the small answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.cases import HISTORY_K

GIB = 2**30
GROUPS = ("movielens", "amazon", "ml20m_quarter", "ml20m_full")
FIRST_MODELS = ("popularity", "recency")  # the references every other row is read against
SCALE_SAMPLERS = (
    ("popularity", "tbatch"),
    ("recency", "tbatch"),
    ("limnet", "chrono"),
    ("jodie", "tbatch"),
)


def discover_models(conf_dir: Path) -> list[str]:
    """Every model config, the references first."""
    names = sorted(p.stem for p in (conf_dir / "model").glob("*.yaml"))
    return [m for m in FIRST_MODELS if m in names] + [m for m in names if m not in FIRST_MODELS]


def _sampler_overrides(model: str) -> list[str]:
    if model == "deepred":  # no recurrence: shuffled mini-batches over partner histories
        return ["sampler=shuffle", f"data.history_k={HISTORY_K}"]
    return ["sampler=tbatch"]


def _scale_model(model: str) -> list[str]:
    """JODIE's one-hot static embeddings are (users + items) x items: refused at scale."""
    return ["model.static_embeddings=false"] if model == "jodie" else []


# At scale the scorer is fixed to the model's default: choosing it on validation ranks
# every item once per scorer (three times for JODIE), which at 10^5 items is most of the
# evaluation's time.
SCALE_SCORERS = {"limnet": "dot", "jodie": "native"}


def _scorer(model: str) -> list[str]:
    return [f"eval.scorer={SCALE_SCORERS[model]}"] if model in SCALE_SCORERS else []


def _case(group: str, model: str, overrides: list[str], kind: str = "train", **targets) -> dict:
    return {
        "group": group,
        "model": model,
        "kind": kind,
        "overrides": [f"model={model}", *overrides],
        "targets": targets,
    }


def plan_cases(
    groups: list[str] | tuple[str, ...],
    movielens_root: str | None,
    conf_dir: Path,
    models: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The cases of `groups`, in the order of `GROUPS`; `models` filters every group."""
    cases: list[dict[str, Any]] = []
    if "movielens" in groups:
        if not movielens_root:
            raise ValueError("the movielens group needs --movielens-root")
        data = ["data=movielens_100k", f"data.root={movielens_root}"]
        for model in discover_models(conf_dir):
            cases.append(_case("movielens", model, [*_sampler_overrides(model), *data]))
    if "amazon" in groups:
        # each cross-RNN under the sampler it is meant to scale with (as at ML-20M's shape)
        for model, sampler in SCALE_SAMPLERS:
            overrides = [f"sampler={sampler}", "data=amazon", *_scale_model(model), *_scorer(model)]
            cases.append(_case("amazon", model, overrides, rss_gib=6.0))
    if "ml20m_quarter" in groups:
        data = ["data=ml20m", "data.synthetic.scale=0.25"]
        cases.append(
            _case(
                "ml20m_quarter",
                "limnet",
                ["sampler=chrono", *data, *_scorer("limnet")],
                rss_gib=8.0,
                train_rate=20_000,
            )
        )
        cases.append(
            _case(
                "ml20m_quarter",
                "jodie",
                ["sampler=tbatch", *data, *_scale_model("jodie"), *_scorer("jodie")],
                rss_gib=8.0,
                train_rate=8_000,
            )
        )
    if "ml20m_full" in groups:
        cases.append(_case("ml20m_full", "limnet", ["sampler=chrono", "data=ml20m"], kind="fit"))
    if models:
        cases = [c for c in cases if c["model"] in models]
    return cases


def case_argv(case: dict, python: str = "python") -> list[str]:
    """The command that runs `case`, from the repository root."""
    return [python, "bench/scale/case.py", "--kind", case["kind"], *case["overrides"]]


def check_targets(case: dict, result: dict) -> list[str]:
    """The targets of `case` that `result` misses (empty: all met)."""
    missed = []
    targets = case.get("targets") or {}
    rss = result.get("peak_rss_bytes")
    if "rss_gib" in targets and (rss is None or rss > targets["rss_gib"] * GIB):
        missed.append(f"peak RSS > {targets['rss_gib']:g} GiB")
    rate = result.get("train_interactions_per_second")
    if "train_rate" in targets and (rate is None or rate < targets["train_rate"]):
        missed.append(f"train < {targets['train_rate']:,} ev/s")
    return missed
