"""Resume is exact: a run stopped by SIGKILL, SIGTERM or Ctrl-C continues in its own directory
and ends with the weights and gradient norms of a run that was never stopped."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gradwatch.data import TensorBatches
from gradwatch.recipe import train
from gradwatch.run.interrupt import InterruptCheckpoint
from gradwatch.run.summary import read_summary
from gradwatch.step_csv import drop_rows_from
from tests.conftest import run_cli
from tests.runs import (
    TINY,
    TINY_STEPS,
    assert_same_training,
    checkpoint_step,
    compose_run,
    grad_norm_rows,
    launch,
    only_run_dir,
    run_main,
    torch_threads_kept,
    wait_until,
)

LAYERS = 4  # TINY's net: 3 hidden Linear layers + the output layer


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run that every stopped-and-resumed run must match."""
    log_dir = tmp_path_factory.mktemp("reference")
    run_dir = log_dir / "run"
    with torch_threads_kept():
        summary = train(compose_run(run_dir, log_dir, *TINY, "logger=csv"))
    assert summary["status"] == "completed" and summary["steps"] == TINY_STEPS
    return run_dir


def _logged_steps(log_dir: Path) -> int:
    csv_path = next(log_dir.glob("relu/runs/*/grad_norms.csv"), None)
    if csv_path is None:
        return 0
    return (len(csv_path.read_text().splitlines()) - 1) // LAYERS


def _lightning_csv_steps(run_dir: Path) -> list[int]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        return sorted(int(row["step"]) for row in csv.DictReader(f))


def test_sigkilled_run_resumed_with_ckpt_path_last_matches_an_uninterrupted_run(
    tmp_path, reference
):
    proc = launch(*TINY, "logger=csv", f"paths.log_dir={tmp_path}", cwd=tmp_path)
    seen = {"mtime": 0.0, "step": -1}

    def step_ckpt_at_step_9_or_later() -> bool:
        last = next(tmp_path.glob("relu/runs/*/checkpoints/last-step.ckpt"), None)
        if last is not None and last.stat().st_mtime != seen["mtime"]:
            seen["mtime"] = last.stat().st_mtime
            seen["step"] = checkpoint_step(last)  # written atomically by Lightning
        return seen["step"] >= 9

    wait_until(proc, step_ckpt_at_step_9_or_later)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    run_dir = only_run_dir(tmp_path)
    killed_at = max(checkpoint_step(p) for p in (run_dir / "checkpoints").glob("last*.ckpt"))
    assert 9 <= killed_at < TINY_STEPS
    assert read_summary(run_dir)["status"] == "running"  # SIGKILL leaves no time to write

    # In-process (the CLI would run in this same directory; the SIGTERM test covers that).
    with torch_threads_kept():
        summary = train(compose_run(run_dir, tmp_path, *TINY, "logger=csv", "ckpt_path=last"))
    assert summary["status"] == "completed" and summary["steps"] == TINY_STEPS
    assert summary["resumed_from_step"] == killed_at
    assert_same_training(run_dir, reference)
    # Lightning's CSVLogger continues too, no step twice. Lightning logs a step's train/loss
    # only after the checkpoint that ends the step, so a SIGKILL in that instant loses that
    # one row for good (grad_norms.csv, written before the checkpoint, never does).
    got = Counter(_lightning_csv_steps(run_dir))
    want = Counter(_lightning_csv_steps(reference))
    assert all(got[step] <= want[step] for step in got)
    del got[killed_at - 1], want[killed_at - 1]
    assert got == want


def test_sigterm_saves_last_ckpt_marks_the_run_interrupted_and_it_resumes_exactly(
    tmp_path, reference
):
    proc = launch(*TINY, f"paths.log_dir={tmp_path}", cwd=tmp_path)  # TensorBoard logger
    wait_until(proc, lambda: _logged_steps(tmp_path) >= 10)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]

    run_dir = only_run_dir(tmp_path)
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and summary["interrupted_by"] == "SIGTERM"
    stopped = summary["steps"]
    assert 10 <= stopped < TINY_STEPS
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == stopped
    assert summary["checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert "Interrupted by SIGTERM" in stderr and "ckpt_path=last" in stderr

    result = run_cli(*TINY, f"paths.log_dir={tmp_path}", "ckpt_path=last", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert only_run_dir(tmp_path) == run_dir  # continued in its own directory
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary.get("interrupted_by") is None
    assert_same_training(run_dir, reference)

    # The first launch's Hydra files stay; the resume's go beside them.
    assert "ckpt_path" not in (run_dir / ".hydra" / "overrides.yaml").read_text()
    (resume_overrides,) = (run_dir / ".hydra").glob("resume-*/overrides.yaml")
    assert "ckpt_path=last" in resume_overrides.read_text()
    launches = json.loads((run_dir / "provenance.json").read_text())["launches"]
    assert [launch["resumed_from_step"] for launch in launches] == [None, stopped]

    # TensorBoard continues in the same directory: every step once.
    (tb_run,) = (run_dir / "tensorboard").iterdir()  # one folder, named after the run
    events = EventAccumulator(str(tb_run))
    events.Reload()
    steps = [scalar.step for scalar in events.Scalars("grad_norm/total")]
    assert steps == list(range(TINY_STEPS))


def test_ctrl_c_finishes_the_step_saves_last_ckpt_and_exits_130(tmp_path):
    proc = launch(*TINY, "logger=none", f"paths.log_dir={tmp_path}", cwd=tmp_path)
    wait_until(proc, lambda: _logged_steps(tmp_path) >= 5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and summary["interrupted_by"] == "SIGINT"
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == summary["steps"] >= 5
    # The checkpoint was taken between steps: the logged rows end right before it.
    assert _logged_steps(tmp_path) == summary["steps"]


def test_sigterm_before_the_trainer_starts_still_ends_the_run():
    callback = InterruptCheckpoint()
    previous = signal.getsignal(signal.SIGTERM)
    callback.catch_sigterm()
    try:
        with pytest.raises(SIGTERMException):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises long before this ends
    finally:
        callback.release_sigterm()
    assert callback.signal == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == previous


def test_tensor_batches_resume_mid_epoch_at_the_next_batch():
    x = torch.arange(22).float()

    def batches() -> TensorBatches:
        loader = TensorBatches(x, x.long(), batch_size=4, shuffle=True, seed=1)
        loader.set_epoch(2)
        return loader

    loader = batches()
    iterator = iter(loader)
    seen = [next(iterator)[0] for _ in range(2)]
    state = loader.state_dict()
    rest = [xb for xb, _ in iterator]

    resumed = batches()
    resumed.load_state_dict(state)
    got = [xb for xb, _ in resumed]
    assert len(got) == len(rest) == 4
    for a, b in zip(got, rest):
        torch.testing.assert_close(a, b)
    assert sorted(torch.cat([*seen, *got]).tolist()) == x.tolist()
    # A state saved at the end of epoch 2 does not shorten epoch 3.
    resumed.load_state_dict({"epoch": 2, "served": 6})
    resumed.set_epoch(3)
    assert len(list(resumed)) == 6


def test_drop_rows_from_keeps_earlier_rows_and_the_header(tmp_path):
    path = tmp_path / "grad_norms.csv"
    path.write_text("step,layer,depth,grad_norm\n0,a,1,1.0\n1,a,1,2.0\n2,a,1,3.0\n3,a,1,\n")
    assert drop_rows_from(path, 2) == 2
    assert path.read_text().splitlines() == [
        "step,layer,depth,grad_norm",
        "0,a,1,1.0",
        "1,a,1,2.0",
    ]
    assert drop_rows_from(path, 2) == 0


def test_relaunch_in_the_same_directory_without_a_checkpoint_starts_its_logs_over(tmp_path):
    """E.g. a SLURM job requeued with a fixed hydra.run.dir before its first checkpoint."""
    run_dir = tmp_path / "run"
    fast = ["experiment=relu", "model.net.depth=3", "debug=fast", "logger=csv"]
    csv_steps = []
    for _ in range(2):
        assert train(compose_run(run_dir, tmp_path, *fast))["status"] == "completed"
        csv_steps.append(_lightning_csv_steps(run_dir))
    rows = grad_norm_rows(run_dir)  # fails on a step logged twice
    assert {step for step, _ in rows} == {0, 1, 2}
    assert csv_steps[0] == csv_steps[1]
    assert len(json.loads((run_dir / "provenance.json").read_text())["launches"]) == 2


def test_a_checkpoint_of_another_experiment_starts_a_run_of_its_own(tmp_path, monkeypatch, capsys):
    small = ["model.net.depth=2", "debug=fast", "logger=none"]
    relu_run = tmp_path / "relu" / "runs" / "first"
    assert (
        train(compose_run(relu_run, tmp_path, "experiment=relu", *small))["status"] == "completed"
    )
    before = (relu_run / "summary.json").read_text()
    ckpt = relu_run / "checkpoints" / "last.ckpt"

    code, err = run_main(
        monkeypatch,
        capsys,
        "experiment=tanh",
        *small,
        f"ckpt_path={ckpt}",
        f"paths.log_dir={tmp_path}",
    )
    assert code == 0, err[-3000:]
    tanh_run = only_run_dir(tmp_path, "tanh")
    summary = read_summary(tanh_run)
    assert summary["status"] == "completed" and summary["experiment"] == "tanh"
    assert summary["resumed_from"] == str(ckpt)
    assert (relu_run / "summary.json").read_text() == before
