"""Faults end cleanly: one sentence and exit 2 for mistakes, intact checkpoints on NaN, same seed same result."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tempint.models.static import StaticEmbedding
from tempint.module import NumericalFault
from tempint.train import train


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from tempint.train import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["model=jodei"], "model 'jodei' is not known; known:"),
        (["data=wikipdia"], "data 'wikipdia' is not known; known:"),
        (["ablation=no_such_thing"], "ablation 'no_such_thing' is not known"),
    ],
)
def test_unknown_names_exit_2_with_the_valid_ones_listed(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["optimizer.lr=-1"], "optimizer.lr=-1 is invalid"),
        (["data.val=0.6", "data.test=0.5"], "leaves no training data"),
        (["sampler=sequence", "sampler.length=1"], "sampler.length=1 is invalid"),
        (["data=custom_csv", "data.path=/nonexistent/x.csv"], "/nonexistent/x.csv: no such file"),
    ],
)
def test_bad_values_exit_2_with_one_sentence(tmp_path, args, message):
    data = [] if any(a.startswith("data=") for a in args) else ["data=synthetic"]
    result = run_cli(*args, *data, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_nan_loss_stops_the_run_naming_epoch_and_batch_and_keeps_the_checkpoint(
    make_cfg, monkeypatch
):
    cfg = make_cfg(["model=static", "trainer.max_epochs=3"])
    calls = {"n": 0}
    original = StaticEmbedding.forward

    def poisoned(self, batch, mode):
        out = original(self, batch, mode)
        calls["n"] += 1
        if mode.losses and self.trainer_epoch_hint() >= 1:
            out.losses["objective"] = out.losses["objective"] * float("nan")
        return out

    epoch = {"value": 0}
    monkeypatch.setattr(StaticEmbedding, "forward", poisoned)
    monkeypatch.setattr(
        StaticEmbedding, "trainer_epoch_hint", lambda self: epoch["value"], raising=False
    )
    from tempint.module import InteractionModule

    start = InteractionModule.on_train_epoch_start

    def track(self):
        epoch["value"] = self.current_epoch
        if self.current_epoch == 1:
            last = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
            track.before = _sha(last)
        start(self)

    monkeypatch.setattr(InteractionModule, "on_train_epoch_start", track)
    with pytest.raises(NumericalFault, match=r"epoch 1, batch 0"):
        train(cfg)
    last = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
    assert _sha(last) == track.before
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 0
    assert all(
        torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
    )


@pytest.mark.parametrize("model", ["static", "limnet"])
def test_same_seed_same_metrics(make_cfg, tmp_path, model):
    first, _ = train(make_cfg([f"model={model}", "seed=7"], output_dir=tmp_path / "a"))
    second, _ = train(make_cfg([f"model={model}", "seed=7"], output_dir=tmp_path / "b"))
    keys = [k for k in first if k.startswith(("val/", "test/")) and isinstance(first[k], float)]
    assert keys
    for key in keys:
        assert first[key] == second[key] or (
            first[key] != first[key] and second[key] != second[key]
        ), key


def test_a_crash_while_saving_keeps_the_previous_checkpoint_readable(make_cfg, monkeypatch):
    import lightning as L

    cfg = make_cfg(["model=static", "trainer.max_epochs=2"])
    saved = {"n": 0}
    original = L.Trainer.save_checkpoint

    def crash_on_second_epoch(self, filepath, weights_only=False, storage_options=None):
        saved["n"] += 1
        if self.current_epoch >= 1:
            with open(filepath, "wb") as f:
                f.write(b"half a checkpoint")
            raise OSError("disk full")
        return original(self, filepath, weights_only, storage_options)

    monkeypatch.setattr(L.Trainer, "save_checkpoint", crash_on_second_epoch)
    with pytest.raises(OSError, match="disk full"):
        train(cfg)
    last = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 0
