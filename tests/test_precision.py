"""Training precision, the device of the final evaluation, determinism and one device per job."""

from __future__ import annotations

import math
import subprocess
import sys
from functools import partial

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.precision import MixedPrecision

import tempint.eval.protocol as protocol
import tempint.module as module_py
from tempint.config import CONF_DIR, validate_config
from tempint.data.datamodule import InteractionDataModule
from tempint.errors import ConfigError
from tempint.models.limnet import LiMNet
from tempint.module import InteractionModule, fused_allowed
from tempint.train import train

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
# a Trainer whose root device is "cpu:0": the same memory as "cpu", but a module moved
# to the CPU by Lightning's teardown reports "cpu", so a final evaluation that ran on the
# module's device after fit instead of the trainer's shows here
CPU0_STRATEGY = (
    "+trainer.strategy={_target_: lightning.pytorch.strategies.SingleDeviceStrategy,"
    " device: 'cpu:0'}"
)


@pytest.fixture
def deterministic_algorithms():
    """Lightning's `deterministic=True` switches torch's flag on for the process."""
    yield
    torch.use_deterministic_algorithms(False)


# --- one device per job -------------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "trainer.devices=2",
        "trainer.devices=-1",
        "trainer.devices=[0,1]",
        "+trainer.strategy=ddp",
        "+trainer.strategy=ddp_spawn",
        "+trainer.num_nodes=2",
    ],
)
def test_several_devices_are_refused_by_config_validation(make_cfg, override):
    with pytest.raises(ConfigError, match="one device per job; set trainer.devices=1"):
        validate_config(make_cfg([override]))


def test_several_devices_end_the_cli_with_one_line_before_any_process_starts(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tempint.train", "trainer.devices=2", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "trainer.devices=2" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_unsupported_precision_is_refused(make_cfg):
    with pytest.raises(ConfigError, match="trainer.precision='bf16-true' is not supported"):
        validate_config(make_cfg(["trainer.precision=bf16-true"]))
    for ok in ("32", "bf16-mixed", "16-mixed"):
        validate_config(make_cfg([f"trainer.precision={ok}"]))


# --- mixed precision ---------------------------------------------------------------------


def test_fused_adam_only_in_full_precision(make_cfg, tmp_path):
    assert fused_allowed("32-true") and fused_allowed(32)
    assert not fused_allowed("bf16-mixed") and not fused_allowed("16-mixed")
    for precision, fused in (("32", True), ("bf16-mixed", False)):
        cfg = make_cfg(
            ["model=limnet", f"trainer.precision={precision}"], output_dir=tmp_path / precision
        )
        metrics, objects = train(cfg)
        optimizer = objects["trainer"].optimizers[0]
        assert optimizer.defaults["fused"] is fused
        assert 0 < metrics["test/mrr"] <= 1


class _Recorder(InteractionModule):
    """Records the gradient norm the optimiser steps with (after clipping)."""

    def on_before_optimizer_step(self, optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


def test_16_mixed_clips_the_unscaled_gradients(make_cfg, tmp_path):
    """The fp16 scaler multiplies the loss by 2^16; clipping to 1e-3 before unscaling would
    leave gradients of norm 1e-3 / 2^16. Lightning maps "16-mixed" to bf16 on a CPU, so
    the scaler is given explicitly here."""
    cfg = make_cfg(["model=limnet"])
    dm = InteractionDataModule(synthetic=dict(cfg.data.synthetic))
    dm.setup()
    model = LiMNet(dm.num_users, dm.num_items, dim=8)
    module = _Recorder(model, optimizer=partial(torch.optim.Adam, lr=1e-3, fused=True))
    module.norms = []
    module.gradient_clip = 1e-3
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = L.Trainer(
        accelerator="cpu",
        plugins=[plugin],
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    # fused Adam unscales inside its step, after any clipping: the module must not use it
    assert trainer.optimizers[0].defaults["fused"] is False
    # the scaler skips steps that overflowed; chunks whose loss does not reach the
    # weights have no gradient to clip
    finite = [n for n in module.norms if math.isfinite(n) and n > 0]
    assert len(finite) >= 10
    assert [n for n in finite if n != pytest.approx(1e-3, rel=1e-3)] == []


def test_final_evaluation_runs_on_the_trainers_device_and_autocast(make_cfg, monkeypatch):
    """Validation during fit and the final validation/test replay (and the baselines) see
    the same device, the trainer's root device, and the same autocast."""
    devices = []
    run_stream = protocol.run_stream

    def spy_run(model, chunks, evaluator, device="cpu", *args, **kwargs):
        owner = next(iter(model.buffers()), None)
        devices.append((torch.device(device), evaluator.device, owner is not None))
        return run_stream(model, chunks, evaluator, device, *args, **kwargs)

    monkeypatch.setattr(protocol, "run_stream", spy_run)
    modes = {"fit": [], "final": []}
    score_chunk = protocol.score_chunk

    def spy_chunk(phase):
        def spy(model, chunk, evaluator):
            autocast = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
            modes[phase].append(autocast)
            return score_chunk(model, chunk, evaluator)

        return spy

    monkeypatch.setattr(module_py, "score_chunk", spy_chunk("fit"))  # validation_step
    monkeypatch.setattr(protocol, "score_chunk", spy_chunk("final"))  # run_stream
    cfg = make_cfg(
        ["model=limnet", "trainer.precision=bf16-mixed", "trainer.accelerator=cpu", CPU0_STRATEGY]
    )
    metrics, objects = train(cfg)
    root = objects["trainer"].strategy.root_device
    assert root == torch.device("cpu", 0)
    assert len(devices) == 6  # model val + test, two baselines' val + test
    assert all(device == root and seen == root for device, seen, _ in devices)
    assert objects["module"].device == root
    assert modes["fit"] and modes["final"]
    for phase in ("fit", "final"):
        assert set(modes[phase]) == {(True, torch.bfloat16)}, phase


@pytest.mark.slow
@pytest.mark.parametrize("model", ["limnet", "jodie"])
def test_bf16_mixed_test_mrr_is_within_001_of_float32(make_cfg, tmp_path, model):
    """Same seed, same stream (a 1,575-interaction Wikipedia-shaped one): training in
    bf16-mixed moves the test MRR by less than 0.01."""
    mrr = {}
    for precision in ("32", "bf16-mixed"):
        cfg = make_cfg(
            [
                f"model={model}",
                "data.synthetic.shape=wikipedia",
                "+data.synthetic.scale=0.01",
                "model.dim=32",
                f"trainer.precision={precision}",
                "eval.baselines=[]",
            ],
            output_dir=tmp_path / precision,
        )
        metrics, _ = train(cfg)
        mrr[precision] = metrics["test/mrr"]
    assert 0.05 < mrr["32"] < 1
    assert abs(mrr["bf16-mixed"] - mrr["32"]) < 0.01, mrr


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_and_evaluates_in_bf16_mixed(make_cfg, model):
    metrics, objects = train(make_cfg([f"model={model}", "trainer.precision=bf16-mixed"]))
    assert objects["trainer"].precision == "bf16-mixed"
    assert 0 < metrics["test/mrr"] <= 1


# --- determinism --------------------------------------------------------------------------


def _deterministic_run(make_cfg, output_dir, model: str) -> dict:
    cfg = make_cfg(
        [f"model={model}", "trainer.deterministic=true", "eval.baselines=[]"],
        output_dir=output_dir,
    )
    metrics, _ = train(cfg)
    assert torch.are_deterministic_algorithms_enabled()
    return {k: metrics[k] for k in ("val/mrr", "test/mrr", "test/ndcg@10")}


@pytest.mark.parametrize("model", MODELS)
def test_every_model_runs_under_deterministic_algorithms(
    make_cfg, tmp_path, model, deterministic_algorithms
):
    """`trainer.deterministic=true` turns torch.use_deterministic_algorithms(True) on:
    every model trains an epoch and evaluates without an op that has no deterministic
    implementation (those raise)."""
    assert 0 < _deterministic_run(make_cfg, tmp_path, model)["test/mrr"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_deterministic_runs_repeat_exactly(make_cfg, tmp_path, model, deterministic_algorithms):
    first = _deterministic_run(make_cfg, tmp_path / "a", model)
    assert _deterministic_run(make_cfg, tmp_path / "b", model) == first


# --- transfers ----------------------------------------------------------------------------


def test_evaluation_chunks_are_moved_to_the_device_once(make_cfg):
    cfg = make_cfg(["model=limnet"])
    dm = instantiate(cfg.data, sampler=instantiate(cfg.sampler))
    dm.setup()
    first = dm.eval_chunks("val", "exact", "meta")
    assert all(s.user.device.type == "meta" for c in first for s in c.steps)
    assert dm.eval_chunks("val", "exact", torch.device("meta")) is first
    cpu = dm.eval_chunks("val", "exact")
    assert all(s.user.device.type == "cpu" for c in cpu for s in c.steps)
    assert dm.eval_chunks("val", "exact") is cpu


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_chunks_are_pinned_and_copied_without_blocking(make_cfg):
    metrics, objects = train(make_cfg(["model=limnet", "trainer=gpu"]))
    dm = objects["datamodule"]
    loader = dm.train_dataloader()
    assert loader.pin_memory
    chunk = next(iter(loader))
    assert chunk.steps[0].user.is_pinned()
    assert objects["module"].device.type == "cuda"
    assert 0 < metrics["test/mrr"] <= 1
