"""Config checks that run before the heavy imports, so a typo fails in a fraction of a second."""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from tempint.errors import ConfigError

__all__ = [
    "CONF_DIR",
    "BASELINE_NAMES",
    "PRECISIONS",
    "check_cli_overrides",
    "check_output_folder",
    "check_trainer",
    "validate_config",
    "validate_protocol",
    "group_options",
]

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# the heuristics `eval.baselines` may list (train.BASELINES maps them to their classes)
BASELINE_NAMES = (
    "recency",
    "popularity",
    "recent_popularity",
    "user_frequency",
    "edgebank_unlimited",
    "edgebank_tw",
    "popularity_unseen",
)
# model sizes, at any depth of `model` (a wrapped base model too): positive integers
_MODEL_SIZES = (
    "dim",
    "hidden",
    "layers",
    "state_hidden",
    "attention_size",
    "attention_hidden",
    "time_buckets",
    "num_negatives",
    "length",
    "iterations",
    "history_k",
    "k",
)

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
        ("eval.max_scores_per_block", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
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
    baselines = eval_cfg.get("baselines") or []
    unknown = [b for b in baselines if b not in BASELINE_NAMES]
    if unknown:
        raise ConfigError(
            f"eval.baselines names unknown heuristics {', '.join(map(str, unknown))}; "
            f"known: {', '.join(BASELINE_NAMES)}"
        )
    windows = eval_cfg.get("online_windows")
    if windows is not None and (
        isinstance(windows, bool) or not isinstance(windows, int) or windows < 1
    ):
        raise ConfigError(
            f"eval.online_windows={windows!r} is invalid; expected a positive integer "
            "(the number of online-evaluation windows over the training time span)"
        )
    validate_protocol(eval_cfg)
    _check_model(cfg.get("model"), "model")
    _check_trainer_args(cfg.get("trainer"))
    check_trainer(cfg.get("trainer") or {})


def _check_model(node, prefix: str) -> None:
    """Sizes and cell names at every depth of the model config (a base model's too)."""
    if not isinstance(node, DictConfig):
        return
    for key in node:
        value = node.get(key)
        where = f"{prefix}.{key}"
        if isinstance(value, DictConfig):
            _check_model(value, where)
        elif key in _MODEL_SIZES and value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}={value!r} is invalid; expected a positive integer")
        elif key == "cell" and value is not None:
            from tempint.models.components.cells import CELLS

            if value not in CELLS:
                raise ConfigError(f"{where}={value!r} is unknown; use one of {', '.join(CELLS)}")


def _check_trainer_args(trainer) -> None:
    """Every `trainer.*` key is an argument of lightning.Trainer: a typo such as
    `+trainer.max_epoch=1` would otherwise end in a TypeError after loading the data."""
    if not isinstance(trainer, DictConfig):
        return
    import inspect

    from hydra.utils import get_class

    target = trainer.get("_target_") or "lightning.Trainer"
    known = set(inspect.signature(get_class(target).__init__).parameters) - {"self"}
    for key in trainer:
        if key.startswith("_") or key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"did you mean trainer.{close[0]}? " if close else ""
        raise ConfigError(
            f"trainer.{key} is not an argument of {target}; {hint}"
            f"(remove or rename the trainer.{key} override)"
        )


def check_output_folder(argv: Sequence[str]) -> None:
    """The run (or sweep) folder can take files: not a file, not read-only.

    Checked before Hydra writes its `.hydra/` record there, which would otherwise fail
    with a traceback. The folder's nearest existing ancestor must be a writable folder.
    """
    key = "hydra.sweep.dir" if any(a in ("-m", "--multirun") for a in argv) else "hydra.run.dir"
    folder = None
    for arg in argv:
        name, _, value = arg.lstrip("+").partition("=")
        if name == key and value:
            folder = value
    if folder is None:
        folder = os.environ.get("TEMPINT_OUTPUT_DIR") or (
            "multirun" if key == "hydra.sweep.dir" else "outputs"
        )
    elif "${" in folder:
        return  # an interpolation: known only once Hydra resolves it
    path = Path(folder).expanduser()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return
        if probe.is_symlink():
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "names a file" if probe == path else f"lies under the file {probe}"
        raise ConfigError(f"{key}={folder} {what}; give a folder for the run's outputs")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{key}={folder}: {probe} is not writable (read-only or not yours); "
            f"choose another {key} or TEMPINT_OUTPUT_DIR"
        )


# `trainer.precision` values a run accepts: true half precision would keep memory rows and
# optimiser moments in 16 bits, which the stream's long accumulations do not survive.
PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed")


def check_trainer(trainer) -> None:
    """One process on one device, in a precision the module supports.

    Refused here, before Lightning starts anything: a multi-device trainer would launch
    its processes (and their process group) before the module could say no.
    """
    precision = trainer.get("precision")
    if precision is not None and str(precision) not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision!r} is not supported; use one of {', '.join(PRECISIONS)}"
        )
    devices = trainer.get("devices", 1)
    many = isinstance(devices, bool) or devices in (-1, "-1", "auto")
    if not many and isinstance(devices, int):
        many = devices > 1
    elif not many and isinstance(devices, str):
        many = "," in devices.strip(",") or (devices.isdigit() and int(devices) > 1)
    elif not many and devices is not None:  # a list of device indices
        many = len(list(devices)) > 1
    strategy = str(trainer.get("strategy") or "auto").lower()
    nodes = trainer.get("num_nodes") or 1
    if many or nodes != 1 or any(name in strategy for name in ("ddp", "fsdp", "deepspeed")):
        raise ConfigError(
            f"trainer.devices={devices!r}, trainer.num_nodes={nodes!r}, trainer.strategy="
            f"{strategy!r} asks for several processes, but memory models run one device per "
            "job; set trainer.devices=1 and parallelise with a sweep (hydra/launcher=slurm)"
        )


def validate_protocol(eval_cfg) -> None:
    """The protocol keys of `eval` (conf/eval/tgb.yaml, ...), checked before any training
    and again for each `eval.also` protocol when it is built."""

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
    from tempint.eval.dyglib import STRATEGIES  # numpy only: no heavy import

    strategies = list(eval_cfg.get("pair_negatives") or [])
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ConfigError(
            f"eval.pair_negatives={unknown} is unknown; use some of {', '.join(STRATEGIES)}"
        )
    if strategies and (eval_cfg.get("min_train_events") or 0) > 0:
        raise ConfigError(
            "eval.pair_negatives scores every event of a batch against its negative pair; "
            "it cannot be combined with eval.min_train_events > 0 (set it to 0)"
        )
    if strategies and batch_size < 2:
        raise ConfigError(
            "eval.pair_negatives draws one negative per batch; set eval.batch_size > 1"
        )
    split = eval_cfg.get("split") or {}
    mode = split.get("split") if hasattr(split, "get") else None
    if mode is not None and mode not in ("position", "time_quantile"):
        raise ConfigError(f"eval.split.split={mode!r} is unknown; use position or time_quantile")
