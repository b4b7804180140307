"""Shared fixtures: configs composed in-process, small streams built by hand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from tempint.config import CONF_DIR

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)

# overrides that shrink any run to seconds on tiny synthetic data
FAST = [
    "data=synthetic",
    "data.synthetic.shape=tiny",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=csv",
]


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The train config as `tempint-train` would see it, writing under `output_dir`."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)  # so ${hydra:...} interpolations resolve as in a real run
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
        cfg.group = "tests"
        del cfg.hydra
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(["model=jodie", ...]) -> a fast config writing under a fresh tmp dir."""

    def make(overrides: list[str] = (), fast: bool = True, output_dir: Path | None = None):
        return compose_config(
            (FAST if fast else []) + list(overrides), output_dir or tmp_path / "run"
        )

    return make
