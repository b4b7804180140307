"""Lightning callbacks of tempint."""

from __future__ import annotations

import os
from pathlib import Path
from weakref import proxy

from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["AtomicModelCheckpoint"]


class AtomicModelCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose files appear whole or not at all (temporary file + rename).

    A run killed while saving, or one whose next epoch fails, keeps the previous
    `last.ckpt` readable, so a requeued job always has a checkpoint to resume from.
    """

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        path = Path(filepath)
        tmp = path.with_name(f".{path.name}.tmp")
        trainer.save_checkpoint(str(tmp), self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(tmp, path)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
