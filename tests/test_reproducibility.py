"""`seed` fixes everything; each run records what produced it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

import gradwatch
from gradwatch.recipe import train
from tests.runs import compose_run, torch_threads_kept

FAST = ["experiment=relu", "model.net.depth=3", "model.net.width=16", "debug=fast", "logger=none"]


def _run(tmp_path: Path, name: str, *overrides: str) -> Path:
    run_dir = tmp_path / name
    with torch_threads_kept():
        summary = train(compose_run(run_dir, tmp_path, *FAST, "torch_threads=1", *overrides))
    assert summary["status"] == "completed"
    return run_dir


def test_same_seed_same_gradient_norms_and_another_seed_differs(tmp_path):
    a = _run(tmp_path, "a", "seed=7")
    b = _run(tmp_path, "b", "seed=7")
    c = _run(tmp_path, "c", "seed=8")
    norms = {run.name: (run / "grad_norms.csv").read_text() for run in (a, b, c)}
    assert norms["a"] == norms["b"]
    assert norms["a"] != norms["c"]
    assert len(norms["a"].splitlines()) == 1 + 3 * 4  # header + 3 steps x 4 layers


def test_deterministic_trainer_reproduces_too(tmp_path):
    a = _run(tmp_path, "a", "trainer.deterministic=true")
    b = _run(tmp_path, "b", "trainer.deterministic=true")
    assert (a / "grad_norms.csv").read_text() == (b / "grad_norms.csv").read_text()
    assert json.loads((a / "provenance.json").read_text())["deterministic"] is True


def test_run_records_resolved_config_version_and_git_commit(tmp_path):
    run_dir = _run(tmp_path, "run", "seed=3")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["seed"] == 3 and config["data"]["seed"] == 3  # interpolations resolved
    assert config["paths"]["output_dir"] == str(run_dir)
    record = json.loads((run_dir / "provenance.json").read_text())
    assert record["gradwatch_version"] == gradwatch.__version__
    assert record["seed"] == 3 and record["resumed_from"] is None
    assert {"python", "torch", "lightning", "command", "started_at"} <= record.keys()
    assert len(record["launches"]) == 1
    head = subprocess.run(
        ["git", "-C", str(Path(gradwatch.__file__).parent), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
    )
    if head.returncode != 0:  # not a git checkout (an sdist, a wheel): nothing to record
        assert record["git"] is None
    else:
        assert record["git"]["commit"] == head.stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{40}", record["git"]["commit"])
        assert isinstance(record["git"]["dirty"], bool)
