"""Helpers for tests that start, stop and resume whole training runs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from gradwatch.plots import read_grad_norms
from gradwatch.train import main
from tests.conftest import CONFIG_DIR

#: A tiny, fast, fully logged run: 3 x 16 ReLU net, 40 batches of 32 per epoch, every step
#: logged, last-step.ckpt every 3 steps (so a SIGKILL can land mid-epoch), one thread.
TINY = [
    "experiment=relu",
    "model.net.depth=3",
    "model.net.width=16",
    "data.batch_size=32",
    "trainer.max_epochs=6",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "test=false",
    "torch_threads=1",
    "callbacks=step_checkpoint",
    "callbacks.step_checkpoint.every_n_train_steps=3",
]
TINY_STEPS = 6 * 40


def compose_run(run_dir: Path, log_dir: Path, *overrides: str) -> DictConfig:
    """The config ``python -m gradwatch.train`` would build, writing into ``run_dir``."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.log_dir={log_dir}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    return cfg


@contextmanager
def torch_threads_kept() -> Iterator[None]:
    """``torch_threads=1`` runs in-process must not slow the rest of the session."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """``python -m gradwatch.train ARGS`` in this process: (exit code, stderr).

    Imported (not run as ``__main__``), Hydra would look for the configs inside the
    package, so the config directory is passed as the CLI does implicitly.
    """
    monkeypatch.setattr(sys, "argv", ["gradwatch.train", f"--config-path={CONFIG_DIR}", *args])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    code = 0
    try:
        main()
    except SystemExit as exit_info:
        code = exit_info.code
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        # Hydra's job logging points the root logger at this test's captured stderr.
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.handlers[:], root.level = handlers, level
    return code, capsys.readouterr().err


def launch(*args: str, cwd: Path) -> subprocess.Popen:
    """Start ``python -m gradwatch.train ARGS`` without waiting; stderr is captured."""
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "gradwatch.train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240) -> None:
    """Poll ``ready`` until true; fail if the process ends or the time runs out first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended (exit {proc.returncode}) before the test could stop it:\n"
                + proc.stderr.read()[-3000:]
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"nothing happened within {timeout} s")
        time.sleep(0.01)


def only_run_dir(log_dir: Path, task: str = "relu") -> Path:
    runs = sorted((log_dir / task / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def grad_norm_rows(run_dir: Path) -> dict[tuple[int, str], float]:
    """``grad_norms.csv`` as {(step, layer): norm}; fails on a step logged twice."""
    rows: dict[tuple[int, str], float] = {}
    for series in read_grad_norms(run_dir / "grad_norms.csv"):
        assert len(set(series.steps)) == len(series.steps), f"duplicated steps in {series.name}"
        rows.update({(s, series.name): v for s, v in zip(series.steps, series.norms)})
    return rows


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def assert_same_training(resumed: Path, reference: Path, rel: float = 1e-6) -> None:
    """Same final weights and the same grad_norms.csv rows as the uninterrupted reference."""
    got = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    want = torch.load(
        reference / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert got["global_step"] == want["global_step"] == TINY_STEPS
    assert got["state_dict"].keys() == want["state_dict"].keys()
    for key, value in want["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, rtol=rel, atol=1e-7, msg=key)
    got_rows, want_rows = grad_norm_rows(resumed), grad_norm_rows(reference)
    assert got_rows.keys() == want_rows.keys()
    assert {step for step, _ in want_rows} == set(range(TINY_STEPS))
    for key, value in want_rows.items():
        assert abs(got_rows[key] - value) <= rel * abs(value) + 1e-12, (key, got_rows[key], value)
