"""Ctrl-C (SIGINT) and SIGTERM stop training cleanly: finish the step, save last.ckpt, exit.

While fitting, :class:`InterruptCheckpoint` replaces Lightning's SIGTERM handler with one
that only raises a flag, and decides at the end of every training step whether to stop:
alone, from its own flag; under DDP, from every rank's flag (an all-reduce), so a SIGTERM
to any one process (the launcher or a worker) stops every rank after the same step. The
stop goes through Lightning's own path (``SIGTERMException`` at the end of the step, its
logs written), then one ``last.ckpt`` is saved (rank 0 writes it). The first Ctrl-C takes
the same path; a second one stops at once without saving.

Lightning's own handler (2.6) is replaced because it calls ``torch.distributed.broadcast``
*inside the signal handler*: the ranks then run mismatched collectives and wait for each
other forever (and a signal to a worker reaches no other rank).

Outside the Trainer (building the model, loading data), :meth:`InterruptCheckpoint.catch_sigterm`
makes SIGTERM raise like Ctrl-C does, so the run can still record why it ended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn, TrainerStatus
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

#: Exit codes of a process stopped by a signal, as shells report them.
EXIT_CODES = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}
#: Set by the process that launches the run; DDP workers started by Lightning inherit it.
LAUNCHER_ENV = "GRADWATCH_LAUNCHER_PID"


@contextlib.contextmanager
def launcher_marked() -> Iterator[None]:
    """While fitting: this process is the launcher of the DDP workers Lightning may start
    (they inherit the variable; it is gone afterwards, so other children never see it)."""
    if LAUNCHER_ENV in os.environ:  # a worker, or a launch inside a launch
        yield
        return
    os.environ[LAUNCHER_ENV] = str(os.getpid())
    try:
        yield
    finally:
        os.environ.pop(LAUNCHER_ENV, None)


def wait_for_launcher(timeout_s: float = 60.0) -> None:
    """In a DDP worker that Lightning started: return once the launching process has ended.

    Lightning's launcher SIGKILLs every process (itself included) a few seconds after a
    worker exits with a non-zero code; an interrupted worker (exit 143) that left first
    could get the launcher killed before it wrote ``summary.json``. Elsewhere: no wait.
    """
    launcher = os.environ.get(LAUNCHER_ENV)
    if launcher is None or launcher == str(os.getpid()) or rank_zero_only.rank == 0:
        return
    deadline = time.monotonic() + timeout_s
    while str(os.getppid()) == launcher and time.monotonic() < deadline:
        time.sleep(0.05)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class InterruptCheckpoint(L.Callback):
    """Saves ``<dirpath>/last.ckpt`` when fitting stops on SIGINT or SIGTERM.

    It also flushes the loggers before every checkpoint, so what a checkpoint has seen is
    on disk, and a resume from it neither loses nor repeats logged steps.

    Example::

        trainer = L.Trainer(callbacks=[InterruptCheckpoint()])

    Args:
        dirpath: where ``last.ckpt`` goes; ``None``: the directory of the trainer's first
            ``ModelCheckpoint``, else ``<default_root_dir>/checkpoints``.
    """

    def __init__(self, dirpath: str | os.PathLike | None = None) -> None:
        self.dirpath = dirpath
        self.signal: str | None = None  # "SIGINT" or "SIGTERM" once one stopped the run
        self.saved_path: Path | None = None
        self.trainer_running = False  # Lightning's own SIGTERM handler is active
        self._training = False  # the checkpoint has been restored and steps are being taken
        self._stop_requested = False  # a signal came in while fitting: stop after this step
        self._previous_sigint: Any = None
        self._previous_sigterm: Any = None

    # -- SIGTERM outside the Trainer -----------------------------------------------------
    def catch_sigterm(self) -> None:
        """Until :meth:`release_sigterm`: SIGTERM raises ``SIGTERMException`` unless a Trainer
        (with Lightning's own handler, which calls this one too) is running."""
        if _in_main_thread():  # signal handlers can only be set there
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)

    def release_sigterm(self) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if not self.trainer_running:
            self.signal = self.signal or "SIGTERM"
            raise SIGTERMException
        self._on_sigterm_while_fitting(signum, frame)

    def _on_sigterm_while_fitting(self, signum: int, frame: FrameType | None) -> None:
        """Lightning's handler, minus its collective call: a flag read at the step's end."""
        if self.signal is None:  # (Ctrl-C said so already)
            rank_zero_info("SIGTERM: finishing this step, then saving last.ckpt")
            self.signal = "SIGTERM"
        self._stop_requested = True

    def _stop_agreed(self, trainer: L.Trainer) -> bool:
        """Whether any rank was asked to stop (every rank gets the same answer)."""
        if not (trainer.world_size > 1 and dist.is_available() and dist.is_initialized()):
            return self._stop_requested
        flag = torch.tensor([float(self._stop_requested)], device=trainer.strategy.root_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        # The reduced value, never the local flag again: a signal landing after the
        # all-reduce would make this rank alone stop (it counts at the next step).
        agreed = bool(flag.item() > 0)
        if agreed:
            self._stop_requested = True
            self.signal = self.signal or "SIGTERM"  # another rank got it
        return agreed

    def _stop_after_this_step(self, trainer: L.Trainer) -> None:
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None and hasattr(connector, "received_sigterm"):
            # Lightning raises SIGTERMException at the end of the step, its logs written.
            connector.received_sigterm = True
        else:  # another Lightning: stop here
            raise SIGTERMException

    # -- SIGINT -> Lightning's SIGTERM path while fitting -------------------------------
    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = "SIGINT"
        rank_zero_info("\nCtrl-C: finishing this step, saving last.ckpt (Ctrl-C again: stop now)")
        os.kill(os.getpid(), signal.SIGTERM)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.trainer_running = True
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None:  # what Lightning installs when the stage starts
            connector._sigterm_notifier_fn = self._on_sigterm_while_fitting
        if stage == TrainerFn.FITTING and self._previous_sigint is None and _in_main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = True
        if _in_main_thread():  # whatever Lightning installed: ours
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if self._stop_agreed(trainer):
            self._stop_after_this_step(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stop_agreed(trainer):  # the last step: stop before testing
            raise SIGTERMException
        self._training = False

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.trainer_running = False
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None
        ending_well = trainer.state.status != TrainerStatus.INTERRUPTED  # no collectives if not
        if stage != TrainerFn.FITTING and ending_well and self._stop_agreed(trainer):
            raise SIGTERMException  # a signal during testing: the run ends interrupted

    # -- the checkpoint --------------------------------------------------------------
    def _last_path(self, trainer: L.Trainer) -> Path:
        if self.dirpath is not None:
            dirpath = Path(self.dirpath)
        else:
            dirpath = next(
                (Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if cb.dirpath),  # type: ignore[attr-defined]
                Path(trainer.default_root_dir) / "checkpoints",
            )
        return dirpath / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning flushes the loggers only after a step's checkpoint: a kill in between
        # would lose rows that the resumed run (starting after that step) never writes again.
        for logger in trainer.loggers:
            logger.save()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        self.signal = self.signal or "SIGTERM"
        if not self._training:  # before the resumed state is restored: nothing new to save
            return
        path = self._last_path(trainer)
        # ModelCheckpoints saving last.ckpt there keep overwriting this file after a resume
        # (their state, saved in the checkpoint, names it) instead of starting last-v1.ckpt.
        for callback in trainer.checkpoint_callbacks:
            ours = isinstance(callback, ModelCheckpoint) and callback.save_last
            if ours and callback.dirpath and Path(callback.dirpath) == path.parent:
                callback.last_model_path = str(path)
        trainer.save_checkpoint(path)  # the whole training state: weights, optimizer, loops
        self.saved_path = path
        rank_zero_info(f"{self.signal}: saved {path} at step {trainer.global_step}")


def interrupted_by(err: BaseException, trainer: L.Trainer | None, cb: InterruptCheckpoint) -> str:
    """``"SIGINT"``/``"SIGTERM"`` when ``err`` ended the run because of a signal, else ``""``."""
    if cb.signal is not None:
        return cb.signal
    if isinstance(err, KeyboardInterrupt):
        return "SIGINT"
    if isinstance(err, SIGTERMException):
        return "SIGTERM"
    # Lightning ends a KeyboardInterrupt inside fit/test with sys.exit(1).
    if (
        isinstance(err, SystemExit)
        and trainer is not None
        and trainer.state.status == TrainerStatus.INTERRUPTED
    ):
        return "SIGINT"
    return ""
