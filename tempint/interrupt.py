"""A run stopped by a signal ends with a non-zero exit and says how to go on.

`kill`, `timeout`, `docker stop` and `scancel` send SIGTERM; Lightning turns it into a
`SystemExit` with no code (exit 0, as if the run had succeeded) and Ctrl-C into exit 1.
Here both end as `RunStopped`, which the CLI reports in one line with the shell's codes
(143 for SIGTERM, 130 for SIGINT) so scripts and schedulers see a failure, and the line
says that the same command resumes from `last.ckpt`.

Under SLURM, submitit's USR2 handler requeues the job and exits by itself; that exit
passes through untouched.
"""

from __future__ import annotations

import signal
from pathlib import Path

__all__ = ["RunStopped", "fit_interruptible"]


class RunStopped(Exception):
    """The run was stopped by a signal; `exit_code` is 128 + its number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def _where(checkpoint_cb) -> str:
    last = Path(checkpoint_cb.dirpath) / "last.ckpt" if checkpoint_cb is not None else None
    if last is not None and last.exists():
        return f"{last} holds the last finished epoch: run the same command to resume from it"
    return "no checkpoint was written yet: the same command starts the run over"


def fit_interruptible(trainer, module, datamodule, ckpt_path, checkpoint_cb) -> None:
    """`trainer.fit`, with SIGTERM and SIGINT turned into `RunStopped`."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        raise RunStopped(
            f"stopped by SIGTERM in epoch {trainer.current_epoch}; {_where(checkpoint_cb)}",
            signal.SIGTERM,
        ) from None
    except SystemExit as stop:
        # Lightning ends a KeyboardInterrupt with sys.exit(1) after marking the trainer
        if stop.code == 1 and trainer.interrupted:
            raise _interrupted(trainer, checkpoint_cb) from None
        raise
    if trainer.interrupted:
        raise _interrupted(trainer, checkpoint_cb)


def _interrupted(trainer, checkpoint_cb) -> RunStopped:
    return RunStopped(
        f"stopped by SIGINT (Ctrl-C) in epoch {trainer.current_epoch}; {_where(checkpoint_cb)}",
        signal.SIGINT,
    )
