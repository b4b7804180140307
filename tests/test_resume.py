"""A run killed after its first epoch and started again in the same directory (a requeued
SLURM job) ends exactly where an uninterrupted run ends: weights, optimiser moments,
memory buffers, epoch counter and final metrics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict

from tempint.config import CONF_DIR
from tempint.train import train

EPOCHS = 3
# timings differ between any two runs; everything else must match
TIMING = ("seconds", "per_second", "fit_seconds", "best_checkpoint")


class Preempted(RuntimeError):
    """Stands for SIGKILL/preemption: the process stops between two epochs."""


class StopAtEpoch(Callback):
    """Dies at the start of `epoch`, after the previous epoch's last.ckpt was written."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise Preempted(f"stopped at the start of epoch {self.epoch}")


class EpochLog(Callback):
    """Which epochs this attempt actually trained."""

    def __init__(self):
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append(trainer.current_epoch)


def _models() -> list:
    """static always; memory models when their config is present. DeePRed trains with
    dropout, so it also checks that the random generators are restored."""
    out = [pytest.param("static", [], id="static")]
    for name, extra in (("limnet", []), ("jodie", []), ("deepred", ["data.history_k=5"])):
        present = (CONF_DIR / "model" / f"{name}.yaml").exists()
        skip = pytest.mark.skipif(not present, reason=f"no conf/model/{name}.yaml")
        out.append(pytest.param(name, extra, id=name, marks=skip))
    return out


def _comparable(metrics: dict) -> dict:
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not any(t in k for t in TIMING)
    }


@pytest.mark.parametrize(("model", "extra"), _models())
def test_requeued_run_matches_uninterrupted(model, extra, make_cfg, tmp_path):
    overrides = [f"model={model}", f"trainer.max_epochs={EPOCHS}", *extra]

    full_metrics, full = train(make_cfg(overrides, output_dir=tmp_path / "full"))

    # first attempt: dies after epoch 0 has been checkpointed
    cfg = make_cfg(overrides, output_dir=tmp_path / "requeued")
    with open_dict(cfg):
        cfg.callbacks.stop = {"_target_": f"{__name__}.StopAtEpoch", "epoch": 1}
    with pytest.raises(Preempted):
        train(cfg)
    run_dir = tmp_path / "requeued"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.exists() and not (run_dir / "metrics.json").exists()
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["epoch"] == 0
    assert saved["optimizer_states"][0]["state"], "Adam moments are in the checkpoint"
    assert len(saved["tempint"]["epoch_seconds"]) == 1

    # second attempt: same directory, same config (the requeued job), resumes
    cfg = make_cfg(overrides, output_dir=run_dir)
    with open_dict(cfg):
        cfg.callbacks.log = {"_target_": f"{__name__}.EpochLog"}
    resumed_metrics, resumed = train(cfg)

    # it trained only the epochs the first attempt had not finished (a rerun from scratch
    # of this deterministic model would end with the same numbers)
    (epoch_log,) = [c for c in resumed["trainer"].callbacks if isinstance(c, EpochLog)]
    assert epoch_log.epochs == list(range(1, EPOCHS))
    assert resumed["module"].epoch_seconds[0] == saved["tempint"]["epoch_seconds"][0]

    assert resumed["trainer"].global_step == full["trainer"].global_step
    assert resumed_metrics["train/epochs"] == full_metrics["train/epochs"] == EPOCHS
    # state at the end of training: weights and memory buffers of the best checkpoint
    full_state = full["module"].state_dict()
    resumed_state = resumed["module"].state_dict()
    assert full_state.keys() == resumed_state.keys()
    for name, value in full_state.items():
        torch.testing.assert_close(resumed_state[name], value, rtol=1e-5, atol=1e-6, msg=name)
    # optimiser moments after the last step
    full_opt = full["trainer"].optimizers[0].state_dict()["state"]
    resumed_opt = resumed["trainer"].optimizers[0].state_dict()["state"]
    assert full_opt.keys() == resumed_opt.keys()
    for key, state in full_opt.items():
        for name, value in state.items():
            torch.testing.assert_close(resumed_opt[key][name], value, rtol=1e-5, atol=1e-6)

    expected = _comparable(full_metrics)
    got = _comparable(resumed_metrics)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        same = math.isclose(got[key], value, rel_tol=1e-6, abs_tol=1e-9) or (
            math.isnan(got[key]) and math.isnan(value)
        )
        assert same, (key, got[key], value)
    assert Path(resumed_metrics["best_checkpoint"]).parent == run_dir / "checkpoints"
