"""How a trained run is evaluated: the one call the entry point makes after fitting.

`evaluate_run` reloads the best checkpoint and replays validation and test under the
run's protocol (`eval`), with the heuristics beside the model, the online optimiser when
`eval.mode=online`, the extra protocols of `eval.also` and DeePRed's published protocol
when asked. Which evaluation chunks a model replays follows from what the model
declares it can do (`eval_kind`), never from the entry point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tempint.config import validate_protocol
from tempint.errors import ConfigError, UserError

__all__ = [
    "BASELINES",
    "evaluate_run",
    "evaluate_module",
    "eval_kind",
    "eval_protocol",
    "bound_scores",
    "warm_baselines",
    "load_best",
]

# every name of config.BASELINE_NAMES (checked before training), with its class
BASELINES = {
    "recency": "tempint.models.heuristics.Recency",
    "popularity": "tempint.models.heuristics.Popularity",
    "recent_popularity": "tempint.models.heuristics.RecentPopularity",
    # the field's heuristics: (class, arguments)
    "user_frequency": "tempint.models.field_heuristics.UserFrequency",
    "edgebank_unlimited": ("tempint.models.field_heuristics.EdgeBank", {"memory": "unlimited"}),
    "edgebank_tw": ("tempint.models.field_heuristics.EdgeBank", {"memory": "time_window"}),
    "popularity_unseen": "tempint.models.field_heuristics.PopularityUnseen",
}


def warm_baselines(names, dm, device, batch_size: int = 1) -> dict:
    """Heuristics fed the training stream, ready to replay validation and test."""
    import torch
    from hydra.utils import get_class

    out = {}
    for name in names:  # known names: checked by validate_config before training
        spec = BASELINES[name]
        path, kwargs = spec if isinstance(spec, tuple) else (spec, {})
        baseline = get_class(path)(dm.num_users, dm.num_items, **kwargs).to(device)
        baseline.reset_state()
        with torch.no_grad():
            for chunk in dm.chunks(dm.warmup_plans()):
                baseline.train_chunk(chunk.to(device))  # heuristics: observed, no losses
        kind = "runs" if baseline.capabilities.replays_steps else "exact"
        out[name] = (baseline, *eval_sources(baseline, dm, kind, batch_size, device))
    return out


def eval_sources(model, dm, kind: str, batch_size: int, device=None):
    """Validation and test chunk sources: the model's steps (batch 1, kept on `device`)
    or TGB batches."""
    if batch_size <= 1:
        return (
            lambda: dm.eval_chunks("val", kind, device),
            lambda: dm.eval_chunks("test", kind, device),
        )
    if model.capabilities.step_updates_commute:
        replay = None
    else:
        replay = "contiguous" if model.capabilities.exact_any_step else "exact"
    return (
        lambda: dm.eval_batches("val", batch_size, replay),
        lambda: dm.eval_batches("test", batch_size, replay),
    )


def eval_protocol(cfg: DictConfig, dm):
    """The `Protocol` of `cfg.eval` on this data: its exclusions and fixed negatives."""
    import numpy as np
    import torch

    from tempint.eval.negatives import same_time_exclusions, sampled_negatives
    from tempint.eval.protocol import Protocol

    ev = cfg.eval
    validate_protocol(ev)
    batch_size = int(ev.get("batch_size") or 1)
    users, items, t = dm._users, dm._items, dm._t
    evaluated = range(dm.split.train_end, dm.split.num_interactions)
    exclusions = None
    if ev.get("exclude_same_time"):
        exclusions = same_time_exclusions(users, items, t, [dm.split.val, dm.split.test])
    negatives = None
    num_negatives = ev.get("num_negatives")
    if num_negatives:
        parts = []
        for stage, rows in (("val", dm.split.val), ("test", dm.split.test)):
            path = dm.negatives_path(stage)
            positives = items[rows.start : rows.stop]
            parts.append(sampled_negatives(path, positives, dm.num_items, int(num_negatives)))
        negatives = torch.from_numpy(np.concatenate(parts))
    pair_negatives = None
    strategies = list(ev.get("pair_negatives") or [])
    if strategies:
        from tempint.eval.dyglib import SEEDS, dyglib_negatives

        pair_negatives = {}
        for strategy in strategies:
            parts = []
            for stage, rows in (("val", dm.split.val), ("test", dm.split.test)):
                last_observed = float(t[rows.start - 1])  # end of the previous split
                parts.append(
                    dyglib_negatives(
                        users, items, t, rows, last_observed, strategy, SEEDS[stage], batch_size
                    )
                )
            pair_negatives[strategy] = (
                torch.from_numpy(np.concatenate([p[0] for p in parts])),
                torch.from_numpy(np.concatenate([p[1] for p in parts])),
            )
    keep = None
    min_events = int(ev.get("min_train_events") or 0)
    if min_events > 0:
        train = slice(0, dm.split.train_end)
        user_n = np.bincount(users[train], minlength=dm.num_users)
        item_n = np.bincount(items[train], minlength=dm.num_items)
        keep = torch.from_numpy((user_n[users] >= min_events) & (item_n[items] >= min_events))
    return Protocol(
        name=str(ev.get("protocol") or "streaming"),
        batch_size=batch_size,
        exclusions=exclusions,
        negatives=negatives,
        negatives_start=evaluated.start,
        hits_ks=tuple(ev.get("hits_ks") or ()),
        keep=keep,
        min_train_events=min_events,
        pair_negatives=pair_negatives,
        probe=dm.probe if pair_negatives else None,
    )


def bound_scores(dm, cfg: DictConfig) -> None:
    """Evaluation steps and blocks rank at most `eval.max_scores_per_block` scores at once."""
    bound = cfg.eval.get("max_scores_per_block")
    if bound is not None:
        dm.bound_scores(int(bound))


def eval_kind(model, dm, scorer: str, mode: str, ranks_all: bool = True) -> str:
    """The evaluation chunks a model replays: contiguous, blocks, runs or exact steps.

    Blocks rank against all items; a protocol of fixed negatives (`ranks_all` False)
    ranks steps."""
    from tempint.eval.protocol import can_rank_blocks

    if ranks_all and not dm.windowed and can_rank_blocks(model, scorer, mode):
        return "blocks"
    if model.capabilities.exact_any_step:
        return "contiguous"
    if not dm.windowed and mode == "frozen" and model.capabilities.per_user_state:
        return "users"
    if not dm.windowed and mode == "frozen" and model.capabilities.replays_steps:
        return "runs"
    return "eval"


def evaluate_module(module, dm, cfg: DictConfig, optimizer_state: dict | None = None) -> dict:
    """The evaluation protocol (docs/architecture.md) on a trained module whose memory is at the end of training.

    Runs on the device, under the autocast and with the CPU threads of training
    (`InteractionModule.evaluating`), so the reported numbers are computed as the
    validation that chose the checkpoint was. Online evaluation steps with the optimiser
    of `cfg.optimizer`, resumed from `optimizer_state` (the checkpoint's) when given, as
    JODIE's evaluation reloads the optimiser with the model: a fresh Adam's first steps
    are full-size and shake the weights the evaluation is meant to judge.
    """
    with module.evaluating():
        return _evaluate_module(module, dm, cfg, optimizer_state)


def _evaluate_module(module, dm, cfg: DictConfig, optimizer_state: dict | None) -> dict:
    from hydra.utils import instantiate

    from tempint.eval.protocol import evaluate

    device = module.device
    model = module.model
    online_step = None
    online_window = None
    if cfg.eval.mode == "online" and model.capabilities.learned:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = module.build_optimizer(params, instantiate(cfg.optimizer))
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        online_step = online_stepper(module, optimizer, params, cfg.get("gradient_clip"))
        t = dm.stream.t
        online_window = float(t[dm.split.train_end - 1] - t[0]) / int(cfg.eval.online_windows)
    bound_scores(dm, cfg)
    protocol = eval_protocol(cfg, dm)
    baselines = warm_baselines(cfg.eval.get("baselines") or [], dm, device, protocol.batch_size)
    ranks_all = protocol.negatives is None and protocol.keep is None
    kind = eval_kind(model, dm, cfg.eval.scorer, cfg.eval.mode, ranks_all)
    val_source, test_source = eval_sources(model, dm, kind, protocol.batch_size, device)
    return evaluate(
        model,
        val_source,
        test_source,
        protocol=protocol,
        scorer=cfg.eval.scorer,
        ties=cfg.eval.ties,
        mode=cfg.eval.mode,
        device=device,
        online_step=online_step,
        online_window=online_window,
        baselines=baselines,
    )


def online_stepper(module, optimizer, params, clip: float | None):
    """One gradient step of online evaluation, as training takes it: backward outside
    autocast, the loss scaled under 16-mixed and the gradients unscaled before clipping."""
    import torch

    device = module.device
    scaler = None
    if module.training_precision() == "16-mixed":
        scaler = torch.amp.GradScaler(device.type)

    def step(loss):
        if not torch.isfinite(loss):
            raise UserError(f"the loss became {float(loss)} during online evaluation")
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=False):
            (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    return step


def load_best(module, checkpoint_cb) -> tuple[str | None, dict | None]:
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


def deepred_paper(cfg: DictConfig, dm, model, device) -> dict[str, Any]:
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
        options["recency"] = warm_baselines(["recency"], dm, device)["recency"]
    return evaluate_deepred_paper(models, dm, device=device, **options)


def evaluate_run(module, dm, cfg: DictConfig, checkpoint_cb) -> dict[str, Any]:
    """Every number of a fitted run: its protocol, `eval.also`'s, DeePRed's if asked.

    Each protocol starts from the best checkpoint (by val/mrr, else the last), so no
    evaluation sees the state another one left.
    """
    model = module.model
    best_path, optimizer_state = load_best(module, checkpoint_cb)
    metrics = evaluate_module(module, dm, cfg, optimizer_state)
    metrics["best_checkpoint"] = best_path
    if cfg.eval.mode == "online" and model.capabilities.learned:
        metrics["online_optimizer"] = "checkpoint" if optimizer_state is not None else "fresh"
    for extra in cfg.eval.get("also") or []:
        # the same trained model under another protocol, from the same checkpoint
        load_best(module, checkpoint_cb)
        other = OmegaConf.merge(cfg, {"eval": dict(extra)})
        name = f"{other.eval.mode}_{other.eval.ties}"
        if int(other.eval.get("batch_size") or 1) != int(cfg.eval.get("batch_size") or 1):
            name += f"_batch{int(other.eval.get('batch_size') or 1)}"
        result = evaluate_module(module, dm, other)
        for key, value in result.items():  # the model's metrics, per tag too; no baselines
            parts = key.split("/")
            if parts[0] in ("val", "test") and parts[1] not in result["baselines"]:
                metrics[f"protocol/{name}/{key}"] = value
        for key in ("protocol", "mode", "ties", "scorer"):  # what it was measured under
            metrics[f"protocol/{name}/{key}"] = result[key]
    if cfg.get("deepred_paper"):
        with module.evaluating() as device:  # on the training device, as every protocol
            metrics.update(deepred_paper(cfg, dm, model, device))
    return metrics
