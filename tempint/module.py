"""The LightningModule that drives any model of the contract, with memory carried by hand."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor

from tempint.data.batch import Chunk
from tempint.errors import ConfigError, UserError
from tempint.eval.protocol import StreamEvaluator, restore_state, score_chunk, snapshot_state
from tempint.models.base import InteractionModel

__all__ = ["InteractionModule", "NumericalFault", "fused_allowed"]

MIXED = ("bf16-mixed", "16-mixed")


def fused_allowed(precision: str | int | None) -> bool:
    """Whether the optimiser may run fused: only in full precision.

    A fused Adam unscales 16-mixed gradients inside its step, after the module has clipped
    them (so it would clip scaled ones), and Lightning refuses clipping with it under any
    mixed precision; its gain (one kernel per step) is the smaller matter.
    """
    return str(precision) not in MIXED


class NumericalFault(UserError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class InteractionModule(L.LightningModule):
    """Owns the order of one training chunk: score, loss, update memory, step, detach.

    Manual optimisation, because a chunk of a memory model is several dependent steps
    (the t-batches of a window) with one backward: Lightning's automatic loop would step
    after each. Memory is reset at every epoch start, detached after every chunk,
    snapshotted before validation and restored after it, so a checkpoint holds the
    memory as of the end of training, from which the final evaluation replays
    validation and then test.
    """

    def __init__(
        self,
        model: InteractionModel,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        gradient_clip: float | None = 1.0,
        ties: str = "average",
        scorer: str = "auto",
    ):
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.gradient_clip = gradient_clip
        self.ties = ties
        self.val_scorers = list(model.capabilities.scorers) if scorer == "auto" else [scorer]
        self.epoch_seconds: list[float] = []
        self.train_interactions = 0
        self._epoch_start = 0.0
        self._epoch_clock_running = False
        self._epoch_train_seconds = 0.0
        self._snapshot: dict[str, Tensor] | None = None
        self._evaluator: StreamEvaluator | None = None
        self._unchecked_loss: tuple[Tensor, Tensor, str] | None = None
        self.fit_threads: int | None = None

    # ---- set-up ------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.trainer is not None and self.trainer.world_size > 1:
            raise ConfigError(
                f"memory models run one process per job, but the trainer has "
                f"{self.trainer.world_size}; set trainer.devices=1 and parallelise with a sweep"
            )

    def on_fit_start(self) -> None:
        self.fit_threads = torch.get_num_threads()

    def training_precision(self) -> str:
        """The trainer's precision ("32-true", "bf16-mixed", ...); 32-true when detached."""
        trainer = self._trainer
        return str(trainer.precision) if trainer is not None else "32-true"

    def build_optimizer(self, params: list[Tensor], factory: Callable | None = None):
        """The configured optimiser over `params`, fused only where `fused_allowed` says so
        (the one place that decides it, for training and online evaluation alike)."""
        factory = self.optimizer_factory if factory is None else factory
        keywords = getattr(factory, "keywords", None) or {}
        if keywords.get("fused") and not fused_allowed(self.training_precision()):
            return factory(params, fused=False)
        return factory(params)

    @contextmanager
    def evaluating(self) -> Iterator[torch.device]:
        """The device, autocast and CPU threads the module trained with, for the final
        evaluation: Lightning's teardown moves the module to the CPU after `fit`, and
        validation during fit ran under the precision plugin's autocast, so without this
        the reported numbers would be computed elsewhere and otherwise than the ones that
        chose the checkpoint. A module never attached to a trainer stays as it is."""
        trainer = self._trainer
        if trainer is None:
            yield self.device
            return
        device = trainer.strategy.root_device
        self.to(device)
        threads = torch.get_num_threads()
        if self.fit_threads:
            torch.set_num_threads(self.fit_threads)
        try:
            with trainer.precision_plugin.forward_context():
                yield device
        finally:
            torch.set_num_threads(threads)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params or self.optimizer_factory is None or not self.model.capabilities.learned:
            return None
        optimizer = self.build_optimizer(params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        if not isinstance(batch, Chunk):
            return batch
        # host-to-device copies from pinned memory (the datamodule pins on CUDA) overlap
        # with the work already queued; the other direction must stay blocking
        return batch.to(device, non_blocking=torch.device(device).type == "cuda")

    # ---- training ---------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self.model.reset_state()
        self._epoch_start = time.perf_counter()
        self._epoch_clock_running = True
        self._epoch_interactions = 0

    def run_chunk(self, chunk: Chunk) -> Tensor | None:
        """The summed training loss of a chunk (`InteractionModel.train_chunk`)."""
        return self.model.train_chunk(chunk)

    def training_step(self, chunk: Chunk, batch_idx: int) -> None:
        loss = self.run_chunk(chunk)
        self._epoch_interactions += chunk.num_interactions
        if loss is not None and loss.requires_grad:
            self.optimizer_step_on(loss, batch_idx)
            self.log(
                "train/loss",
                loss.detach(),
                on_step=False,
                on_epoch=True,
                batch_size=chunk.num_interactions,
            )
        self.model.detach_state()

    def optimizer_step_on(self, loss: Tensor, batch_idx: int | None = None) -> None:
        """Backward and one optimiser step; gradients are clipped in
        `on_before_optimizer_step`, where the precision plugin has unscaled them.

        The loss is checked for NaN/inf once per chunk, one chunk late: reading the flag
        of this chunk now would wait for its forward pass, stalling an accelerator at
        every step. A bad chunk is still caught before the next step, validation or
        checkpoint (`check_loss`), so the last good checkpoint is never overwritten.
        """
        self.check_loss()
        where = (
            f"epoch {self.current_epoch}, batch {batch_idx}"
            if batch_idx is not None
            else "evaluation"
        )
        self._unchecked_loss = (torch.isfinite(loss.detach()), loss.detach(), where)
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()

    def check_loss(self) -> None:
        """Raise NumericalFault if the last unchecked training loss was NaN or infinite."""
        if self._unchecked_loss is None:
            return
        finite, loss, where = self._unchecked_loss
        self._unchecked_loss = None
        if not bool(finite):
            raise NumericalFault(
                f"the training loss became {float(loss)} at {where}; "
                f"{_checkpoint_note(self._trainer)}; lower optimizer.lr or set gradient_clip"
            )

    def on_before_optimizer_step(self, optimizer) -> None:
        """Clip here: Lightning calls this after its 16-mixed scaler unscaled the gradients
        (clipping before `optimizer.step()` would clip the scaled ones)."""
        if self.gradient_clip:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.gradient_clip, gradient_clip_algorithm="norm"
            )

    def _stop_epoch_clock(self) -> None:
        """Training time of the epoch, taken once: validation runs before the epoch ends."""
        if self._epoch_clock_running:
            if self.device.type == "cuda":  # queued kernels belong to this epoch
                torch.cuda.synchronize(self.device)
            self._epoch_train_seconds = time.perf_counter() - self._epoch_start
            self._epoch_clock_running = False

    def on_train_epoch_end(self) -> None:
        self.check_loss()
        self._stop_epoch_clock()
        seconds = self._epoch_train_seconds
        self.epoch_seconds.append(seconds)
        self.train_interactions = self._epoch_interactions
        self.log("train/seconds_per_epoch", seconds, on_epoch=True)
        self.log("train/interactions_per_second", self._epoch_interactions / max(seconds, 1e-9))
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    # ---- validation (frozen, memory restored afterwards) ------------------------------
    def on_validation_epoch_start(self) -> None:
        self.check_loss()
        if getattr(self, "_epoch_clock_running", False):
            self._stop_epoch_clock()
        self._snapshot = snapshot_state(self.model)
        self._evaluator = StreamEvaluator(self.val_scorers, self.ties, device=self.device)

    def validation_step(self, chunk: Chunk, batch_idx: int) -> None:
        score_chunk(self.model, chunk, self._evaluator)

    def on_validation_epoch_end(self) -> None:
        metrics = self._evaluator.compute()
        best = max(metrics, key=lambda s: metrics[s]["mrr"])
        values = metrics[best]
        self.log("val/mrr", values["mrr"], prog_bar=True)
        self.log("val/recall@10", values["recall@10"])
        for scorer, m in metrics.items():
            if not math.isnan(m["mrr"]):
                self.log(f"val/{scorer}/mrr", m["mrr"])
        with torch.no_grad():
            restore_state(self.model, self._snapshot)  # grown buffers (pair tables) too
        self._snapshot = None

    # ---- checkpoints carry the training-epoch timings -------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.check_loss()  # a NaN step must not reach a checkpoint
        checkpoint["tempint"] = {
            "epoch_seconds": list(self.epoch_seconds),
            "train_interactions": self.train_interactions,
            "rng": _rng_state(),
            # what the run is (config and data); a resume checks it (tempint.resume)
            "fingerprint": getattr(self, "fingerprint", None),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        extra = checkpoint.get("tempint", {})
        self.epoch_seconds = list(extra.get("epoch_seconds", []))
        self.train_interactions = int(extra.get("train_interactions", 0))
        if "rng" in extra:
            _set_rng_state(extra["rng"])


def _checkpoint_note(trainer) -> str:
    """What is left to resume from: the last checkpoint if one was written, else nothing."""
    callback = getattr(trainer, "checkpoint_callback", None) if trainer is not None else None
    last = getattr(callback, "last_model_path", "") or ""
    if last and Path(last).exists():
        return f"the last good checkpoint {last} is intact"
    return "no checkpoint was written before it, so nothing of this run is kept"


def _rng_state() -> dict:
    """Random generators as of the checkpoint: a resumed run draws the same dropout masks
    and negatives as one never interrupted (Lightning does not save them). Tensors and
    plain values only, so `torch.load(weights_only=True)` reads it back."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
