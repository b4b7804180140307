"""Lightning callbacks of tempint."""

from __future__ import annotations

import errno
import logging
import math
import os
from pathlib import Path
from weakref import proxy

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from tempint.errors import UserError

__all__ = ["AtomicModelCheckpoint", "DivergenceWarning", "OutputError", "DISK_ERRNOS"]

log = logging.getLogger("tempint")

# write failures that are the output folder's fault, not the program's
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


class OutputError(UserError, OSError):
    """The output folder cannot take a file (full, read-only, not a folder)."""


def _disk_fault(err: BaseException) -> bool:
    if isinstance(err, OSError):
        return err.errno in DISK_ERRNOS
    # torch's zip writer reports a failed write (full disk) as a RuntimeError
    return isinstance(err, RuntimeError) and "write" in str(err).lower()


class AtomicModelCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose files appear whole or not at all (temporary file + rename).

    A run killed while saving, or one whose next epoch fails, keeps the previous
    `last.ckpt` readable, so a requeued job always has a checkpoint to resume from; a
    failed save removes its partial file. Files are overwritten, never versioned
    (`last-v1.ckpt`): the run fingerprint guarantees that a resumed folder holds this
    run's checkpoints only, and a moved folder must keep resuming into its own `last.ckpt`.
    """

    def __init__(self, *args, enable_version_counter: bool = False, **kwargs):
        super().__init__(*args, enable_version_counter=enable_version_counter, **kwargs)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        path = Path(filepath)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            trainer.save_checkpoint(str(tmp), self.save_weights_only)
            if trainer.is_global_zero:
                os.replace(tmp, path)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            if _disk_fault(err):
                text = getattr(err, "strerror", None) or str(err).strip().splitlines()[0]
                raise OutputError(
                    f"could not write checkpoint {path} ({text}); free space in {path.parent} "
                    "or choose another hydra.run.dir (the previous checkpoint is intact)"
                ) from err
            raise
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def load_state_dict(self, state_dict: dict) -> None:
        """A run folder moved since the checkpoint: its paths are rebased onto the new folder,
        so the best checkpoint is read from here and `last.ckpt` is written here."""
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            state_dict = dict(state_dict, dirpath=self.dirpath)

            def here(p):
                return str(Path(self.dirpath) / Path(p).name) if p else p

            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                state_dict[key] = here(state_dict.get(key))
            models = state_dict.get("best_k_models") or {}
            state_dict["best_k_models"] = {here(k): v for k, v in models.items()}
        super().load_state_dict(state_dict)


class DivergenceWarning(Callback):
    """Warns once when the epoch's training loss explodes while still finite.

    A NaN stops the run (the module's check); a loss of 1e25 trains on and yields a
    model worth nothing. Exploded means above `limit` (1e10) or more than `factor` (1e6)
    times the first epoch's loss of this process (a resumed run compares with its first
    epoch after the resume).
    """

    def __init__(self, factor: float = 1e6, limit: float = 1e10, key: str = "train/loss"):
        self.factor = factor
        self.limit = limit
        self.key = key
        self.first: float | None = None
        self.warned = False

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get(self.key)
        if value is None or self.warned:
            return
        loss = float(value)
        if not math.isfinite(loss):
            return
        if self.first is None:
            self.first = loss
        reference = abs(self.first)
        if abs(loss) > self.limit or (reference > 0 and abs(loss) > self.factor * reference):
            self.warned = True
            log.warning(
                "the training loss diverged: %.3g at epoch %d (first epoch: %.3g); the model is "
                "probably useless: lower optimizer.lr or set gradient_clip",
                loss,
                trainer.current_epoch,
                self.first,
            )
