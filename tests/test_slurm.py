"""Sweeps on a real single-node SLURM cluster (scripts/slurm/start.sh on 127.0.0.1).

`tempint-train -m hydra/launcher=slurm ...` submits one array job per multirun; a job
preempted by a higher-priority partition is requeued by submitit and resumes from its own
last.ckpt. The cluster is started here when none is up, and stopped only if started here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

from tempint.config import CONF_DIR, group_options

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts" / "slurm"
PREFIX = Path(os.environ.get("SLURM_CI_DIR", "/tmp/slurm-ci"))
TINY = [
    "data=synthetic",
    "data.synthetic.shape=tiny",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    # what the one-node test cluster can give (EnforcePartLimits refuses more at once)
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
]


class WaitForPreemption(Callback):
    """On a job's first run only: at the start of epoch 1 (epoch 0 is in last.ckpt), leave
    a marker and wait to be preempted. Every epoch started is appended to attempts.txt as
    `<restart count> <epoch>`, so the test sees which run trained what."""

    def __init__(self, run_dir: str, limit_s: float = 120.0):
        self.run_dir = Path(run_dir)
        self.limit_s = limit_s

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))  # unset on the first run
        with open(self.run_dir / "attempts.txt", "a") as fh:
            fh.write(f"{restart} {trainer.current_epoch}\n")
        if restart == 0 and trainer.current_epoch == 1:
            (self.run_dir / "waiting").touch()
            deadline = time.time() + self.limit_s
            while time.time() < deadline:
                time.sleep(0.2)  # submitit's USR2 handler requeues and exits from here
            raise RuntimeError(f"not preempted within {self.limit_s:.0f} s")


# ---- configuration (no cluster needed) ---------------------------------------------
def test_sweep_grids_name_known_choices():
    """Every group choice a sweep grid lists exists (a typo would fail only on the cluster)."""
    for path in sorted((CONF_DIR / "sweep").glob("*.yaml")):
        from omegaconf import OmegaConf

        params = OmegaConf.load(path).hydra.sweeper.params
        for key, values in params.items():
            if key in ("model", "data", "sampler", "optimizer", "ablation"):
                known = group_options(key)
                for choice in str(values).split(","):
                    assert choice.strip() in known, f"{path.name}: {key}={choice} unknown"


def test_launcher_reads_cluster_fields_from_environment(monkeypatch):
    from hydra import compose, initialize_config_dir

    monkeypatch.setenv("SLURM_ACCOUNT", "proj42")
    monkeypatch.setenv("SLURM_PARTITION", "gpu")
    monkeypatch.setenv("TEMPINT_SLURM_GPUS", "1")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", "sweep=seeds", "hydra.launcher.timeout_min=30"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.account, launcher.partition, launcher.gpus_per_node) == ("proj42", "gpu", 1)
    assert (launcher.timeout_min, launcher.max_num_timeout) == (30, 3)
    assert cfg.hydra.sweeper.params.seed == "1,2,3,4,5"


def test_optuna_search_composes():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=limnet_optuna"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize"
    assert cfg.optimized_metric == "val/mrr"
    assert cfg.model._target_ == "tempint.models.limnet.LiMNet"


@pytest.mark.slow
def test_optuna_search_hands_back_validation_mrr(tmp_path):
    """Two Optuna trials on tiny data: the best value is the best trial's val/mrr."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "optuna"
    cmd = _tempint_train() + [
        "hparams_search=limnet_optuna",
        "data=synthetic",
        "data.synthetic.shape=tiny",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        f"hydra.sweep.dir={sweep}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline")
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    from omegaconf import OmegaConf

    result = OmegaConf.load(sweep / "optimization_results.yaml")
    trials = [json.loads((sweep / str(j) / "metrics.json").read_text()) for j in range(2)]
    assert result.best_value == pytest.approx(max(t["val/mrr"] for t in trials))


# ---- the cluster -------------------------------------------------------------------
def _env(conf: Path) -> dict[str, str]:
    env = dict(os.environ, SLURM_CONF=str(conf), OMP_NUM_THREADS="1", WANDB_MODE="offline")
    # the jobs import this module for WaitForPreemption
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), env.get("PYTHONPATH")]))
    return env


def _cluster_up(conf: Path) -> bool:
    if not conf.exists() or shutil.which("scontrol") is None:
        return False
    ping = subprocess.run(
        ["scontrol", "ping"], env=_env(conf), capture_output=True, text=True, timeout=20
    )
    return "is UP" in ping.stdout


@pytest.fixture(scope="module")
def slurm():
    """SLURM_CONF of a running cluster: the one already up, else one started (and stopped) here."""
    conf = PREFIX / "etc" / "slurm.conf"
    if _cluster_up(conf):
        yield _env(conf)
        return
    if os.geteuid() != 0:
        pytest.skip("starting a SLURM cluster needs root (scripts/slurm/start.sh)")
    if shutil.which("apt-get") is None or not Path("/etc/debian_version").exists():
        pytest.skip(
            "scripts/slurm/start.sh installs slurm-wlm and munge with apt: not a Debian system"
        )
    env = dict(os.environ, SLURM_CI_DIR=str(PREFIX))
    start = subprocess.run(
        ["bash", str(SCRIPTS / "start.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    if start.returncode != 0:
        tail = (start.stdout + start.stderr)[-2000:]
        if "apt-get install failed" in tail:
            pytest.skip(f"slurm-wlm and munge could not be installed with apt:\n{tail}")
        pytest.fail(f"scripts/slurm/start.sh failed:\n{tail}")
    try:
        yield _env(conf)
    finally:
        subprocess.run(
            ["bash", str(SCRIPTS / "stop.sh")], env=env, capture_output=True, timeout=300
        )


def _tempint_train() -> list[str]:
    exe = shutil.which("tempint-train")
    return [exe] if exe else [sys.executable, "-m", "tempint.train"]


def _multirun(overrides: list[str], env: dict, timeout: float, **popen):
    cmd = _tempint_train() + ["-m", "hydra/launcher=slurm"] + TINY + overrides
    return subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the multirun did not finish within {timeout:.0f} s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


def _job_logs(sweep: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(sweep.glob(".submitit/*/*_log.*")))


@pytest.mark.slurm
def test_multirun_as_slurm_array(slurm, tmp_path):
    sweep = tmp_path / "multirun"
    proc = _multirun(
        ["model=static,recency", "seed=1,2", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}"],
        slurm,
        timeout=240,
    )
    _finish(proc, timeout=240)

    runs = {}
    for job in range(4):
        metrics = json.loads((sweep / str(job) / "metrics.json").read_text())
        runs[(metrics["model"], metrics["config"]["seed"])] = metrics
    assert sorted(runs) == [
        ("Recency", 1),
        ("Recency", 2),
        ("StaticEmbedding", 1),
        ("StaticEmbedding", 2),
    ]
    assert all(0 < m["test/mrr"] <= 1 for m in runs.values())
    # one W&B group per multirun, although the jobs started at different times
    assert {m["config"]["group"] for m in runs.values()} == {sweep.name}
    # one array job with four tasks, each ran by slurmd
    tasks = sorted(p.name for p in (sweep / ".submitit").glob("*_*") if p.name[0].isdigit())
    assert len(tasks) == 4 and len({t.split("_")[0] for t in tasks}) == 1
    logs = _job_logs(sweep)
    assert "SLURM auto-requeueing enabled" not in logs, "Lightning must leave requeue to submitit"


@pytest.mark.slurm
def test_preempted_job_resumes_from_last_checkpoint(slurm, tmp_path):
    sweep = tmp_path / "multirun"
    run_dir = sweep / "0"
    proc = _multirun(
        [
            "model=static",
            "trainer.max_epochs=3",
            f"hydra.sweep.dir={sweep}",
            # >= 15 min, else submitit takes every USR2 for a time limit
            "hydra.launcher.timeout_min=20",
            "+callbacks.preempt._target_=test_slurm.WaitForPreemption",
            "+callbacks.preempt.run_dir=${output_dir}",
        ],
        slurm,
        timeout=300,
    )
    deadline = time.time() + 180
    while not (run_dir / "waiting").exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the job never reached epoch 1:\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.5)
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    # a job in the high-priority partition that needs the whole node preempts ours
    cpus = subprocess.run(
        ["sinfo", "-h", "-o", "%c"], env=slurm, capture_output=True, text=True
    ).stdout.split()[0]
    subprocess.run(
        ["sbatch", "-p", "high", "-c", cpus, "--mem=100M", "-o", "/dev/null", "--wrap", "sleep 1"],
        env=slurm,
        check=True,
        capture_output=True,
    )
    _finish(proc, timeout=240)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/epochs"] == 3
    attempts = (run_dir / "attempts.txt").read_text().split("\n")
    # first run: epochs 0 and (the start of) 1; after the requeue: 1 and 2, from last.ckpt
    assert [a for a in attempts if a] == ["0 0", "0 1", "1 1", "1 2"]
    logs = _job_logs(sweep)
    assert "this job is preempted" in logs
    assert "resuming from" in logs

    # the same numbers as the run never interrupted
    from conftest import FAST, compose_config

    from tempint.train import train

    reference, _ = train(
        compose_config(FAST + ["model=static", "trainer.max_epochs=3"], tmp_path / "reference")
    )
    for key in ("val/mrr", "test/mrr", "test/recall@10", "test/ndcg@10"):
        assert metrics[key] == pytest.approx(reference[key], rel=1e-6), key
