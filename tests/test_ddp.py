"""DDP: two CPU processes (gloo) train, checkpoint and resume, and stop together on a
SIGTERM to either of them; GPUs when there are some."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from gradwatch.plots import read_grad_norms
from gradwatch.run.checkpoint_io import load_plain
from gradwatch.run.summary import read_summary
from tests.conftest import run_cli
from tests.runs import TINY as RUN_TINY
from tests.runs import checkpoint_step, grad_norm_rows, launch, only_run_dir, wait_until

TINY = [
    "experiment=relu",
    "model.net.depth=3",
    "model.net.width=16",
    "debug=fast",
    "torch_threads=1",
]


def test_ddp_cpu_trains_checkpoints_and_resumes_in_its_own_directory(tmp_path):
    first = run_cli(*TINY, "trainer=ddp_cpu", f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    assert read_summary(run_dir)["steps"] == 3
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    again = run_cli(
        *TINY,
        "trainer=ddp_cpu",
        "trainer.max_epochs=2",
        "ckpt_path=last",
        f"paths.log_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert only_run_dir(tmp_path) == run_dir
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert summary["resumed_from_step"] == 3
    # Rank 0 alone writes the rows: every step once, for every layer.
    for series in read_grad_norms(run_dir / "grad_norms.csv"):
        assert series.steps == list(range(6)), series.name
    launches = json.loads((run_dir / "provenance.json").read_text())["launches"]
    assert len(launches) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_ddp_on_gpus_trains(tmp_path):
    result = run_cli(*TINY, "trainer=ddp", f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(only_run_dir(tmp_path))
    assert summary["status"] == "completed" and summary["steps"] == 3


#: A ddp_cpu run long enough to be stopped mid-way: 19 steps an epoch per rank.
LONG = [
    *(arg for arg in RUN_TINY if not arg.startswith(("callbacks", "trainer.max_epochs"))),
    "trainer=ddp_cpu",
    "trainer.max_epochs=30",
    "logger=none",
]


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory) -> Path:
    log_dir = tmp_path_factory.mktemp("ddp_reference")
    result = run_cli(*LONG, f"paths.log_dir={log_dir}", cwd=log_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return only_run_dir(log_dir)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("target", ["launcher", "worker"])
def test_sigterm_to_any_ddp_process_stops_every_rank_at_one_step_and_resumes_exactly(
    tmp_path, ddp_reference, target
):
    proc = launch(*LONG, f"paths.log_dir={tmp_path}", cwd=tmp_path)
    wait_until(proc, lambda: _grad_norm_steps(tmp_path) >= 20)
    (worker,) = _children(proc.pid)
    signalled = time.monotonic()
    os.kill(proc.pid if target == "launcher" else worker, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    stopped_in = time.monotonic() - signalled
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    deadline = time.monotonic() + 30
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker), "the DDP worker outlived the run"
    assert stopped_in < 60, stopped_in

    run_dir = only_run_dir(tmp_path)
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and summary["interrupted_by"] == "SIGTERM"
    step = summary["steps"]
    # (Both processes write to one pipe: lines may interleave.)
    assert re.findall(r"\[rank 1\] stopped by SIGTERM at step (\d+)", stderr) == [str(step)]
    assert stderr.count("SIGTERM: saved ") == 1
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == step
    assert max(s for s, _ in grad_norm_rows(run_dir)) == step - 1

    again = run_cli(*LONG, "ckpt_path=last", f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["resumed_from_step"] == step
    got = load_plain(run_dir / "checkpoints" / "last.ckpt")
    want = load_plain(ddp_reference / "checkpoints" / "last.ckpt")
    assert got["global_step"] == want["global_step"]
    for key, value in want["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, rtol=1e-6, atol=1e-7, msg=key)
    assert grad_norm_rows(run_dir) == pytest.approx(grad_norm_rows(ddp_reference), rel=1e-6)


def _grad_norm_steps(log_dir: Path) -> int:
    found = next(log_dir.glob("relu/runs/*/grad_norms.csv"), None)
    return 0 if found is None else (len(found.read_text().splitlines()) - 1) // 4
