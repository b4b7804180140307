"""Which checkpoint a run resumes, checked before any training.

A run folder's `checkpoints/last.ckpt` is resumed only when it is readable and was
written by the same run (same fingerprint, see `tempint.fingerprint`): a damaged file or
one trained with other settings stops the run with one sentence, and the file is left
where it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tempint.errors import UserError
from tempint.fingerprint import fingerprint_differences

__all__ = ["Resume", "ResumeRefused", "find_resume", "LAST"]

log = logging.getLogger("tempint")
LAST = "last.ckpt"
_SHOWN = 6  # differing keys named in the message; the rest are counted


class ResumeRefused(UserError):
    """The run folder holds a checkpoint this run must not resume."""


@dataclass(frozen=True)
class Resume:
    path: str
    epoch: int  # the last finished epoch the checkpoint holds (0-based)


def _read(path: Path) -> dict:
    import torch

    others = sorted(p.name for p in path.parent.glob("*.ckpt") if p.name != path.name)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ValueError("it holds no model state")
    except Exception as err:
        size = path.stat().st_size
        text = (str(err).strip().splitlines() or [type(err).__name__])[0]
        other = f", or copy {others[0]} over it to resume from that epoch" if others else ""
        raise ResumeRefused(
            f"{path} cannot be resumed: it is damaged ({size:,} bytes; {text}); "
            f"delete it to start the run over{other}"
        ) from None
    return checkpoint


def find_resume(dirpath: str | Path | None, fingerprint: dict[str, str]) -> Resume | None:
    """The checkpoint to resume, or None for a fresh start; refuses a damaged or foreign one."""
    if not dirpath:
        return None
    path = Path(dirpath) / LAST
    if not path.exists():
        return None
    checkpoint = _read(path)
    saved = (checkpoint.get("tempint") or {}).get("fingerprint")
    if saved is None:
        log.warning("%s has no run fingerprint (written by an older tempint): not checked", path)
    else:
        diffs = fingerprint_differences(saved, fingerprint)
        if diffs:
            shown = "; ".join(diffs[:_SHOWN])
            more = f"; and {len(diffs) - _SHOWN} more" if len(diffs) > _SHOWN else ""
            raise ResumeRefused(
                f"{path} belongs to a run with other settings ({shown}{more}); to start over, "
                f"use a new run folder (hydra.run.dir=...) or delete {path.parent}, "
                "or rerun with the settings it was trained with"
            )
    return Resume(str(path), int(checkpoint.get("epoch", 0)))
