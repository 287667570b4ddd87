"""``Run``: one launch of a run, as a context manager around building, fitting and testing.

On entry: SIGTERM is caught, the run directory's lock is taken (rank 0), the config is
checked and the checkpoint to resume from is found. On exit, whatever happened:

- a full or read-only disk (whichever writer hit it) or a run directory in use: one
  paragraph on stderr, ``summary.json`` marked failed where it can be written, exit 1;
- Ctrl-C / SIGTERM: ``summary.json`` says ``interrupted`` (``last.ckpt`` was saved by
  :class:`~gradwatch.run.interrupt.InterruptCheckpoint`), exit 130 / 143;
- any other error: ``summary.json`` says ``failed`` with the error, which is re-raised;
- always: SIGTERM handling restored, the lock released, the W&B run finished.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from gradwatch.callbacks import GradientNormCallback
from gradwatch.console import print_job_line, print_report
from gradwatch.loggers import finish_wandb
from gradwatch.run.interrupt import (
    EXIT_CODES,
    InterruptCheckpoint,
    interrupted_by,
    launcher_marked,
    wait_for_launcher,
)
from gradwatch.run.lock import refusal
from gradwatch.run.record import RunRecord
from gradwatch.run.resume import checked_resume_step, resolve_ckpt_path
from gradwatch.run.validate import validate_config


def _metric(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class Run:
    """The lifecycle of one launch: ``with Run(cfg) as run: ...`` (see the module docstring)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.record = RunRecord(Path(cfg.paths.output_dir), cfg)
        self.stopper = InterruptCheckpoint()  # Ctrl-C and SIGTERM: last.ckpt, `interrupted`
        self.ckpt_path: Path | None = None
        self.ckpt_step: int | None = None
        self.trainer: L.Trainer | None = None
        self.grad_cb: GradientNormCallback | None = None

    def __enter__(self) -> Run:
        try:
            self.stopper.catch_sigterm()
            self.record.begin()  # the lock: one launch per run directory
            validate_config(self.cfg)
            self.ckpt_path = resolve_ckpt_path(self.cfg, self.record.run_dir)
        except BaseException:
            if not self.__exit__(*sys.exc_info()):
                raise
        return self

    # -- what the recipe calls, in order ---------------------------------------------------
    def start(self, model: L.LightningModule) -> None:
        """The checkpoint to resume from (if any) fits ``model``: the launch is recorded
        (``running``, provenance) and may now write into a continued run directory."""
        self.ckpt_step = checked_resume_step(self.ckpt_path, model, self.cfg.task_name)
        self.record.start(self.ckpt_path, self.ckpt_step)

    @property
    def callbacks(self) -> list[L.Callback]:
        """The run's own callbacks, beside the configured ones."""
        return [self.stopper]

    @property
    def log_from(self) -> int | None:
        """Where a continued run directory's logs go on (None for a new run)."""
        return self.record.log_from(self.ckpt_step)

    def watch(self, trainer: L.Trainer) -> L.Trainer:
        """The trainer (and its gradient callback) whose state the record reports."""
        self.trainer = trainer
        self.grad_cb = next(
            (c for c in trainer.callbacks if isinstance(c, GradientNormCallback)), None
        )
        return trainer

    def fit(self, model: L.LightningModule, datamodule: L.LightningDataModule) -> None:
        """``trainer.fit`` from the checkpoint, if any (plain data only: weights_only)."""
        assert self.trainer is not None, "watch(trainer) first"
        with launcher_marked():  # DDP workers wait for the launcher when interrupted
            self.trainer.fit(
                model, datamodule=datamodule, ckpt_path=self.ckpt_path, weights_only=True
            )

    def completed(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Record the run as completed, print its report, return its summary."""
        trainer = self.trainer
        assert trainer is not None, "watch(trainer) first"
        summary = self.record.completed(
            **self._verdict(),
            val_acc=_metric(metrics, "val/acc"),
            test_acc=_metric(metrics, "test/acc"),
            steps=trainer.global_step,
        )
        if trainer.is_global_zero and _in_multirun():  # jobs share a terminal: one line each
            print_job_line(summary, list(HydraConfig.get().overrides.task), self.record.run_dir)
        elif trainer.is_global_zero:
            print_report(summary, self.grad_cb, self.record.run_dir)
        summary["metrics"] = {k: float(v) for k, v in metrics.items()}
        return summary

    # -- however it ended ------------------------------------------------------------------
    def _verdict(self) -> dict[str, Any]:
        return self.grad_cb.summary() if self.grad_cb is not None else {}

    def __exit__(self, exc_type: Any, err: BaseException | None, tb: Any) -> bool:
        try:
            if err is None:
                return False
            step = self.trainer.global_step if self.trainer is not None else None
            paragraph = self.record.write_failed(err, step) or refusal(err)
            if paragraph is not None:
                print(paragraph, file=sys.stderr)
                raise SystemExit(1) from None
            signal = interrupted_by(err, self.trainer, self.stopper)
            if not signal:
                self.record.failed(err, self._verdict())
                return False  # re-raised
            self.record.interrupted(signal, step, self.stopper.saved_path, self._verdict())
            wait_for_launcher()  # a DDP worker leaves after the launcher, never before
            raise SystemExit(EXIT_CODES[signal]) from None
        finally:
            self.stopper.release_sigterm()
            finish_wandb()  # so multirun jobs never share a W&B run
            self.record.close()
