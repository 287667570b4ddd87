"""Every bad input: a message naming the value and the choices, a non-zero exit, and no run
that looks complete. Most run ``gradwatch.train.main`` in-process (the same code path as the
CLI, exit code included); one runs the real CLI.

Names and sizes of the network (activation, init, norm, depth, width) are covered in
test_train.py; a missing dataset and an unwritable data directory belong to the torchvision
datamodules (issue 4).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gradwatch.recipe import train
from gradwatch.run.summary import read_summary
from tests.conftest import run_cli
from tests.runs import compose_run, run_main

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def failed_run(log_dir: Path, task: str = "relu") -> dict:
    """The one run directory a bad input left behind: it must say `failed`."""
    (run_dir,) = (log_dir / task / "runs").iterdir()
    summary = read_summary(run_dir)
    assert summary["status"] == "failed", summary
    return summary


@pytest.mark.parametrize(
    ("override", "group", "choice"),
    [("experiment=nope", "experiment", "relu"), ("trainer=tpu", "trainer", "ddp_cpu")],
)
def test_unknown_config_option_names_the_choices(
    tmp_path, monkeypatch, capsys, override, group, choice
):
    code, err = run_main(monkeypatch, capsys, override, f"paths.log_dir={tmp_path}")
    assert code == 1
    assert f"Could not find '{group}/{override.split('=')[1]}'" in err
    assert f"Available options in '{group}'" in err and choice in err
    assert not any(tmp_path.iterdir())  # refused before any run directory exists


@pytest.mark.parametrize(
    ("value", "shown"), [("0", "0"), ("-0.1", "-0.1"), ("abc", "'abc'"), ("nan", "nan")]
)
def test_learning_rate_must_be_a_positive_number(tmp_path, monkeypatch, capsys, value, shown):
    code, err = run_main(
        monkeypatch,
        capsys,
        "experiment=relu",
        f"model.optimizer.lr={value}",
        f"paths.log_dir={tmp_path}",
    )
    message = f"model.optimizer.lr must be a positive number, got {shown}."
    assert code == 1 and message in err
    assert message in failed_run(tmp_path)["error"]


@pytest.mark.parametrize(("value", "shown"), [("0", "0"), ("-8", "-8"), ("many", "'many'")])
def test_batch_size_must_be_a_positive_integer(tmp_path, monkeypatch, capsys, value, shown):
    code, err = run_main(
        monkeypatch,
        capsys,
        "experiment=relu",
        f"data.batch_size={value}",
        f"paths.log_dir={tmp_path}",
    )
    message = f"data.batch_size must be a positive integer, got {shown}."
    assert code == 1 and message in err
    assert message in failed_run(tmp_path)["error"]


@pytest.mark.parametrize(("value", "shown"), [("abc", "'abc'"), ("-1", "-1"), ("1.5", "1.5")])
def test_seed_must_be_an_integer_numpy_accepts(tmp_path, monkeypatch, capsys, value, shown):
    code, err = run_main(
        monkeypatch, capsys, "experiment=relu", f"seed={value}", f"paths.log_dir={tmp_path}"
    )
    message = f"seed must be an integer from 0 to 4294967295, got {shown}."
    assert code == 1 and message in err
    assert message in failed_run(tmp_path)["error"]


def test_unknown_precision_names_the_allowed_values(tmp_path, monkeypatch, capsys):
    code, err = run_main(
        monkeypatch, capsys, "experiment=relu", "trainer.precision=17", f"paths.log_dir={tmp_path}"
    )
    assert code == 1
    assert "Precision 17 is invalid. Allowed precision values:" in err and "bf16-mixed" in err
    assert "Precision 17 is invalid" in failed_run(tmp_path)["error"]


@NO_CUDA
def test_gpu_preset_without_a_gpu_says_so_from_the_cli(tmp_path):
    result = run_cli("experiment=relu", "trainer=gpu", f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 1
    assert "trainer.accelerator='gpu' needs a CUDA GPU, but none is visible" in result.stderr
    assert "trainer=cpu" in result.stderr and "trainer=ddp_cpu" in result.stderr
    assert "needs a CUDA GPU" in failed_run(tmp_path)["error"]


@NO_CUDA
def test_ddp_preset_without_a_gpu_says_so(tmp_path, monkeypatch, capsys):
    code, err = run_main(
        monkeypatch, capsys, "experiment=relu", "trainer=ddp", f"paths.log_dir={tmp_path}"
    )
    assert code == 1 and "trainer.accelerator='gpu' needs a CUDA GPU" in err
    failed_run(tmp_path)


def test_ckpt_path_that_does_not_exist(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nowhere" / "last.ckpt"
    code, err = run_main(
        monkeypatch, capsys, "experiment=relu", f"ckpt_path={missing}", f"paths.log_dir={tmp_path}"
    )
    assert code == 1
    assert f"ckpt_path='{missing}' does not exist." in err and "ckpt_path=last" in err
    assert "does not exist" in failed_run(tmp_path)["error"]


def test_ckpt_path_that_is_a_directory(tmp_path, monkeypatch, capsys):
    code, err = run_main(
        monkeypatch, capsys, "experiment=relu", f"ckpt_path={tmp_path}", f"paths.log_dir={tmp_path}"
    )
    assert code == 1 and f"ckpt_path='{tmp_path}' is a directory, not a checkpoint file" in err
    failed_run(tmp_path)


def test_ckpt_path_that_is_not_a_checkpoint(tmp_path, monkeypatch, capsys):
    notes = tmp_path / "notes.ckpt"
    notes.write_text("not a checkpoint")
    code, err = run_main(
        monkeypatch, capsys, "experiment=relu", f"ckpt_path={notes}", f"paths.log_dir={tmp_path}"
    )
    assert code == 1 and f"ckpt_path='{notes}' is not a Lightning checkpoint" in err
    failed_run(tmp_path)


def test_ckpt_path_that_is_a_plain_state_dict(tmp_path, monkeypatch, capsys):
    weights = tmp_path / "weights.pt"
    torch.save({"net.network.0.weight": torch.zeros(2, 2)}, weights)
    code, err = run_main(
        monkeypatch, capsys, "experiment=relu", f"ckpt_path={weights}", f"paths.log_dir={tmp_path}"
    )
    assert code == 1
    assert "is not a Lightning training checkpoint (it has no global_step, state_dict)" in err
    failed_run(tmp_path)


def test_ckpt_path_last_without_any_earlier_run(tmp_path, monkeypatch, capsys):
    code, err = run_main(
        monkeypatch, capsys, "experiment=relu", "ckpt_path=last", f"paths.log_dir={tmp_path}"
    )
    assert code == 1
    assert "ckpt_path=last: no last.ckpt found in" in err and str(tmp_path / "relu") in err
    failed_run(tmp_path)


def test_checkpoint_of_another_network_shape_is_refused_and_its_run_kept(
    tmp_path, monkeypatch, capsys
):
    small = ["experiment=relu", "model.net.depth=2", "model.net.width=8", "debug=fast"]
    run_dir = tmp_path / "relu" / "runs" / "first"
    assert train(compose_run(run_dir, tmp_path, *small, "logger=none"))["status"] == "completed"
    before = _record_files(run_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"

    code, err = run_main(
        monkeypatch,
        capsys,
        *small,
        "model.net.width=16",
        f"ckpt_path={ckpt}",
        f"paths.log_dir={tmp_path}",
    )
    assert code == 1
    assert f"ckpt_path='{ckpt}' holds a different network than this config" in err
    assert "net.network.0.weight is [8, 64] in the checkpoint but [16, 64] here" in err
    assert str(run_dir / ".hydra" / "overrides.yaml") in err
    # The resume would have continued in the checkpoint's run: nothing there changed.
    assert [p.name for p in (tmp_path / "relu" / "runs").iterdir()] == ["first"]
    assert _record_files(run_dir) == before


def _record_files(run_dir: Path) -> dict[str, bytes]:
    """What a run recorded (Hydra's train.log, which gains the refused launch's lines, aside)."""
    files = [*run_dir.glob("*.*"), *run_dir.glob("checkpoints/*")]
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in files
        if p.is_file() and p.name != "train.log"
    }
