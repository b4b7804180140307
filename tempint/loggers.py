"""A CSV logger whose history survives a resume.

Lightning's CSVLogger deletes `metrics.csv` when its folder is not empty, so a run killed
and resumed in the same folder loses the epochs before the kill. Here a resumed run keeps
the rows of the epochs its checkpoint holds and appends the rest; rows of an epoch the
checkpoint does not hold (trained, then lost with the kill) are dropped, since that epoch
is trained again. A fresh run starts a fresh file, as before.
"""

from __future__ import annotations

import csv
import io
import os

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from tempint.io import atomic_write_text

__all__ = ["CSVLogger"]


class _KeepingWriter(ExperimentWriter):
    """ExperimentWriter that keeps the rows of epochs up to `keep_epoch` (None: keep none)."""

    def __init__(self, log_dir: str, keep_epoch: int | None) -> None:
        self._keep_epoch = keep_epoch
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if self._keep_epoch is None:
            super()._check_log_dir_exists()
            return
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = sorted(reader.fieldnames or [])  # the order the writer appends in
            rows = [r for r in reader if _epoch(r) is not None and _epoch(r) <= self._keep_epoch]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.metrics_file_path, out.getvalue())
        self.metrics_keys = fields


def _epoch(row: dict) -> int | None:
    """The row's epoch; None for rows with none (the end-of-run summary, written again)."""
    try:
        return int(float(row.get("epoch") or ""))
    except ValueError:
        return None


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSVLogger, appending to the history of a resumed run (`keep_history`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._keep_epoch: int | None = None

    def keep_history(self, epoch: int) -> None:
        """Keep the rows of epochs 0..`epoch` (those the resumed checkpoint holds)."""
        self._keep_epoch = int(epoch)

    @property
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _KeepingWriter(self.log_dir, self._keep_epoch)
        return self._experiment
