"""Faults and hostile files: a full disk at each kind of file, a kill at each point of a
checkpoint save, a checkpoint that carries code, augmented data resumed mid-epoch, two
launches on one run directory. Nothing is lost, nothing runs, and the run says what happened."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch

from gradwatch.data import CIFAR10DataModule, DigitsDataModule
from gradwatch.module import ClassifierModule
from gradwatch.nets import MLP
from gradwatch.recipe import train
from gradwatch.run.checkpoint_io import (
    TMP_MARK,
    AtomicCheckpointIO,
    UnsafeCheckpointError,
    load_plain,
    replace_with_link,
)
from gradwatch.run.lock import RunLock, RunLockedError
from gradwatch.run.resume import last_checkpoint_in, load_checkpoint
from gradwatch.run.summary import read_summary
from gradwatch.run.write_errors import disk_error
from tests.conftest import run_cli
from tests.fake_vision import write_cifar10
from tests.runs import (
    TINY,
    checkpoint_step,
    compose_run,
    grad_norm_rows,
    launch,
    only_run_dir,
    run_main,
    torch_threads_kept,
    wait_until,
)

FAST = ["experiment=relu", "model.net.depth=3", "model.net.width=16", "debug=fast"]
#: TINY with the default callbacks (a checkpoint and last.ckpt every epoch of 40 steps).
BASE = [arg for arg in TINY if not arg.startswith("callbacks")]


def _temps(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if TMP_MARK in p.name or p.name.endswith(".tmp")]


def _every_ckpt_loads(run_dir: Path) -> None:
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        assert isinstance(load_plain(ckpt), dict), ckpt


def _assert_same_training(got: Path, want: Path) -> None:
    """Same final weights and grad_norms.csv as the uninterrupted run ``want``."""
    a, b = load_plain(last_checkpoint_in(got)), load_plain(last_checkpoint_in(want))
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in b["state_dict"].items():
        torch.testing.assert_close(a["state_dict"][key], value, rtol=1e-6, atol=1e-7, msg=key)
    rows, want_rows = grad_norm_rows(got), grad_norm_rows(want)
    assert rows.keys() == want_rows.keys()
    for key, value in want_rows.items():
        assert rows[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key


# -- a checkpoint from a stranger ------------------------------------------------------------
class _Payload:
    """Unpickling this creates ``marker``: the side effect that must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_that_carries_code_is_refused_and_nothing_runs(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    with torch_threads_kept():
        assert train(compose_run(run_dir, tmp_path, *FAST, "logger=none"))["status"] == "completed"
    good = run_dir / "checkpoints" / "last.ckpt"
    # What our checkpoints hold is plain data: torch's own weights-only loader takes them.
    checkpoint = torch.load(good, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["optimizer"]["_target_"] == "torch.optim.adam.Adam"
    module = ClassifierModule.load_from_checkpoint(
        good, net=MLP(input_shape=(1, 8, 8), num_classes=10, depth=3, width=16), weights_only=True
    )
    assert isinstance(module.configure_optimizers(), torch.optim.Adam)

    marker = tmp_path / "pwned"
    checkpoint["hyper_parameters"]["extra"] = _Payload(marker)
    hostile = tmp_path / "downloaded.ckpt"
    torch.save(checkpoint, hostile)
    with pytest.raises(pickle_errors()):  # the control: the payload is live
        torch.load(hostile, weights_only=True)

    with pytest.raises(ValueError, match="refused") as refused:
        load_checkpoint(hostile, "relu")
    assert str(hostile) in str(refused.value)
    with pytest.raises(UnsafeCheckpointError):
        AtomicCheckpointIO().load_checkpoint(hostile)

    code, err = run_main(
        monkeypatch,
        capsys,
        *FAST,
        "logger=none",
        f"ckpt_path={hostile}",
        f"paths.log_dir={tmp_path}",
    )
    assert code != 0 and "refused" in err and str(hostile) in err, err[-2000:]

    # Lightning's own loader, as the run calls it, refuses it too.
    trainer = L.Trainer(
        plugins=[AtomicCheckpointIO()], max_epochs=2, logger=False, enable_progress_bar=False
    )
    with pytest.raises(UnsafeCheckpointError):
        trainer.fit(
            ClassifierModule(MLP((1, 8, 8), 10, depth=3, width=16), 10),
            datamodule=DigitsDataModule(),
            ckpt_path=hostile,
            weights_only=True,
        )
    assert not marker.exists()
    torch.load(hostile, weights_only=False)  # the control: unpickled, it runs its code
    assert marker.exists()


def pickle_errors() -> type[Exception]:
    import pickle

    return pickle.UnpicklingError


# -- a full disk ---------------------------------------------------------------------------
class _FullDisk:
    """A file on a disk that has ``room[0]`` bytes left: a write beyond that writes what
    fits, then fails with ENOSPC (as do all later ones)."""

    def __init__(self, f, room: list[int]) -> None:
        self._f, self._room = f, room

    def write(self, data) -> int:
        data = data if isinstance(data, str) else bytes(data)
        if len(data) > self._room[0]:
            self._f.write(data[: self._room[0]])
            self._f.flush()
            self._room[0] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room[0] -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


#: Which file the disk fills up at: (part of its name, bytes those files may still take,
#: how many opens of them succeed first, whatever they write).
FULL_AT = {
    "checkpoint": (".ckpt", 4096, 0),
    "grad_norms.csv": ("grad_norms.csv", 200, 0),
    "tensorboard": ("tfevents", 2000, 0),
    "summary.json": ("summary.json", 0, 2),  # `running` is written, no update after
    "figure": ("gradient_flow.png", 1000, 0),
}


@pytest.mark.parametrize("kind", list(FULL_AT))
def test_a_full_disk_at_each_kind_of_file_ends_the_run_with_one_paragraph(
    tmp_path, monkeypatch, capsys, kind
):
    run_dir = tmp_path / "run"
    pattern, budget, skip = FULL_AT[kind]
    real_open = builtins.open
    opens, room = [], [budget]

    def full_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        name = os.fsdecode(file) if isinstance(file, (str, bytes, os.PathLike)) else ""
        if pattern in name and any(m in mode for m in "wax+"):
            opens.append(name)
            if len(opens) > skip:
                return _FullDisk(f, room)
        return f

    cfg = compose_run(run_dir, tmp_path, *FAST, "logger=tensorboard", "test=false")
    monkeypatch.setattr(builtins, "open", full_open)
    monkeypatch.setattr(io, "open", full_open)
    with torch_threads_kept(), pytest.raises(SystemExit) as stopped:
        train(cfg)
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert stopped.value.code == 1
    paragraph = next(line for line in err.splitlines() if line.startswith("Could not write"))
    assert pattern in paragraph and "No space left on device" in paragraph, paragraph
    assert " free of " in paragraph and "ckpt_path=last" in paragraph
    assert "Traceback" not in err
    summary = read_summary(run_dir)
    # summary.json too: rewritten in place when its temporary file finds no room.
    assert summary["status"] == "failed" and "No space left" in summary["error"], summary
    assert "summary.json says failed" in paragraph
    assert _temps(run_dir) == []
    _every_ckpt_loads(run_dir)  # never a partial file that looks like a checkpoint


def _limited(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_a_file_size_limit_stops_the_cli_at_the_checkpoint_and_leaves_no_partial_file(tmp_path):
    """A real kernel refusal (RLIMIT_FSIZE: no file beyond 20 kB) in a real CLI run: the
    first checkpoint (48 kB) cannot be written; the smaller files before it can."""
    proc = subprocess.run(
        [sys.executable, "-m", "gradwatch.train", *FAST, "logger=csv", f"paths.log_dir={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limited(20_000),
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    paragraph = next(line for line in proc.stderr.splitlines() if "Could not write" in line)
    assert str(run_dir / "checkpoints") in paragraph and "EFBIG" in paragraph, paragraph
    assert "no checkpoint was saved" in paragraph
    summary = read_summary(run_dir)
    assert summary["status"] == "failed" and "File too large" in summary["error"]
    assert list((run_dir / "checkpoints").iterdir()) == []
    assert _temps(run_dir) == []


def test_a_read_only_disk_and_other_errors_are_told_apart(tmp_path):
    read_only = OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "summary.json"))
    text = disk_error(read_only, tmp_path, "It ended.")
    assert text is not None and text.startswith(f"Could not write {tmp_path / 'summary.json'}")
    assert "EROFS" in text and "free of" in text and "writable disk" in text
    assert disk_error(ValueError("bad"), tmp_path, "") is None
    assert disk_error(OSError(errno.ENOENT, "gone"), tmp_path, "") is None
    wrapped = RuntimeError("writer failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert "ENOSPC" in disk_error(wrapped, tmp_path, "")


# -- a kill during a checkpoint save --------------------------------------------------------
KILL_POINTS = {
    # name: (what to patch in the saving process, whether the new file is in place after)
    "mid-write": ("write", False),  # the temporary file is cut to half its size, then killed
    "before-fsync": ("os.fsync", False),
    "before-rename": ("os.replace", False),
    "after-rename": ("gradwatch.run.checkpoint_io.fsync_dir", True),
}

_SAVER = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import gradwatch.run.checkpoint_io as cio
    from gradwatch.run.checkpoint_io import AtomicCheckpointIO, load_plain

    path, point = sys.argv[1], sys.argv[2]
    checkpoint = load_plain(path)
    checkpoint["global_step"] += 1000  # the "new" checkpoint
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if point == "write":
        real_replace = os.replace
        def half_written(src, dst):
            with open(src, "r+b") as f:
                f.truncate(os.path.getsize(src) // 2)
            die()
        os.replace = half_written
    elif point == "os.fsync":
        os.fsync = die
    elif point == "os.replace":
        os.replace = die
    else:
        cio.fsync_dir = die
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    """
)


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory) -> tuple[Path, Path]:
    """A run stopped after 2 of 3 epochs, and the uninterrupted 3-epoch run."""
    base = tmp_path_factory.mktemp("two_epochs")
    small = [*BASE, "logger=none"]
    with torch_threads_kept():
        for name, epochs in (("stopped", 2), ("reference", 3)):
            cfg = compose_run(base / name, base, *small, f"trainer.max_epochs={epochs}")
            assert train(cfg)["status"] == "completed"
    return base / "stopped", base / "reference"


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_kill_at_each_point_of_a_checkpoint_save_leaves_a_whole_checkpoint(
    tmp_path, two_epochs, point
):
    stopped, reference = two_epochs
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-a", str(stopped), str(run_dir)], check=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    before = last.resolve().read_bytes()
    patched, replaced = KILL_POINTS[point]

    proc = subprocess.run(
        [sys.executable, "-c", _SAVER, str(last), patched], capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    found = last_checkpoint_in(run_dir)
    assert found is not None
    assert checkpoint_step(found) == 80 + (1000 if replaced else 0)
    if not replaced:
        assert found.resolve().read_bytes() == before
    assert not [p for p in (run_dir / "checkpoints").glob("*.ckpt") if TMP_MARK in p.name]
    _every_ckpt_loads(run_dir)

    if point == "mid-write":  # the leftover temp goes at the next launch; the resume is exact
        assert [p.name for p in _temps(run_dir)] == [f".last.ckpt{TMP_MARK}{_pid_of(run_dir)}"]
        cfg = compose_run(run_dir, tmp_path, *BASE, "logger=none", "trainer.max_epochs=3",
                          "ckpt_path=last")  # fmt: skip
        with torch_threads_kept():
            assert train(cfg)["status"] == "completed"
        assert _temps(run_dir) == []
        _assert_same_training(run_dir, reference)


def _pid_of(run_dir: Path) -> str:
    (tmp,) = _temps(run_dir)
    return tmp.name.rsplit(TMP_MARK, 1)[1]


def test_last_ckpt_is_swapped_atomically_and_a_lost_link_still_resumes(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (tmp_path / "summary.json").write_text("{}")
    old, new = ckpts / "epoch000-step1.ckpt", ckpts / "epoch001-step2.ckpt"
    for step, path in ((1, old), (2, new)):
        torch.save({"global_step": step, "state_dict": {}}, path)
        os.utime(path, (step * 1000, step * 1000))
    replace_with_link(old, ckpts / "last.ckpt")
    assert (ckpts / "last.ckpt").resolve() == old
    # A kill between the epoch's file and its link: the newest whole file is found.
    assert last_checkpoint_in(tmp_path) == new
    replace_with_link(new, ckpts / "last.ckpt")
    assert os.readlink(ckpts / "last.ckpt") == new.name
    assert not list(ckpts.glob(f".*{TMP_MARK}*"))
    (ckpts / "epoch002-step3.ckpt").write_bytes(b"PK\x03\x04 half a zip")  # not ours: skipped
    assert checkpoint_step(last_checkpoint_in(tmp_path)) == 2


# -- augmented data resumed mid-epoch ------------------------------------------------------
class SigtermAt(L.Callback):
    """Sends this process SIGTERM at the end of training step ``step`` (a test helper)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_cifar_augmentation_resumed_mid_epoch_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "data", monkeypatch, per_batch=20)  # 90 training images
    cifar = [
        "experiment=relu", "data=cifar10", f"data.data_dir={tmp_path / 'data'}",
        "data.download=false", "data.batch_size=16", "model.net.depth=2", "model.net.width=16",
        "trainer.max_epochs=2", "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false", "logger=none", "test=false", "torch_threads=1",
    ]  # fmt: skip
    with torch_threads_kept():
        reference = tmp_path / "reference"
        assert train(compose_run(reference, tmp_path, *cifar))["status"] == "completed"
        run_dir = tmp_path / "run"
        killer = [
            "+callbacks.sigterm._target_=tests.test_faults.SigtermAt",
            "+callbacks.sigterm.step=3",
        ]
        with pytest.raises(SystemExit) as stopped:
            train(compose_run(run_dir, tmp_path, *cifar, *killer))
        assert stopped.value.code == 128 + signal.SIGTERM
        summary = read_summary(run_dir)
        assert summary["status"] == "interrupted" and summary["steps"] == 3  # mid-epoch (6 a epoch)
        state = load_plain(run_dir / "checkpoints" / "last.ckpt")["CIFAR10DataModule"]
        fresh = torch.Generator().manual_seed(42).get_state()
        assert not torch.equal(state["augment_rng"], fresh)  # crops and flips were drawn
        cfg = compose_run(run_dir, tmp_path, *cifar, "ckpt_path=last")
        assert train(cfg)["status"] == "completed"
    _assert_same_training(run_dir, reference)


def test_the_augmentation_generator_state_round_trips(tmp_path):
    dm = CIFAR10DataModule(data_dir=tmp_path, seed=3)
    x = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    x[:, :, 10:20, 5:9] = 255
    dm.augment_batch(x)
    state = dm.state_dict()
    want = dm.augment_batch(x)
    again = CIFAR10DataModule(data_dir=tmp_path, seed=3)
    again.load_state_dict(state)
    assert torch.equal(again.augment_batch(x), want)
    assert not torch.equal(CIFAR10DataModule(data_dir=tmp_path, seed=3).augment_batch(x), want)


# -- two launches on one run directory -----------------------------------------------------
def test_the_run_lock_names_its_holder_and_is_free_again_on_release(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    with pytest.raises(RunLockedError, match=f"in use by process {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    with RunLock(tmp_path) as again:
        assert again.held


def test_a_second_launch_on_a_running_run_is_refused_and_a_killed_ones_lock_is_not_stuck(tmp_path):
    proc = launch(
        *TINY, "logger=none", "trainer.max_epochs=1000", f"paths.log_dir={tmp_path}", cwd=tmp_path
    )
    wait_until(proc, lambda: any(tmp_path.glob("relu/runs/*/checkpoints/last-step.ckpt")))
    run_dir = only_run_dir(tmp_path)

    second = run_cli(
        *TINY, "logger=none", "ckpt_path=last", f"paths.log_dir={tmp_path}", cwd=tmp_path
    )
    assert second.returncode == 1, second.stderr[-3000:]
    assert f"in use by process {proc.pid}" in second.stderr and "gradwatch.train" in second.stderr
    assert "Traceback" not in second.stderr
    assert proc.poll() is None  # the first launch trains on, its record untouched
    summary = read_summary(run_dir)
    assert summary["status"] == "running" and "resumed_from" not in summary
    launches = json.loads((run_dir / "provenance.json").read_text())["launches"]
    assert len(launches) == 1

    proc.kill()
    proc.communicate()
    stopped_at = checkpoint_step(last_checkpoint_in(run_dir))
    third = run_cli(*TINY, "logger=none", "trainer.max_epochs=1000",
                    f"trainer.max_steps={stopped_at + 6}", "ckpt_path=last",
                    f"paths.log_dir={tmp_path}", cwd=tmp_path)  # fmt: skip
    assert third.returncode == 0, third.stderr[-3000:]
    assert only_run_dir(tmp_path) == run_dir
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["steps"] == stopped_at + 6


def test_sigterm_at_the_last_step_ends_interrupted_before_testing(tmp_path):
    """The signal lands as the last step ends: no test phase, status interrupted."""
    run_dir = tmp_path / "run"
    killer = [
        "+callbacks.sigterm._target_=tests.test_faults.SigtermAt",
        "+callbacks.sigterm.step=3",
    ]
    with torch_threads_kept(), pytest.raises(SystemExit) as stopped:
        train(compose_run(run_dir, tmp_path, *FAST, "logger=none", *killer))
    assert stopped.value.code == 128 + signal.SIGTERM
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and summary["steps"] == 3
    assert summary["test_acc"] is None
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 3
