"""`logger=wandb` with no network and no API key: an offline W&B run beside the CSV log,
holding the resolved config and the values of metrics.json, closed at the end."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tempint.train import train

wandb = pytest.importorskip("wandb")


def read_offline_run(path: Path) -> list:
    """The records of an offline run's `.wandb` file, decoded.

    The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of records with a
    7-byte header each (crc32, length, type: 1 full, 2 first, 3 middle, 4 last), every
    payload a `Record` protobuf. Read here because offline runs keep config and metrics
    nowhere else until `wandb sync`.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, payloads = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer padding
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)
    records = []
    for payload in payloads:
        record = pb.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """No key, an unreachable server, W&B's own folders inside tmp_path."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))


def test_wandb_offline_run_holds_config_and_metrics(make_cfg, tmp_path, no_network):
    cfg = make_cfg(
        ["model=static", "logger=wandb", "trainer.max_epochs=2", "tags=[ablation,static]"],
        output_dir=tmp_path / "run",
    )
    metrics, _ = train(cfg)

    assert wandb.run is None, "train() closes its W&B run"
    run_dir = tmp_path / "run"
    assert (run_dir / "csv" / "metrics.csv").exists(), "the CSV logger stays on"
    (offline,) = sorted((run_dir / "wandb").glob("offline-run-*"))
    (log_file,) = offline.glob("run-*.wandb")
    records = read_offline_run(log_file)
    kinds = [r.WhichOneof("record_type") for r in records]

    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "tempint"
    assert run.run_group == "tests"
    assert run.display_name == "static-synthetic-seed42"
    assert list(run.tags) == ["ablation", "static"]

    config = {
        u.key: json.loads(u.value_json)
        for r in records
        if r.WhichOneof("record_type") == "config"
        for u in r.config.update
    }
    assert config["seed"] == 42
    assert config["optimized_metric"] == "val/mrr"
    assert config["model"]["_target_"] == "tempint.models.static.StaticEmbedding"
    assert config["output_dir"] == str(run_dir)

    logged: dict[str, float] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            for item in r.history.item:
                key = item.key or "/".join(item.nested_key)
                logged[key] = json.loads(item.value_json)
    for key in ("val/mrr", "test/mrr", "test/recall@10", "test/recency/mrr", "train/epochs"):
        assert logged[key] == pytest.approx(metrics[key]), key
    assert "exit" in kinds, "wandb.finish() was called"
