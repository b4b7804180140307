"""The training entry point: `tempint-train data=wikipedia model=jodie ...`.

`train(cfg)` is a plain function (tests call it directly): it builds everything from
the config, fits, replays validation and test under the streaming protocol from the best
checkpoint, and writes `metrics.json`. `main()` adds the CLI: cheap checks before heavy
imports, one sentence and exit code 2 for user mistakes.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from tempint.config import (
    check_cli_overrides,
    check_output_folder,
    validate_config,
)
from tempint.errors import ConfigError, UserError

__all__ = ["train", "main"]

log = logging.getLogger("tempint")


def _instantiate_all(group: DictConfig | None) -> list:
    from hydra.utils import instantiate

    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def _data_dependent(cfg: DictConfig, dm) -> dict[str, Any]:
    """Model arguments set to `auto` that are computed from the training split."""
    out: dict[str, Any] = {}
    if cfg.model.get("state_change_weight") == "auto":  # the published JODIE's class weight
        labels = dm.stream.state_label[: dm.split.train_end]
        out["state_change_weight"] = len(labels) / (1.0 + float(labels.sum()))
    return out


# Third-party notices that say nothing about a tempint run, silenced by category and message.
QUIET = (
    (UserWarning, r".*overridden `transfer_batch_to_device`.*"),
    (UserWarning, r".*configure_optimizers` returned `None`.*"),
    (UserWarning, r".*The `srun` command is available on your system but is not used.*"),
    (UserWarning, r".*does not have many workers.*"),
    (UserWarning, r".*isinstance\(treespec, LeafSpec\)` is deprecated.*"),
    (FutureWarning, r".*isinstance\(treespec, LeafSpec\)` is deprecated.*"),
    (DeprecationWarning, r".*isinstance\(treespec, LeafSpec\)` is deprecated.*"),
    (UserWarning, r".*The number of training batches .* is smaller than the logging interval.*"),
    # a resumed folder holds this run's own checkpoints (the fingerprint says so)
    (UserWarning, r".*Checkpoint directory .* exists and is not empty.*"),
    # our chunk streams are sized and read by one process (num_workers=0)
    (UserWarning, r".*Your `IterableDataset` has `__len__` defined.*"),
)


def quiet_third_party() -> None:
    for category, message in QUIET:
        warnings.filterwarnings("ignore", message=message, category=category)


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit, evaluate and write `metrics.json`; returns (metrics, objects)."""
    validate_config(cfg)
    quiet_third_party()
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tempint.callbacks import DivergenceWarning
    from tempint.eval.session import bound_scores, eval_kind, evaluate_run
    from tempint.fingerprint import run_fingerprint
    from tempint.interrupt import fit_interruptible
    from tempint.io import atomic_write_json
    from tempint.module import InteractionModule
    from tempint.report import summary_table
    from tempint.resume import find_resume

    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    _check_model_target(str(cfg.model._target_))
    sampler = instantiate(cfg.sampler)
    # models that read partner histories (DeePRed) declare their k; the data layer builds them
    history_k = max(int(cfg.data.get("history_k") or 0), int(cfg.model.get("history_k") or 0))
    # a protocol may fix the split (TGB's time quantiles): it overrides the data config's
    split = dict(cfg.eval.get("split") or {})
    dm = instantiate(cfg.data, sampler=sampler, history_k=history_k, **split)
    dm.setup()
    bound_scores(dm, cfg)
    model = instantiate(
        cfg.model, num_users=dm.num_users, num_items=dm.num_items, **_data_dependent(cfg, dm)
    )
    # validation during fit is a frozen replay
    dm.val_kind = eval_kind(model, dm, cfg.eval.scorer, "frozen")
    module = InteractionModule(
        model,
        optimizer=instantiate(cfg.optimizer) if model.capabilities.learned else None,
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        gradient_clip=cfg.get("gradient_clip"),
        ties=cfg.eval.ties,
        scorer=cfg.eval.scorer,
    )
    callbacks = _instantiate_all(cfg.get("callbacks"))
    checkpoint_cb = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    if cfg.get("group") is None:
        with open_dict(cfg):
            cfg.group = _default_group(output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # what this run is, saved in every checkpoint; a foreign or damaged last.ckpt stops
    # the run here, before the loggers touch the folder and before any training
    module.fingerprint = run_fingerprint(resolved, dm.source)
    resume = None
    if cfg.get("resume") and checkpoint_cb is not None:
        resume = find_resume(checkpoint_cb.dirpath, module.fingerprint)
    loggers = _instantiate_all(cfg.get("logger"))
    for lg in loggers:
        if resume is not None and hasattr(lg, "keep_history"):
            lg.keep_history(resume.epoch)  # the epochs before the kill stay in the history
        lg.log_hyperparams(resolved)  # the W&B run's config, the CSV logger's hparams.yaml
    callbacks.append(DivergenceWarning())
    trainer_overrides: dict[str, Any] = _cluster_plugins()
    if not model.capabilities.learned:
        trainer_overrides["max_epochs"] = 1  # counting the training stream once is all there is
    trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, **trainer_overrides
    )
    if resume is not None:
        log.info("resuming from %s", resume.path)

    fit_start = time.perf_counter()
    # the stream, its features and the model live through the fit: kept out of the
    # garbage collector's scans, which otherwise walk them again and again
    gc.freeze()
    try:
        fit_interruptible(trainer, module, dm, resume.path if resume else None, checkpoint_cb)
    finally:
        gc.unfreeze()
    fit_seconds = time.perf_counter() - fit_start

    metrics = evaluate_run(module, dm, cfg, checkpoint_cb)
    epochs = module.epoch_seconds
    seconds_per_epoch = sum(epochs) / len(epochs) if epochs else float("nan")
    metrics.update(
        {
            "train/seconds_per_epoch": seconds_per_epoch,
            "train/interactions_per_second": module.train_interactions / seconds_per_epoch
            if epochs
            else float("nan"),
            "train/epochs": len(epochs),
            "train/fit_seconds": fit_seconds,
            "model": cfg.model._target_.rsplit(".", 1)[-1],
            "dataset": dm.source,
            "num_users": dm.num_users,
            "num_items": dm.num_items,
            "split": dm.split.as_dict(),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "choices": _choices(),
        }
    )
    atomic_write_json(output_dir / "metrics.json", metrics)
    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and "/" in k}
    for lg in trainer.loggers:
        lg.log_metrics(numeric)
        lg.finalize("success")
    _finish_wandb()
    print(summary_table(metrics))
    objects = {"cfg": cfg, "datamodule": dm, "model": model, "module": module, "trainer": trainer}
    return metrics, objects


def _check_model_target(target: str) -> None:
    """A model class that cannot be found is a config mistake, told before the data loads
    (a model file of the user's project is found from the folder the run starts in)."""
    import importlib.util

    module = target.rpartition(".")[0]
    try:
        found = bool(module) and importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise ConfigError(
            f"model._target_={target!r}: module {module!r} is not found from {Path.cwd()}; "
            "run from the folder that holds it or add that folder to PYTHONPATH"
        )


def _default_group(output_dir: Path) -> str:
    """The sweep folder's name in a multirun (every job of it, on any node, agrees), else
    the run folder's. Not a timestamp taken by the job: SLURM jobs start at different times."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).name
    return output_dir.name


def _cluster_plugins() -> dict[str, Any]:
    """Under SLURM, submitit owns preemption: USR2 -> requeue -> the job reruns in its run
    directory and resumes from last.ckpt. Lightning's own auto-requeue would requeue the
    same job a second time, so it is switched off."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return {}
    return {"plugins": [SLURMEnvironment(auto_requeue=False)]}


def _choices() -> dict[str, str]:
    """The config group choices of this run (model, data, ablation, ...) when under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return {k: v for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
    except ValueError:
        return {}


def _finish_wandb() -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
        # the service process writes the offline run file; stopping it waits for the
        # file to be complete, so the run directory is final when train() returns
        wandb.teardown()


# jobs of an in-process multirun: the overrides of each, and the failed ones as
# (job, overrides, one-line reason, user mistake)
_JOB_OVERRIDES: list[list[str]] = []
_FAILED_JOBS: list[tuple[str, list[str], str, bool]] = []


def _user_error(err: BaseException) -> UserError | None:
    """The user mistake behind `err`: itself, or the cause Hydra's instantiate wrapped."""
    from tempint.callbacks import DISK_ERRNOS

    seen = err
    while seen is not None:
        if isinstance(seen, UserError):
            return seen
        if isinstance(seen, OSError) and seen.errno in DISK_ERRNOS:
            where = f"{seen.filename}: " if seen.filename else ""
            return UserError(
                f"could not write {where}{seen.strerror or seen}; free space there or choose "
                "another hydra.run.dir"
            )
        seen = seen.__cause__
    return None


def _log_to_files(level: int, message: str) -> None:
    """A record in train.log only: the console already has the one line on stderr."""
    record = logging.LogRecord("tempint", level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _in_process_multirun() -> bool:
    """A sweep whose jobs run one after the other in this process (Hydra's basic launcher):
    one failed job must not stop the rest. Submitit jobs are processes of their own."""
    import os

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return (
        HydraConfig.initialized()
        and HydraConfig.get().mode == RunMode.MULTIRUN
        and not os.environ.get("SUBMITIT_EXECUTOR")
    )


def _hydra_main(cfg: DictConfig) -> float | None:
    from tempint.interrupt import RunStopped

    if _in_process_multirun():
        _JOB_OVERRIDES.append(_job_overrides())
    try:
        metrics, _ = train(cfg)
    except RunStopped as stop:
        print(f"tempint-train: {stop}", file=sys.stderr)
        _log_to_files(logging.ERROR, str(stop))
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:
        message = "stopped by SIGINT (Ctrl-C) outside training; the same command resumes"
        print(f"tempint-train: {message}", file=sys.stderr)
        _log_to_files(logging.ERROR, message)
        sys.exit(130)
    except Exception as err:
        mistake = _user_error(err)
        if mistake is not None:
            # Hydra reports any Exception with a traceback and exit 1; a user mistake is
            # one sentence and exit 2, so it leaves as SystemExit.
            print(f"tempint-train: {mistake}", file=sys.stderr)
            _log_to_files(logging.ERROR, str(mistake))
        else:
            log.exception("run failed")
        if _in_process_multirun():
            _record_failure(mistake or err, mistake is not None)
            return float("nan")
        if mistake is not None:
            sys.exit(2)
        raise
    finally:
        _finish_wandb()
    value = metrics.get(cfg.get("optimized_metric") or "val/mrr")
    return float(value) if value is not None else None


def _job_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return [str(o) for o in HydraConfig.get().overrides.task]


def _record_failure(err: BaseException, user_mistake: bool) -> None:
    from hydra.core.hydra_config import HydraConfig

    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    _FAILED_JOBS.append((str(HydraConfig.get().job.num), _job_overrides(), reason, user_mistake))


def _report_failed_jobs() -> None:
    """After a multirun: every job ran; name the failed ones by the overrides that set
    them apart from the other jobs, and exit non-zero (2 when all were user mistakes)."""
    if not _FAILED_JOBS:
        return
    common = set.intersection(*(set(o) for o in _JOB_OVERRIDES)) if _JOB_OVERRIDES else set()
    names = "; ".join(
        f"job {num} ({','.join(o for o in over if o not in common) or 'no overrides'}): {why}"
        for num, over, why, _ in _FAILED_JOBS
    )
    print(
        f"tempint-train: {len(_FAILED_JOBS)} of {len(_JOB_OVERRIDES)} jobs of the multirun "
        f"failed: {names}",
        file=sys.stderr,
    )
    sys.exit(2 if all(user for *_, user in _FAILED_JOBS) else 1)


def main() -> None:
    """Console script `tempint-train`: exit 2 with one sentence on a user mistake."""
    # a model config may name a module of the project it is run from (`examples.gru4rec`),
    # as `python -m` would find it
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        check_cli_overrides(sys.argv[1:])
        check_output_folder(sys.argv[1:])
        import hydra

        from tempint.config import CONF_DIR

        entry = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")(
            _hydra_main
        )
        entry()
    except UserError as err:
        print(f"tempint-train: {err}", file=sys.stderr)
        sys.exit(2)
    _report_failed_jobs()


if __name__ == "__main__":
    main()
