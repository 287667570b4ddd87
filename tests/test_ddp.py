"""DDP: two CPU processes (gloo) train, checkpoint and resume; GPUs when there are some."""

from __future__ import annotations

import json

import pytest
import torch

from gradwatch.plots import read_grad_norms
from gradwatch.summary import read_summary
from tests.conftest import run_cli
from tests.runs import only_run_dir

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
