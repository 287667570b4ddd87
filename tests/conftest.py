"""Shared fixtures: Hydra configs composed into a temporary run directory, and CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
EXPERIMENTS = ["sigmoid", "tanh", "relu", "batchnorm", "residual"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose ``configs/train.yaml`` with overrides; the run goes to a fresh tmp dir."""
    counter = iter(range(1000))

    def _make(*overrides: str) -> DictConfig:
        run_dir = tmp_path / f"run{next(counter)}"
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[f"paths.log_dir={tmp_path}", *overrides])
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
        return cfg

    return _make


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m gradwatch.train ARGS`` as a user runs it; output captured."""
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "gradwatch.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
