"""What a run is, so a run folder only ever resumes the run that made it.

A checkpoint carries the fingerprint of its run: every leaf of the resolved config, less
the keys below that cannot change what the model learns, plus the SHA-256 of the data
file. A rerun in the same folder resumes `last.ckpt` only when its own fingerprint
matches; otherwise it would report the old model under the new settings (or fail on a
shape mismatch), so it stops with the keys that differ.

Keys allowed to differ on resume, and why:
- where and how the run writes: `output_dir`, `hydra.*`, `logger.*`, `callbacks.*`,
  `task_name`, `group`, `tags`, `trainer.default_root_dir`, `trainer.enable_progress_bar`,
  `trainer.enable_model_summary`, `trainer.log_every_n_steps`;
- how long it runs: `trainer.max_epochs`, `trainer.max_time` (extending a finished run
  to more epochs is a legitimate resume), `resume`;
- where the data lives: `data.path`, `data.root`, `data.download` (the file's hash
  decides whether it is the same data);
- machine settings that do not change the arithmetic of training: `threads`,
  `trainer.accelerator`, `data.eval_max_batch_size` (evaluation batching);
- what is reported beside the model: `eval.baselines`, `eval.also`.

Everything else (seed, optimiser, model, sampler, split, `eval.mode` / `ties` /
`scorer`, which pick the best checkpoint on validation) must match.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ALLOWED_TO_DIFFER", "run_fingerprint", "fingerprint_differences", "file_sha256"]

ALLOWED_TO_DIFFER = (
    "output_dir",
    "hydra",
    "logger",
    "callbacks",
    "task_name",
    "group",
    "tags",
    "resume",
    "threads",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.max_epochs",
    "trainer.max_time",
    "trainer.accelerator",
    "data.path",
    "data.root",
    "data.download",
    "data.eval_max_batch_size",
    "eval.baselines",
    "eval.also",
)
DATA_KEY = "data file sha256"


def _allowed(key: str) -> bool:
    return any(key == a or key.startswith(a + ".") for a in ALLOWED_TO_DIFFER)


def _leaves(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _leaves(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        # lists and odd values as JSON text, so the fingerprint is plain and comparable
        out[prefix] = json.dumps(value, sort_keys=True, default=str)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_fingerprint(resolved: Mapping[str, Any], data_source: str) -> dict[str, str]:
    """Flat {dotted key: JSON value} of the resolved config, less the keys allowed to
    differ, plus the data file's hash (generated data is described by its config)."""
    leaves: dict[str, Any] = {}
    _leaves(resolved, "", leaves)
    out = {k: v for k, v in leaves.items() if not _allowed(k)}
    if data_source and Path(data_source).is_file():
        out[DATA_KEY] = file_sha256(data_source)
    return out


def fingerprint_differences(saved: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """'key: old -> new' for every key whose value differs (absent shows as 'unset')."""
    out = []
    for key in sorted(set(saved) | set(current)):
        if _allowed(key):  # a checkpoint written before a key became allowed to differ
            continue
        old, new = saved.get(key, "unset"), current.get(key, "unset")
        if old != new:
            if key == DATA_KEY:
                old, new = old[:12], new[:12]
            out.append(f"{key}: {old} -> {new}")
    return out
