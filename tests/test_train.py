"""End to end: every experiment trains; the CLI writes its run files; bad input is refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from gradwatch.recipe import train
from tests.conftest import EXPERIMENTS, run_cli

SUMMARY_KEYS = {
    "experiment",
    "net",
    "status",
    "val_acc",
    "test_acc",
    "initial_first_last_ratio",
    "final_first_last_ratio",
    "diagnosis",
    "advice",
    "steps",
    "duration_s",
}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_trains_a_few_steps(make_cfg, experiment):
    cfg = make_cfg(f"experiment={experiment}", "debug=fast")
    summary = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert summary["status"] == "completed" and summary["experiment"] == experiment
    assert summary["steps"] == 3
    assert json.loads((run_dir / "summary.json").read_text()).keys() >= SUMMARY_KEYS
    assert (run_dir / "grad_norms.csv").exists()
    assert any((run_dir / "tensorboard").iterdir())


def test_sigmoid_run_is_judged_vanishing_and_relu_healthy(make_cfg):
    sigmoid = train(make_cfg("experiment=sigmoid", "debug=fast"))
    relu = train(make_cfg("experiment=relu", "debug=fast"))
    assert sigmoid["diagnosis"] == "vanishing" and sigmoid["initial_first_last_ratio"] < 1e-5
    assert "ReLU with He init" in sigmoid["advice"]
    assert relu["diagnosis"] == "healthy"


@pytest.mark.slow
def test_residual_network_reaches_90_percent(make_cfg):
    cfg = make_cfg(
        "experiment=residual",
        "trainer.max_epochs=6",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "callbacks=none",
        "test=false",
    )
    summary = train(cfg)
    assert summary["val_acc"] >= 0.90, summary["val_acc"]


def test_cli_writes_grad_norms_csv_and_summary(tmp_path):
    result = run_cli("experiment=relu", "debug=fast", f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "relu" / "runs").iterdir()
    rows = list(csv.DictReader((run_dir / "grad_norms.csv").open()))
    assert {"step", "layer", "depth", "grad_norm"} <= rows[0].keys()
    assert {r["step"] for r in rows} == {"0", "1", "2"}
    assert len(rows) == 3 * 11  # 3 steps x (10 hidden + output) layers
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary.keys() >= SUMMARY_KEYS and summary["status"] == "completed"
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert "verdict: healthy" in result.stdout
    assert str(run_dir) in result.stdout.replace("\n", "")
    # Lightning's messages once each, on stderr (not again through Hydra's root logger).
    assert result.stderr.count("Seed set to 42") == 1, result.stderr
    assert "Seed set to 42" not in result.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.net.activation=swish", "Unknown activation 'swish'. Valid choices:"),
        ("model.net.init=magic", "Unknown init 'magic'. Valid choices:"),
        ("model.net.norm=group", "Unknown norm 'group'. Valid choices: batch, layer, none"),
        ("model.net.depth=0", "model.net.depth must be a positive integer, got 0"),
        ("model.net.width=-1", "model.net.width must be a positive integer, got -1"),
    ],
)
def test_bad_net_options_exit_nonzero_with_a_clear_message(tmp_path, override, message):
    result = run_cli(override, "debug=fast", f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    (run_dir,) = (tmp_path / "train" / "runs").iterdir()  # no experiment: task_name train
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and message.split(".")[0] in summary["error"]
    assert summary.keys() >= SUMMARY_KEYS  # every contract key, None where nothing was measured
    assert summary["diagnosis"] is None and summary["val_acc"] is None
