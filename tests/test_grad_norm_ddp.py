"""DDP (2 gloo processes on the CPU) logs what one process logs on the same global batch."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.conftest import run_cli

COMMON = ("experiment=relu", "debug=fast", "test=false", "logger=tensorboard")


def run(tmp_path: Path, *overrides: str) -> Path:
    tmp_path.mkdir()
    result = run_cli(*COMMON, *overrides, f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "relu" / "runs").iterdir()
    return run_dir


def test_ddp_logs_the_single_process_norms_from_rank_zero_only(tmp_path):
    # Each of the 2 ranks takes 64 rows; together they are the single process's 128.
    ddp = run(tmp_path / "ddp", "trainer=ddp_cpu", "data.batch_size=64")
    single = run(tmp_path / "one", "trainer=cpu", "data.batch_size=128")
    ddp_rows = list(csv.DictReader((ddp / "grad_norms.csv").open()))
    one_rows = list(csv.DictReader((single / "grad_norms.csv").open()))
    # Rank zero alone wrote the file: one row per (step, layer), no duplicates.
    assert len(ddp_rows) == len(one_rows) == 3 * 11
    assert [(r["step"], r["layer"]) for r in ddp_rows] == [
        (r["step"], r["layer"]) for r in one_rows
    ]
    for got, want in zip(ddp_rows, one_rows):
        for column in ("grad_norm", "weight_norm", "update_ratio"):
            assert float(got[column]) == pytest.approx(float(want[column]), rel=1e-4), (
                column,
                got,
            )
    assert len(list((ddp / "tensorboard").glob("*/events.out.tfevents.*"))) == 1
