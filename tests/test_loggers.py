"""Every logger gets the per-layer keys: W&B offline (read back), the real TensorBoard
server (over HTTP), Lightning's CSV; W&B never prompts for a login and never leaks runs."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gradwatch.recipe import train
from tests.runs import compose_run
from tests.tensorboard_server import get_json, quote, tensorboard
from tests.wandb_records import history, run_name

LAYER_KEYS = ["grad_norm/net.network.0", "weight_norm/net.network.0", "update_ratio/net.network.0"]


@pytest.fixture(scope="module")
def many_run(tmp_path_factory) -> Path:
    """One short ReLU run with logger=many (TensorBoard + CSV + W&B offline)."""
    tmp = tmp_path_factory.mktemp("many")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_SILENT", "true")
        overrides = ("experiment=relu", "debug=fast", "logger=many")
        cfg = compose_run(
            tmp / "run", tmp, *overrides, "callbacks.grad_norm.histogram_every_n_steps=2"
        )
        train(cfg)
    return tmp / "run"


def test_wandb_offline_history_holds_the_per_layer_keys(many_run):
    import wandb

    assert wandb.run is None  # finished at the end of the run
    (log,) = many_run.glob("wandb/offline-run-*/run-*.wandb")
    rows = history(log)
    steps = {row["trainer/global_step"] for row in rows if "grad_norm/total" in row}
    assert steps == {0, 1, 2}
    keys = set().union(*rows)
    assert {*LAYER_KEYS, "grad_norm/first_last_ratio", "train/loss"} <= keys
    assert "activation/net.network.1/dead" in keys
    histograms = [row for row in rows if "grad_hist/net.network.0/_type" in row]
    assert [row["trainer/global_step"] for row in histograms] == [0, 1]  # step 0, then every 2nd
    assert histograms[0]["grad_hist/net.network.0/_type"] == "histogram"
    figures = [row for row in rows if "gradient_flow/_type" in row]  # the figure, as an image
    assert figures and figures[-1]["gradient_flow/_type"] == "images/separated"
    grad_rows = list(csv.DictReader((many_run / "grad_norms.csv").open()))
    first = next(r for r in rows if r.get("trainer/global_step") == 0 and "grad_norm/total" in r)
    assert first["grad_norm/net.network.0"] == pytest.approx(float(grad_rows[0]["grad_norm"]))


def test_csv_logger_gets_the_per_layer_keys(many_run):
    columns = next(csv.reader((many_run / "csv" / "metrics.csv").open()))
    assert {*LAYER_KEYS, "grad_norm/total", "activation/net.network.1/mean"} <= set(columns)


def test_tensorboard_server_shows_the_per_layer_tags(many_run):
    with tensorboard(many_run / "tensorboard") as base:
        base = f"{base}/data/plugin"
        tags = get_json(f"{base}/scalars/tags")
        ((run, scalars),) = tags.items()
        assert {*LAYER_KEYS, "grad_norm/total", "grad_norm/first_last_ratio"} <= set(scalars)
        assert "activation/net.network.1/dead" in scalars
        # log10 companions of the gradient norms and update ratios, for charts over decades
        assert {"log10_grad_norm/net.network.0", "log10_update_ratio/net.network.0"} <= set(scalars)
        assert "log10_weight_norm/net.network.0" not in scalars
        points = get_json(f"{base}/scalars/scalars?run={quote(run)}&tag=grad_norm/net.network.0")
        assert [step for _, step, _ in points] == [0, 1, 2]
        logs = get_json(
            f"{base}/scalars/scalars?run={quote(run)}&tag=log10_grad_norm/net.network.0"
        )
        assert [v for _, _, v in logs] == pytest.approx([math.log10(v) for _, _, v in points])
        images = get_json(f"{base}/images/tags")
        assert "gradient_flow" in images[run]
        histograms = get_json(f"{base}/histograms/tags")
        assert "grad_hist/net.network.0" in histograms[run]


def test_wandb_without_a_key_runs_offline_without_prompting_and_finishes_each_job(tmp_path):
    """A two-job multirun, no API key, no WANDB_MODE, stdin closed: two separate runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), HYDRA_FULL_ERROR="0")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradwatch.train",
            "-m",
            "experiment=relu",
            "debug=fast",
            "logger=wandb",
            "test=false",
            "seed=1,2",
            f"paths.log_dir={tmp_path}",
        ],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "No W&B API key found" in result.stderr
    logs = sorted(tmp_path.glob("multiruns/*/*/wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 2 and logs[0].name != logs[1].name
    names = [run_name(log) for log in logs]  # the experiment, then the overrides
    assert [n.split()[0] for n in names] == ["relu", "relu"]
    assert [n.split()[-1] for n in names] == ["seed=1", "seed=2"]
    assert "debug=fast" in names[0] and "logger" not in names[0] and "paths" not in names[0]
    for log in logs:  # each run holds exactly its own job's three steps
        steps = [r["trainer/global_step"] for r in history(log) if "grad_norm/total" in r]
        assert steps == [0, 1, 2]
