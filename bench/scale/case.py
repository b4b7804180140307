"""One scale case, inside its own process: `python bench/scale/case.py --kind K overrides...`.

The overrides are those of `tempint-train` (`model=... sampler=... data=...`). The case
goes through the code of real runs, made lean as `bench/cases.py` does (no validation
during fit, no checkpoints, loggers, progress bar or baselines), with one torch thread.

Kinds:
- `train`: `tempint.train.train`, i.e. one epoch then the frozen evaluation.
- `fit`: data loading/generation and features timed on their own, then one epoch with
  no evaluation, for streams whose full evaluation would not finish in the time bound.

The result is printed as one line `SCALE_RESULT {json}`, with the peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from bench.cases import peak_memory_bytes  # noqa: E402

RESULT_MARK = "SCALE_RESULT "
PHASE_MARK = "SCALE_EPOCH "  # the training numbers, printed before the evaluation


def lean_config(overrides: list[str], output_dir: str):
    """The train config of `overrides`, as `tempint-train` composes it, with the timing
    noise switched off."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from tempint.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["logger=none", *overrides],
            return_hydra_config=True,
        )
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
        cfg.output_dir = output_dir
        cfg.group = "bench"
        cfg.resume = False
        cfg.callbacks = None
        cfg.logger = None
        cfg.threads = 1
        cfg.eval.baselines = []
        cfg.trainer.max_epochs = 1
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.limit_val_batches = 0
        cfg.trainer.enable_checkpointing = False
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
    return cfg


def _report_epoch_before_evaluation() -> None:
    """Print the epoch's numbers as soon as training ends, so a case stopped during its
    evaluation still reports its training rate."""
    import tempint.eval.session as session

    evaluate = session.evaluate_module

    def evaluate_after_report(module, dm, *args, **kwargs):
        seconds = sum(module.epoch_seconds) / max(1, len(module.epoch_seconds))
        epoch = {
            "num_users": dm.num_users,
            "num_items": dm.num_items,
            "num_interactions": dm.split.as_dict().get("num_interactions"),
            "train_interactions": module.train_interactions,
            "seconds_per_epoch": seconds,
            "train_interactions_per_second": module.train_interactions / seconds,
        }
        print(PHASE_MARK + json.dumps(epoch), flush=True)
        return evaluate(module, dm, *args, **kwargs)

    session.evaluate_module = evaluate_after_report


def run_train(cfg) -> dict:
    from tempint.train import train

    _report_epoch_before_evaluation()
    metrics, objects = train(cfg)
    return {
        "num_users": metrics["num_users"],
        "num_items": metrics["num_items"],
        "num_interactions": metrics["split"].get("num_interactions"),
        "train_interactions": objects["module"].train_interactions,
        "seconds_per_epoch": metrics["train/seconds_per_epoch"],
        "train_interactions_per_second": metrics["train/interactions_per_second"],
        "eval_seconds": metrics["eval/seconds"],
        "eval_interactions_per_second": metrics["eval/interactions_per_second"],
        "test_mrr": metrics["test/mrr"],
    }


def run_fit(cfg) -> dict:
    """Setup (loading or generation, features) timed apart, then one epoch, no evaluation."""
    import lightning as L
    from hydra.utils import instantiate

    from tempint.eval.session import eval_kind
    from tempint.module import InteractionModule

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    start = time.perf_counter()
    dm = instantiate(cfg.data, sampler=instantiate(cfg.sampler))
    dm.setup()
    setup_seconds = time.perf_counter() - start
    model = instantiate(cfg.model, num_users=dm.num_users, num_items=dm.num_items)
    dm.val_kind = eval_kind(model, dm, cfg.eval.scorer, "frozen")
    module = InteractionModule(
        model,
        optimizer=instantiate(cfg.optimizer),
        gradient_clip=cfg.get("gradient_clip"),
        ties=cfg.eval.ties,
        scorer=cfg.eval.scorer,
    )
    trainer = instantiate(cfg.trainer, callbacks=[], logger=False)
    trainer.fit(module, dm)
    seconds = sum(module.epoch_seconds) / len(module.epoch_seconds)
    return {
        "num_users": dm.num_users,
        "num_items": dm.num_items,
        "num_interactions": dm.split.as_dict().get("num_interactions"),
        "setup_seconds": setup_seconds,
        "train_interactions": module.train_interactions,
        "seconds_per_epoch": seconds,
        "train_interactions_per_second": module.train_interactions / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("train", "fit"), default="train")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tempint-scale-") as tmp:
        cfg = lean_config(args.overrides, tmp)
        out = run_train(cfg) if args.kind == "train" else run_fit(cfg)
    out["wall_seconds"] = time.perf_counter() - start
    out["peak_rss_bytes"] = peak_memory_bytes()
    print(RESULT_MARK + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
