"""Config checks that run before the heavy imports, so a typo fails in a fraction of a second."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from tempint.errors import ConfigError

__all__ = ["CONF_DIR", "check_cli_overrides", "validate_config", "group_options"]

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# groups whose option names are file stems under conf/
_GROUPS = (
    "data",
    "model",
    "sampler",
    "optimizer",
    "trainer",
    "callbacks",
    "logger",
    "eval",
    "ablation",
    "experiment",
    "debug",
    "sweep",
    "hparams_search",
    "hydra/launcher",
)


def group_options(group: str) -> list[str]:
    folder = CONF_DIR / group
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))


def check_cli_overrides(argv: Sequence[str]) -> None:
    """Unknown group choices (`model=jodei`) end with the list of valid ones."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if key not in _GROUPS or not value or value == "null":
            continue
        known = group_options(key)
        for choice in value.split(","):
            if choice and choice not in known:
                raise ConfigError(
                    f"{key} '{choice}' is not known; known: {', '.join(known)} ({key}=...)"
                )


def _number(cfg: DictConfig, key: str):
    node: object = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return None
        node = node[part]
    return node


def validate_config(cfg: DictConfig) -> None:
    """Types and ranges a run needs, each failure one sentence naming the key."""
    checks = [
        ("optimizer.lr", lambda v: isinstance(v, (int, float)) and v > 0, "a positive number"),
        ("data.val", lambda v: isinstance(v, (int, float)) and 0 < v < 1, "a fraction in (0, 1)"),
        ("data.test", lambda v: isinstance(v, (int, float)) and 0 < v < 1, "a fraction in (0, 1)"),
        ("data.history_k", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
        ("trainer.max_epochs", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        ("sampler.length", lambda v: isinstance(v, int) and v >= 2, "an integer >= 2"),
        ("sampler.batch_size", lambda v: isinstance(v, int) and v >= 1, "a positive integer"),
        ("sampler.num_windows", lambda v: isinstance(v, int) and v >= 1, "a positive integer"),
        ("model.dim", lambda v: isinstance(v, int) and v >= 1, "a positive integer"),
        ("model.history_k", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        ("model.k", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ]
    for key, ok, expected in checks:
        value = _number(cfg, key)
        if value is not None and (isinstance(value, bool) or not ok(value)):
            raise ConfigError(f"{key}={value!r} is invalid; expected {expected}")
    val, test = _number(cfg, "data.val"), _number(cfg, "data.test")
    if isinstance(val, (int, float)) and isinstance(test, (int, float)) and val + test >= 1:
        raise ConfigError(
            f"data.val + data.test = {val + test:g} leaves no training data; "
            "the fractions must sum to less than 1"
        )
    eval_cfg = cfg.get("eval") or {}
    for key, allowed in (
        ("mode", ("frozen", "online")),
        ("ties", ("average", "optimistic", "pessimistic")),
        ("scorer", ("auto", "dot", "l2", "native")),
    ):
        value = eval_cfg.get(key)
        if value is not None and value not in allowed:
            raise ConfigError(f"eval.{key}={value!r} is unknown; use one of {', '.join(allowed)}")
    _validate_protocol(eval_cfg)


def _validate_protocol(eval_cfg) -> None:
    """The protocol keys of `eval` (conf/eval/tgb.yaml, ...), checked before any training."""

    def count(key: str, lowest: int):
        value = eval_cfg.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise ConfigError(f"eval.{key}={value!r} is invalid; expected an integer >= {lowest}")
        return value

    batch_size = count("batch_size", 1) or 1
    count("num_negatives", 1)
    count("min_train_events", 0)
    if batch_size > 1 and eval_cfg.get("mode", "frozen") != "frozen":
        raise ConfigError(
            f"eval.batch_size={batch_size} scores batches with frozen weights; "
            "set eval.mode=frozen or eval.batch_size=1"
        )
    strategies = list(eval_cfg.get("pair_negatives") or [])
    unknown = [s for s in strategies if s not in ("random", "historical", "inductive")]
    if unknown:
        raise ConfigError(
            f"eval.pair_negatives={unknown} is unknown; use some of random, historical, inductive"
        )
    if strategies and batch_size < 2:
        raise ConfigError(
            "eval.pair_negatives draws one negative per batch; set eval.batch_size > 1"
        )
    split = eval_cfg.get("split") or {}
    mode = split.get("split") if hasattr(split, "get") else None
    if mode is not None and mode not in ("position", "time_quantile"):
        raise ConfigError(f"eval.split.split={mode!r} is unknown; use position or time_quantile")
