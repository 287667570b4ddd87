"""Real multiruns through the CLI: joblib, submitit_local, Optuna, DDP; failures; the report."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from gradwatch.run.sweep import single_job_argv
from tests.conftest import CONFIG_DIR, run_cli

FAST = ["debug=fast", "logger=csv"]


def job_dirs(multirun: Path) -> list[Path]:
    return sorted((d for d in multirun.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))


def only_multirun(log_dir: Path) -> Path:
    """The one multirun directory under ``log_dir``; fails if a sweep ran twice."""
    (multirun,) = log_dir.glob("*/multiruns/*")
    assert not list(log_dir.glob("*/runs")), "a job or DDP child wrote a single-run directory"
    return multirun


def summaries(multirun: Path) -> list[dict]:
    return [json.loads((d / "summary.json").read_text()) for d in job_dirs(multirun)]


@pytest.fixture(scope="module")
def failing_sweep(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess]:
    """The small preset (joblib, parallel) on a 2 x 2 grid in which depth -1 fails."""
    log_dir = tmp_path_factory.mktemp("sweep")
    result = run_cli(
        "sweep=small",
        "experiment=sigmoid,relu",
        "model.net.depth=3,-1",
        *FAST,
        f"paths.log_dir={log_dir}",
        cwd=log_dir,
    )
    return only_multirun(log_dir), result


def test_joblib_sweep_runs_every_job_even_when_one_fails(failing_sweep):
    multirun, result = failing_sweep
    assert multirun.parent.parent.name == "sweep_small"
    assert [d.name for d in job_dirs(multirun)] == ["0", "1", "2", "3"]
    by_depth = {(s["experiment"], s["net"]["depth"]): s for s in summaries(multirun)}
    for experiment in ("sigmoid", "relu"):
        assert by_depth[(experiment, 3)]["status"] == "completed"
        assert by_depth[(experiment, 3)]["steps"] == 3
        failed = by_depth[(experiment, -1)]
        assert failed["status"] == "failed"
        assert "model.net.depth must be a positive integer, got -1" in failed["error"]
    # Hydra re-raises the first failure once every job has run: the sweep exits non-zero.
    assert result.returncode != 0
    assert "model.net.depth must be a positive integer" in result.stderr


@pytest.fixture(scope="module")
def report_run(failing_sweep) -> tuple[Path, subprocess.CompletedProcess]:
    multirun, _ = failing_sweep
    result = subprocess.run(
        [sys.executable, "-m", "gradwatch.report", str(multirun)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return multirun / "report", result


def test_report_numbers_match_every_jobs_summary(failing_sweep, report_run):
    multirun, _ = failing_sweep
    out, result = report_run
    assert result.returncode == 0, result.stderr
    assert "4 jobs (2 completed, 2 not)" in result.stdout
    rows = {r["job"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert sorted(rows) == ["0", "1", "2", "3"]
    for job in job_dirs(multirun):
        summary = json.loads((job / "summary.json").read_text())
        row = rows[job.name]
        assert row["status"] == summary["status"]
        assert row["experiment"] == summary["experiment"]
        assert int(row["depth"]) == summary["net"]["depth"]
        for key in ("val_acc", "test_acc", "initial_first_last_ratio", "final_first_last_ratio"):
            if summary.get(key) is None:
                assert row[key] == ""
            else:
                assert float(row[key]) == summary[key], key
        assert row["verdict"] == (summary.get("diagnosis") or "")


def test_report_marks_the_failed_jobs(report_run):
    out, result = report_run
    message = "model.net.depth must be a positive integer, got -1"
    assert (
        re.findall(r"job \d failed: .*" + message, result.stdout)
        and result.stdout.count(message) == 2
    )
    md = (out / "summary.md").read_text()
    assert "## Jobs that did not complete" in md
    assert md.count(message) == 2
    assert "2 more did not complete" in (out / "claims.md").read_text()


def test_report_files_exist_and_index_links_only_them(report_run):
    out, _ = report_run
    for name in (
        "summary.csv",
        "summary.md",
        "claims.md",
        "index.html",
        "gradient_flow.png",
        "ratio_vs_depth.png",
        "accuracy_vs_depth.png",
        "layer_norms_over_training.png",
    ):
        assert (out / name).is_file(), name
    refs = re.findall(r'(?:src|href)="([^"]+)"', (out / "index.html").read_text())
    assert len(refs) >= 9
    assert all((out / ref).is_file() for ref in refs), refs


def test_submitit_local_runs_a_two_job_sweep_in_one_wandb_group(tmp_path):
    result = run_cli(
        "sweep=small",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        "experiment=relu",
        "model.net.depth=2,3",
        "debug=fast",
        "logger=wandb",  # offline (conftest)
        f"paths.log_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    multirun = only_multirun(tmp_path)
    assert (multirun / ".submitit").is_dir()  # really went through submitit
    assert [(s["net"]["depth"], s["status"]) for s in summaries(multirun)] == [
        (2, "completed"),
        (3, "completed"),
    ]
    # Two processes, one W&B group named after the sweep (W&B's offline run files hold it).
    group = f"sweep_small_{multirun.name}".encode()
    for job in job_dirs(multirun):
        (run_file,) = job.glob("wandb/offline-run-*/run-*.wandb")
        assert group in run_file.read_bytes()


def test_optuna_preset_runs_trials_and_maximizes_the_returned_metric(tmp_path):
    result = run_cli(
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "model.net.depth=3",
        *FAST,
        f"paths.log_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    multirun = only_multirun(tmp_path)
    trials = summaries(multirun)
    assert len(trials) == 2 and {s["status"] for s in trials} == {"completed"}
    best = yaml.safe_load((multirun / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(s["val_acc"] for s in trials)
    assert set(best["best_params"]) == {"model.optimizer.lr", "model.net.init_scale"}


def test_ddp_inside_a_multirun_makes_exactly_the_expected_job_directories(tmp_path):
    # The preset's MULTIRUN mode and joblib workers, 3 jobs on (at most) 2 workers: a worker
    # runs two DDP jobs in a row. Each DDP child must re-run its own job, once.
    result = run_cli(
        "sweep=small",
        "trainer=ddp_cpu",
        "experiment=sigmoid",
        "model.net.depth=2,3,4",
        *FAST,
        f"paths.log_dir={tmp_path}",
        cwd=tmp_path,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    multirun = only_multirun(tmp_path)
    assert sorted(p.name for p in multirun.iterdir()) == ["0", "1", "2", "multirun.yaml"]
    assert [(s["net"]["depth"], s["status"]) for s in summaries(multirun)] == [
        (2, "completed"),
        (3, "completed"),
        (4, "completed"),
    ]
    for job, depth in zip(job_dirs(multirun), (2, 3, 4)):
        assert (job / "train_ddp_process_1.log").exists()  # rank 1 ran in this job's directory
        rows = list(csv.DictReader((job / "grad_norms.csv").open()))
        assert len(rows) == 3 * (depth + 1)  # 3 steps x layers, written once (by rank 0)


def test_slurm_preset_makes_one_task_per_device():
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["sweep=full", "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == cfg.trainer.devices == 4
    assert Path(cfg.hydra.sweep.dir).parent.parent.name == "sweep_full"


def test_single_job_argv_keeps_config_flags_and_drops_the_sweep():
    argv = ["train.py", "-m", "--config-name", "train", "experiment=a,b", "-cp=/x", "seed=1"]
    assert single_job_argv(argv, ["experiment=b", "seed=1"]) == [
        "train.py",
        "--config-name",
        "train",
        "-cp=/x",
        "experiment=b",
        "seed=1",
        "hydra.mode=RUN",
    ]


def test_a_misspelt_value_stops_the_sweep_before_any_job_starts(tmp_path):
    """The covering sweeper composes only some jobs up front; a bad value in any of them,
    here the last network of the grid, still stops the sweep with Hydra's message."""
    result = run_cli(
        "-m",
        "experiment=sigmoid,relu,residul",
        "model.net.depth=3,4,5,6",
        *FAST,
        f"paths.log_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "Could not find 'experiment/residul'" in result.stderr
    (multirun,) = tmp_path.glob("multiruns/*")
    assert job_dirs(multirun) == [], "a job started although the grid holds a bad value"


def test_covering_jobs_try_every_override_with_fewer_compositions():
    from hydra_plugins.gradwatch_sweeper.covering_sweeper import covering_jobs

    nets, depths = ["residual", "relu", "sigmoid"], ["50", "20", "10", "5", "3"]
    grid = [[f"experiment={n}", f"model.net.depth={d}", "seed=1"] for n in nets for d in depths]
    chosen = covering_jobs(grid)
    assert len(chosen) == 5  # the larger parameter's number of values, not 15
    assert all(job in grid for job in chosen)
    assert {o for job in chosen for o in job} == {o for job in grid for o in job}
    assert covering_jobs([]) == []
    assert covering_jobs([["a=1"]]) == [["a=1"]]


def test_the_entry_point_imports_neither_torch_nor_lightning():
    """A multirun's launching process only composes configs: its workers start sooner."""
    code = "import sys, gradwatch.train; "
    code += "print([m for m in ('torch', 'lightning') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
