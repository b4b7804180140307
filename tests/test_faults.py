"""Runs that cannot lie: each numbered fault of a careless user, reproduced.

Every case asserts the exit code, the one line (no traceback) and that nothing is lost:
the checkpoint that was there is still there, every epoch is still in the history, every
good run is still in the report.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import http.server
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict

from tempint.callbacks import AtomicModelCheckpoint
from tempint.config import BASELINE_NAMES
from tempint.data import registry
from tempint.data.events import DuplicateRowsWarning, TimestampUnitWarning, load_events
from tempint.errors import ConfigError, DataError
from tempint.eval.session import BASELINES
from tempint.models.static import StaticEmbedding
from tempint.module import InteractionModule, NumericalFault
from tempint.report import main as report_main
from tempint.resume import ResumeRefused
from tempint.train import train

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "data=synthetic",
    "data.synthetic.shape=tiny",
    "model=static",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=csv",
]
COLUMNS = {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"}


def run_cli(*args: str, prelude: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    """`tempint-train` in a fresh process of this checkout; `prelude` runs first (fault
    injection), and this folder is importable so configs can name callbacks defined here."""
    code = f"{prelude}\nfrom tempint.train import main\nmain()"
    full_env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH")])
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=full_env,
    )


def one_line(result: subprocess.CompletedProcess) -> str:
    """The last stderr line, after checking that stderr holds no traceback."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("tempint-")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def csv_epochs(run_dir: Path) -> list[int]:
    import csv

    with open(run_dir / "csv" / "metrics.csv", newline="") as fh:
        return sorted({int(float(r["epoch"])) for r in csv.DictReader(fh) if r.get("epoch")})


class SignalAt(Callback):
    """Sends `signum` to its own process at the start of `epoch`, once per run folder
    (a marker file), so the same command run again goes through."""

    def __init__(self, run_dir: str, signum: int, epoch: int = 1):
        self.marker = Path(run_dir) / f"signalled-{signum}"
        self.signum = signum
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), self.signum)
            time.sleep(0.5)  # the handler runs here


class Exit(Callback):
    """Leaves the process the way submitit's USR2 handler does after a requeue."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            sys.exit(-1)


# ---- 1. a run folder resumes only the run that made it -----------------------------
def test_1_rerun_with_other_settings_is_refused_before_training(tmp_path):
    run_dir = tmp_path / "run"
    first = run_cli(*TINY, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}")
    assert first.returncode == 0, first.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    before = {p.name: sha(p) for p in [last, run_dir / "metrics.json"]}

    again = run_cli(
        *TINY,
        "trainer.max_epochs=1",
        "seed=7",
        "optimizer.lr=0.01",
        "model.objective=mse",
        f"hydra.run.dir={run_dir}",
    )
    assert again.returncode == 2
    line = one_line(again)
    for expected in ("seed: 42 -> 7", "optimizer.lr: 0.001 -> 0.01", "model.objective:"):
        assert expected in line
    assert "new run folder" in line and f"delete {run_dir / 'checkpoints'}" in line
    # the old run is untouched: its checkpoint and its results
    assert {p.name: sha(p) for p in [last, run_dir / "metrics.json"]} == before
    # 10: the one line of an exit 2 is in train.log too
    assert line.removeprefix("tempint-train: ") in (run_dir / "train.log").read_text()


def _csv_data(path: Path, rows: list[tuple]) -> Path:
    path.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    return path


def _stream(n: int = 300, shift: int = 0) -> list[tuple]:
    return [((k * 7 + shift) % 11, (k * 3) % 5, 100 + k) for k in range(n)]


def test_1_other_data_file_is_refused_and_a_moved_copy_is_not(make_cfg, tmp_path):
    a = _csv_data(tmp_path / "a.csv", _stream())
    b = _csv_data(tmp_path / "b.csv", _stream(shift=1))
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(a, moved / "a.csv")
    run_dir = tmp_path / "run"

    def cfg(path: Path, epochs: int = 1):
        overrides = [o for o in TINY if not o.startswith("data")]
        return make_cfg(
            [*overrides, "data=custom_csv", f"data.path={path}", f"trainer.max_epochs={epochs}"],
            fast=False,
            output_dir=run_dir,
        )

    train(cfg(a))
    with pytest.raises(ResumeRefused, match=r"data file sha256: [0-9a-f]{12} -> [0-9a-f]{12}"):
        train(cfg(b))
    metrics, objects = train(cfg(moved / "a.csv", epochs=2))  # same bytes elsewhere: resumes
    assert metrics["train/epochs"] == 2 and objects["trainer"].current_epoch == 2


@pytest.mark.parametrize("change", [["model.dim=16"], ["model=limnet"]], ids=["dim", "model"])
def test_1_changed_shape_is_refused_not_a_size_mismatch(make_cfg, tmp_path, change):
    run_dir = tmp_path / "run"
    train(make_cfg(["model=static"], output_dir=run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    before = sha(last)
    with pytest.raises(ResumeRefused, match="belongs to a run with other settings"):
        train(make_cfg(["model=static", *change], output_dir=run_dir))
    assert sha(last) == before


def test_1_extending_max_epochs_resumes(make_cfg, tmp_path):
    run_dir = tmp_path / "run"
    train(make_cfg(["model=static", "trainer.max_epochs=1"], output_dir=run_dir))
    metrics, objects = train(make_cfg(["model=static", "trainer.max_epochs=2"], output_dir=run_dir))
    assert metrics["train/epochs"] == 2
    assert len(objects["module"].epoch_seconds) == 2
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["tempint"]["fingerprint"]["seed"] == "42"
    assert not any(k.startswith("trainer.max_epochs") for k in saved["tempint"]["fingerprint"])


# ---- 2. signals: non-zero exit and a line that says how to go on ------------------
def test_2_3_sigterm_exits_143_and_the_same_command_resumes_with_history(tmp_path):
    run_dir = tmp_path / "run"
    args = [
        *TINY,
        "trainer.max_epochs=3",
        f"hydra.run.dir={run_dir}",
        "+callbacks.signal._target_=test_faults.SignalAt",
        "+callbacks.signal.run_dir=${output_dir}",
        f"+callbacks.signal.signum={int(signal.SIGTERM)}",
    ]
    stopped = run_cli(*args)
    assert stopped.returncode == 143
    line = one_line(stopped)
    assert "stopped by SIGTERM in epoch 1" in line and "run the same command to resume" in line
    assert not (run_dir / "metrics.json").exists()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["epoch"] == 0
    assert csv_epochs(run_dir) == [0]

    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["train/epochs"] == 3
    # 3: the epoch before the kill is still in the history, each epoch once
    assert csv_epochs(run_dir) == [0, 1, 2]


def test_2_sigint_exits_130_and_says_the_same_command_resumes(tmp_path):
    run_dir = tmp_path / "run"
    stopped = run_cli(
        *TINY,
        "trainer.max_epochs=2",
        f"hydra.run.dir={run_dir}",
        "+callbacks.signal._target_=test_faults.SignalAt",
        "+callbacks.signal.run_dir=${output_dir}",
        f"+callbacks.signal.signum={int(signal.SIGINT)}",
    )
    assert stopped.returncode == 130
    line = one_line(stopped)
    assert "stopped by SIGINT" in line and "run the same command to resume" in line
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


def test_2_submitit_requeue_exit_passes_through(make_cfg):
    """Under SLURM, submitit requeues the job in its USR2 handler and leaves with
    sys.exit(-1); that exit must stay as it is, not become a 'stopped' report."""
    cfg = make_cfg(["model=static", "trainer.max_epochs=2"])
    with open_dict(cfg):
        cfg.callbacks.exit = {"_target_": f"{__name__}.Exit"}
    with pytest.raises(SystemExit) as stop:
        train(cfg)
    assert stop.value.code == -1


# ---- 3. history and moved folders ---------------------------------------------------
def test_3_moved_run_folder_resumes_into_its_own_last_ckpt(make_cfg, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    train(make_cfg(["model=static", "trainer.max_epochs=1"], output_dir=old))
    shutil.move(old, new)
    metrics, _ = train(make_cfg(["model=static", "trainer.max_epochs=2"], output_dir=new))
    names = sorted(p.name for p in (new / "checkpoints").iterdir())
    assert not any("-v1" in n for n in names), names
    assert torch.load(new / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    assert Path(metrics["best_checkpoint"]).parent == new / "checkpoints"
    assert csv_epochs(new) == [0, 1]


def test_3_checkpoint_paths_are_rebased_after_a_move(tmp_path):
    callback = AtomicModelCheckpoint(dirpath=str(tmp_path / "new"))
    callback.load_state_dict(
        {
            "dirpath": str(tmp_path / "old"),
            "best_model_path": str(tmp_path / "old" / "epoch_000.ckpt"),
            "best_model_score": torch.tensor(0.5),
            "last_model_path": str(tmp_path / "old" / "last.ckpt"),
            "best_k_models": {str(tmp_path / "old" / "epoch_000.ckpt"): torch.tensor(0.5)},
            "kth_best_model_path": str(tmp_path / "old" / "epoch_000.ckpt"),
            "kth_value": torch.tensor(0.5),
        }
    )
    assert callback.best_model_path == str(tmp_path / "new" / "epoch_000.ckpt")
    assert callback.last_model_path == str(tmp_path / "new" / "last.ckpt")
    assert list(callback.best_k_models) == [str(tmp_path / "new" / "epoch_000.ckpt")]


# ---- 4. the report survives bad files ----------------------------------------------
def test_4_report_skips_bad_metrics_files_naming_each(make_cfg, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    train(make_cfg(["model=static"], output_dir=sweep / "0"))
    capsys.readouterr()  # the run's own summary
    good = (sweep / "0" / "metrics.json").read_text()
    (sweep / "5").mkdir()
    (sweep / "5" / "metrics.json").write_text(good)
    bad = {"1": good[:100], "2": "", "3": "[]", "4": "null"}
    for job, text in bad.items():
        (sweep / job).mkdir()
        (sweep / job / "metrics.json").write_text(text)
    report_main([str(sweep)])
    out, err = capsys.readouterr()
    warnings = [ln for ln in err.splitlines() if ln.startswith("tempint-report: warning:")]
    assert len(warnings) == 4 and len(err.strip().splitlines()) == 4
    for job in bad:
        assert any(str(sweep / job / "metrics.json") in w for w in warnings), job
    rows = [ln for ln in out.splitlines() if ln.startswith("| ") and "StaticEmbedding" in ln]
    assert [r.split(" | ")[0] for r in rows] == ["| 0", "| 5"]


def test_4_report_on_a_missing_path_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        report_main([str(tmp_path / "nope")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"tempint-report: {tmp_path / 'nope'}: no such file or directory; give a run or multirun folder"
    )


# ---- 5. every config check before training ----------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["eval.baselines=[recency,random]"], "eval.baselines names unknown heuristics random"),
        (["eval.mode=online", "eval.online_windows=0"], "eval.online_windows=0 is invalid"),
        (["model=limnet", "model.cell=rnn"], "model.cell='rnn' is unknown; use one of gru"),
        (["model=repeat_aware", "model.hidden=-3"], "model.hidden=-3 is invalid"),
        (["model=repeat_aware", "model.hidden=0"], "model.hidden=0 is invalid"),
        (["+trainer.max_epoch=1"], "did you mean trainer.max_epochs?"),
    ],
    ids=["baseline", "windows", "cell", "hidden-3", "hidden0", "trainer-typo"],
)
def test_5_config_mistakes_stop_before_training(tmp_path, args, message):
    run_dir = tmp_path / "run"
    result = run_cli(*TINY, *args, f"hydra.run.dir={run_dir}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert message in one_line(result)
    assert not (run_dir / "checkpoints").exists()  # nothing was trained
    assert "synthetic:tiny" not in (run_dir / "train.log").read_text()  # no data loaded


def test_5_baseline_names_agree_with_the_heuristics():
    assert set(BASELINE_NAMES) == set(BASELINES)


def test_5_checks_run_in_process_too(make_cfg):
    with pytest.raises(ConfigError, match="model.base.cell='rnn'"):
        train(make_cfg(["model=repeat_aware", "model.base.cell=rnn"]))


# ---- 6. data anomalies -------------------------------------------------------------
def test_6_duplicate_rows_are_counted_and_kept(tmp_path):
    rows = _stream(40)
    path = _csv_data(tmp_path / "dup.csv", rows + rows[:5] + rows[:2])
    for _ in range(2):  # from the source, then from the cache: warned both times
        with pytest.warns(DuplicateRowsWarning, match=r"dup\.csv: 7 of 47 rows repeat") as seen:
            events = load_events(path, columns=COLUMNS)
        assert len([w for w in seen if w.category is DuplicateRowsWarning]) == 1
        assert events.num_interactions == 47


def test_6_rows_that_differ_only_in_features_are_not_duplicates(tmp_path, recwarn):
    path = tmp_path / "jodie.csv"
    rows = "".join(f"{k % 7},{k % 3},{100 + k},0,{k % 2}.5\n" for k in range(20))
    path.write_text("user_id,item_id,timestamp,state_label,f1\n" + rows + "1,1,101,0,9.0\n")
    events = load_events(path, cache=False)  # row 1,1,101 repeats with other features
    assert events.num_interactions == 21
    assert not [w for w in recwarn if w.category is DuplicateRowsWarning]
    with pytest.warns(DuplicateRowsWarning, match="1 of 21 rows"):
        load_events(path, cache=False, keep_features=False)


def test_6_millisecond_timestamps_are_warned_once(tmp_path):
    rows = [(u, i, 1_700_000_000_000 + 1000 * t) for u, i, t in _stream(30)]
    path = _csv_data(tmp_path / "ms.csv", rows)
    with pytest.warns(TimestampUnitWarning, match="look like milliseconds") as seen:
        load_events(path, columns=COLUMNS, cache=False)
    assert len([w for w in seen if w.category is TimestampUnitWarning]) == 1


def test_6_seconds_and_unique_rows_are_silent(tmp_path, recwarn):
    load_events(_csv_data(tmp_path / "ok.csv", _stream(30)), columns=COLUMNS, cache=False)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("text", ["NaN", "nan", "null"])
def test_6_nan_as_an_id_is_refused(tmp_path, text):
    path = tmp_path / "nan.csv"
    path.write_text(f"user_id,item_id,timestamp\n1,5,10\n{text},6,20\n2,5,30\n")
    with pytest.raises(DataError, match=rf"nan\.csv, row 3, column user_id: '{text}' is a missing"):
        load_events(path, columns=COLUMNS, cache=False)


# ---- 7. divergence -----------------------------------------------------------------
def _poison(monkeypatch, factor: float, from_epoch: int):
    state = {"epoch": 0}
    original = StaticEmbedding.forward
    start = InteractionModule.on_train_epoch_start

    def forward(self, batch, mode):
        out = original(self, batch, mode)
        if mode.losses and state["epoch"] >= from_epoch:
            out.losses["objective"] = out.losses["objective"] * factor
        return out

    def track(self):
        state["epoch"] = self.current_epoch
        start(self)

    monkeypatch.setattr(StaticEmbedding, "forward", forward)
    monkeypatch.setattr(InteractionModule, "on_train_epoch_start", track)


def test_7_exploded_finite_loss_is_warned_once(make_cfg, monkeypatch, caplog):
    _poison(monkeypatch, 1e25, from_epoch=1)
    with caplog.at_level(logging.WARNING, logger="tempint"):
        metrics, _ = train(make_cfg(["model=static", "trainer.max_epochs=3", "gradient_clip=null"]))
    diverged = [r for r in caplog.records if "diverged" in r.getMessage()]
    assert len(diverged) == 1
    assert "at epoch 1" in diverged[0].getMessage()
    assert metrics["train/epochs"] == 3  # a warning, not a stop


def test_7_healthy_loss_is_not_warned(make_cfg, caplog):
    with caplog.at_level(logging.WARNING, logger="tempint"):
        train(make_cfg(["model=static", "trainer.max_epochs=2"]))
    assert not [r for r in caplog.records if "diverged" in r.getMessage()]


def test_7_nan_before_any_checkpoint_does_not_promise_one(make_cfg, monkeypatch):
    _poison(monkeypatch, float("nan"), from_epoch=0)
    cfg = make_cfg(["model=static"])
    with pytest.raises(NumericalFault, match="no checkpoint was written before it") as err:
        train(cfg)
    assert "intact" not in str(err.value)
    assert not (Path(cfg.output_dir) / "checkpoints" / "last.ckpt").exists()


# ---- 8. checkpoint and output-folder faults ----------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_8_damaged_last_ckpt_is_one_line_and_kept(tmp_path, damage):
    run_dir = tmp_path / "run"
    first = run_cli(*TINY, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}")
    assert first.returncode == 0, first.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    before = sha(last)
    again = run_cli(*TINY, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}")
    assert again.returncode == 2
    line = one_line(again)
    assert f"{last} cannot be resumed: it is damaged" in line
    assert "delete it to start the run over, or copy epoch_000.ckpt over it" in line
    assert sha(last) == before


def test_8_run_dir_naming_a_file(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    result = run_cli(*TINY, f"hydra.run.dir={target}")
    assert result.returncode == 2
    assert f"hydra.run.dir={target} names a file" in one_line(result)
    assert target.read_text() == "keep me"


def test_8_read_only_output_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    prelude = ""
    if os.geteuid() == 0:  # root writes anywhere: the kernel's refusal is stood in for
        prelude = (
            "import os\n"
            "_access = os.access\n"
            f"os.access = lambda p, m, **k: False if str(p).startswith({str(folder)!r}) "
            "else _access(p, m, **k)"
        )
    try:
        result = run_cli(*TINY, f"hydra.run.dir={folder}/run", prelude=prelude)
    finally:
        folder.chmod(stat.S_IRWXU)
    assert result.returncode == 2
    assert f"{folder} is not writable" in one_line(result)


FULL_DISK = """
import errno, lightning
_save = lightning.Trainer.save_checkpoint
def _full(self, filepath, weights_only=False, storage_options=None):
    if self.current_epoch >= 1:
        with open(filepath, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device", filepath)
    return _save(self, filepath, weights_only, storage_options)
lightning.Trainer.save_checkpoint = _full
"""


def test_8_full_disk_removes_partial_checkpoint_and_keeps_the_last(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(*TINY, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", prelude=FULL_DISK)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_line(result)
    assert "No space left on device" in line and "the previous checkpoint is intact" in line
    folder = run_dir / "checkpoints"
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert torch.load(folder / "last.ckpt", weights_only=False)["epoch"] == 0


# ---- 9. downloads and sweeps -------------------------------------------------------
class _Trickle(http.server.BaseHTTPRequestHandler):
    """Announces 1 MB and sends one byte every 0.1 s."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        try:
            for _ in range(1 << 20):
                self.wfile.write(b"1")
                self.wfile.flush()
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


def test_9_trickling_download_hits_the_overall_deadline(tmp_path, monkeypatch):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Trickle))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/lastfm.csv"
    monkeypatch.setitem(registry.DATASETS, "lastfm", replace(registry.DATASETS["lastfm"], url=url))
    monkeypatch.setenv("TEMPINT_DOWNLOAD_DEADLINE_S", "1")
    root = tmp_path / "data"
    try:
        with pytest.raises(
            DataError, match=r"not finished after 1 s .*TEMPINT_DOWNLOAD_DEADLINE_S"
        ):
            registry.dataset_path("lastfm", root=root, progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert sorted(p.name for p in root.iterdir()) == []  # no .part left behind


def test_9_multirun_runs_every_job_and_names_the_failed_one(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        *TINY,
        "trainer.max_epochs=1",
        "model.dim=8,0,4",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith(
        "tempint-train: 1 of 3 jobs of the multirun failed: job 1 (model.dim=0)"
    )
    assert "model.dim=0 is invalid" in summary
    assert (sweep / "0" / "metrics.json").exists() and (sweep / "2" / "metrics.json").exists()
    assert not (sweep / "1" / "metrics.json").exists()


# ---- 10. file modes ----------------------------------------------------------------
def test_10_metrics_json_is_readable_by_others(make_cfg, tmp_path):
    old = os.umask(0o022)
    try:
        cfg = make_cfg(["model=static"])
        train(cfg)
    finally:
        os.umask(old)
    mode = stat.S_IMODE((Path(cfg.output_dir) / "metrics.json").stat().st_mode)
    assert mode == 0o644


def test_10_metrics_json_respects_a_strict_umask(tmp_path):
    from tempint.io import atomic_write_json

    old = os.umask(0o077)
    try:
        path = atomic_write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_full_disk_errno_is_an_output_error():
    from tempint.train import _user_error

    err = OSError(errno.ENOSPC, "No space left on device", "/x/metrics.json")
    assert "could not write /x/metrics.json: No space left on device" in str(_user_error(err))
    assert _user_error(OSError("disk full")) is None


def test_the_heuristics_checked_before_training_are_the_ones_a_run_can_replay():
    from tempint.config import BASELINE_NAMES
    from tempint.eval.session import BASELINES

    assert set(BASELINE_NAMES) == set(BASELINES)
