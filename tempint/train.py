"""The training entry point: `tempint-train data=wikipedia model=jodie ...`.

`train(cfg)` is a plain function (tests call it directly): it builds everything from
the config, fits, replays validation and test under the streaming protocol from the best
checkpoint, and writes `metrics.json`. `main()` adds the CLI: cheap checks before heavy
imports, one sentence and exit code 2 for user mistakes.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from tempint.config import check_cli_overrides, validate_config
from tempint.errors import ConfigError, UserError

__all__ = ["train", "main", "evaluate_module"]

log = logging.getLogger("tempint")

BASELINES = {
    "recency": "tempint.models.heuristics.Recency",
    "popularity": "tempint.models.heuristics.Popularity",
    "recent_popularity": "tempint.models.heuristics.RecentPopularity",
}


def _instantiate_all(group: DictConfig | None) -> list:
    from hydra.utils import instantiate

    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def _warm_baselines(names, dm, device) -> dict:
    """Heuristics fed the training stream, ready to replay validation and test."""
    import torch
    from hydra.utils import get_class

    out = {}
    for name in names:
        baseline = get_class(BASELINES[name])(dm.num_users, dm.num_items).to(device)
        baseline.reset_state()
        with torch.no_grad():
            for chunk in dm.chunks(dm.warmup_plans()):
                chunk = chunk.to(device)
                for step in chunk.steps:
                    baseline(step)
        out[name] = (
            baseline,
            lambda: dm.eval_chunks("val", "exact"),
            lambda: dm.eval_chunks("test", "exact"),
        )
    return out


def _data_dependent(cfg: DictConfig, dm) -> dict[str, Any]:
    """Model arguments set to `auto` that are computed from the training split."""
    out: dict[str, Any] = {}
    if cfg.model.get("state_change_weight") == "auto":  # the published JODIE's class weight
        labels = dm.stream.state_label[: dm.split.train_end]
        out["state_change_weight"] = len(labels) / (1.0 + float(labels.sum()))
    return out


def eval_kind(model, dm, scorer: str, mode: str) -> str:
    """The evaluation chunks a model replays: contiguous, blocks or exact steps."""
    from tempint.eval.protocol import can_rank_blocks

    if not dm.windowed and can_rank_blocks(model, scorer, mode):
        return "blocks"
    if getattr(model, "exact_any_step", False):
        return "contiguous"
    if not dm.windowed and mode == "frozen" and getattr(model, "per_user_state", False):
        return "users"
    return "eval"


def evaluate_module(module, dm, cfg: DictConfig, optimizer_state: dict | None = None) -> dict:
    """The protocol of DESIGN.md on a trained module whose memory is at the end of training.

    Online evaluation steps with the optimiser of `cfg.optimizer`, resumed from
    `optimizer_state` (the checkpoint's) when given, as JODIE's evaluation reloads the
    optimiser with the model: a fresh Adam's first steps are full-size and shake the
    weights the evaluation is meant to judge.
    """
    import torch
    from hydra.utils import instantiate

    from tempint.eval.protocol import evaluate

    device = module.device
    model = module.model
    online_step = None
    online_window = None
    if cfg.eval.mode == "online" and model.learned:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = instantiate(cfg.optimizer)(params)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        clip = cfg.get("gradient_clip")

        def online_step(loss):
            if not torch.isfinite(loss):
                raise UserError(f"the loss became {float(loss)} during online evaluation")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()

        t = dm.stream.t
        online_window = float(t[dm.split.train_end - 1] - t[0]) / int(cfg.eval.online_windows)
    baselines = _warm_baselines(cfg.eval.get("baselines") or [], dm, device)
    kind = eval_kind(model, dm, cfg.eval.scorer, cfg.eval.mode)
    return evaluate(
        model,
        lambda: dm.eval_chunks("val", kind),
        lambda: dm.eval_chunks("test", kind),
        scorer=cfg.eval.scorer,
        ties=cfg.eval.ties,
        mode=cfg.eval.mode,
        device=device,
        online_step=online_step,
        online_window=online_window,
        baselines=baselines,
    )


def _load_best(module, checkpoint_cb) -> tuple[str | None, dict | None]:
    """Weights and memory buffers of the best checkpoint (by val/mrr), else the last;
    returns its path and its optimiser state."""
    import torch

    path = None
    if checkpoint_cb is not None:
        path = checkpoint_cb.best_model_path or checkpoint_cb.last_model_path
    if not path or not Path(path).exists():
        return None, None
    checkpoint = torch.load(path, map_location=module.device, weights_only=False)
    module.load_state_dict(checkpoint["state_dict"])
    module.model.detach_state()  # state kept beside the buffers belongs to the old memory
    optimizers = checkpoint.get("optimizer_states") or [None]
    return path, optimizers[0]


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

    from tempint.io import atomic_write_json
    from tempint.module import InteractionModule
    from tempint.report import summary_table

    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    sampler = instantiate(cfg.sampler)
    # models that read partner histories (DeePRed) declare their k; the data layer builds them
    history_k = max(int(cfg.data.get("history_k") or 0), int(cfg.model.get("history_k") or 0))
    dm = instantiate(cfg.data, sampler=sampler, history_k=history_k)
    dm.setup()
    model = instantiate(
        cfg.model, num_users=dm.num_users, num_items=dm.num_items, **_data_dependent(cfg, dm)
    )
    # validation during fit is a frozen replay
    dm.val_kind = eval_kind(model, dm, cfg.eval.scorer, "frozen")
    module = InteractionModule(
        model,
        optimizer=instantiate(cfg.optimizer) if model.learned else None,
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        gradient_clip=cfg.get("gradient_clip"),
        ties=cfg.eval.ties,
        scorer=cfg.eval.scorer,
    )
    callbacks = _instantiate_all(cfg.get("callbacks"))
    if cfg.get("group") is None:
        with open_dict(cfg):
            cfg.group = _default_group(output_dir)
    loggers = _instantiate_all(cfg.get("logger"))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for lg in loggers:
        lg.log_hyperparams(resolved)  # the W&B run's config, the CSV logger's hparams.yaml
    trainer_overrides: dict[str, Any] = _cluster_plugins()
    if not model.learned:
        trainer_overrides["max_epochs"] = 1  # counting the training stream once is all there is
    trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, **trainer_overrides
    )
    checkpoint_cb = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    resume = None
    if cfg.get("resume") and checkpoint_cb is not None and checkpoint_cb.dirpath:
        last = Path(checkpoint_cb.dirpath) / "last.ckpt"
        resume = str(last) if last.exists() else None
        if resume:
            log.info("resuming from %s", resume)

    fit_start = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    fit_seconds = time.perf_counter() - fit_start
    if trainer.interrupted:
        raise KeyboardInterrupt

    best_path, optimizer_state = _load_best(module, checkpoint_cb)
    metrics = evaluate_module(module, dm, cfg, optimizer_state)
    if cfg.eval.mode == "online" and model.learned:
        metrics["online_optimizer"] = "checkpoint" if optimizer_state is not None else "fresh"
    for extra in cfg.eval.get("also") or []:
        # the same trained model under another protocol, from the same checkpoint
        _load_best(module, checkpoint_cb)
        other = OmegaConf.merge(cfg, {"eval": dict(extra)})
        name = f"{other.eval.mode}_{other.eval.ties}"
        result = evaluate_module(module, dm, other)
        for key, value in result.items():  # the model's metrics, per tag too; no baselines
            parts = key.split("/")
            if parts[0] in ("val", "test") and parts[1] not in result["baselines"]:
                metrics[f"protocol/{name}/{key}"] = value
    if cfg.get("deepred_paper"):
        metrics.update(_deepred_paper(cfg, dm, model, module.device))
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
            "best_checkpoint": best_path,
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


def _deepred_paper(cfg: DictConfig, dm, model, device) -> dict[str, Any]:
    """DeePRed's published evaluation (`experiment=deepred_paper`) of the best checkpoint,
    and of a freshly initialised encoder when `deepred_paper.untrained`: under the
    script's literal label the two score alike, which is what the protocol measures."""
    import torch
    from hydra.utils import instantiate

    from tempint.eval.deepred_protocol import evaluate_deepred_paper

    options = dict(cfg.deepred_paper)
    known = ("history", "pool_fraction", "k", "labels", "embeddings", "recency", "untrained")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"deepred_paper.{unknown[0]} is unknown; known: {', '.join(known)}")
    models = {"trained": model}
    if options.pop("untrained", False):
        torch.manual_seed(int(cfg.seed))
        fresh = instantiate(cfg.model, num_users=dm.num_users, num_items=dm.num_items)
        models["untrained"] = fresh.to(device)
    if options.pop("recency", True):
        options["recency"] = _warm_baselines(["recency"], dm, device)["recency"]
    return evaluate_deepred_paper(models, dm, device=device, **options)


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


def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        metrics, _ = train(cfg)
    except UserError as err:
        # Hydra reports any Exception with a traceback and exit 1; a user mistake is
        # one sentence and exit 2, so it leaves as SystemExit.
        print(f"tempint-train: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception:
        log.exception("run failed")
        raise
    finally:
        _finish_wandb()
    value = metrics.get(cfg.get("optimized_metric") or "val/mrr")
    return float(value) if value is not None else None


def main() -> None:
    """Console script `tempint-train`: exit 2 with one sentence on a user mistake."""
    try:
        check_cli_overrides(sys.argv[1:])
        import hydra

        from tempint.config import CONF_DIR

        entry = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")(
            _hydra_main
        )
        entry()
    except UserError as err:
        print(f"tempint-train: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
