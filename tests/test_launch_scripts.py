"""scripts/train.sbatch and scripts/torchrun.sh: valid bash, consistent sizes, and torchrun
really launching a 2-process CPU run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.parametrize("name", ["train.sbatch", "torchrun.sh"])
def test_launch_scripts_are_valid_bash(name):
    result = subprocess.run(["bash", "-n", str(SCRIPTS / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sbatch_tasks_per_node_match_the_trainer_devices():
    text = (SCRIPTS / "train.sbatch").read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.MULTILINE))
    srun = text[text.index("srun ") :]
    assert directives["ntasks-per-node"] == re.search(r"trainer.devices=(\d+)", srun)[1]
    assert directives["nodes"] == re.search(r"trainer.num_nodes=(\d+)", srun)[1]
    assert directives["signal"].startswith("TERM@")  # the interrupt checkpoint's cue


@pytest.mark.slow
def test_torchrun_launches_a_two_process_cpu_run(tmp_path):
    run_dir = tmp_path / "run"
    env = {
        **os.environ,
        "NNODES": "1",
        "NPROC": "2",
        "TRAINER": "ddp_cpu",
        "EXPERIMENT": "relu",
        "RUN": str(run_dir),
        "PORT": "29517",
        "PYTHON": sys.executable,
        "WANDB_MODE": "offline",
    }
    result = subprocess.run(
        [str(SCRIPTS / "torchrun.sh"), "debug=fast", "test=false", f"paths.log_dir={tmp_path}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"status": "completed"' in (run_dir / "summary.json").read_text()
    assert "WORLD_SIZE" in result.stderr or "MEMBER: 2/2" in result.stderr + result.stdout
