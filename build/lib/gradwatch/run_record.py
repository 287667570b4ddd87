"""One launch's record in its run directory: summary.json status, provenance, resumed logs.

``summary.json`` says ``running`` while a launch trains, then ``completed``, ``failed``
(with ``error``) or ``interrupted`` (with ``interrupted_by`` and ``checkpoint``). A launch
that continues an earlier run's directory (a resume) touches nothing there until its config
and checkpoint have been checked, so a bad resume loses nothing. Only global rank 0 writes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from gradwatch.provenance import launch_record, write_provenance
from gradwatch.resume import LAST, continue_step_logs
from gradwatch.summary import SUMMARY_FILE, update_summary

#: summary.json keys a run measures (DESIGN.md); ``None`` until it does.
MEASURED_KEYS = (
    "val_acc",
    "test_acc",
    "steps",
    "initial_first_last_ratio",
    "final_first_last_ratio",
    "diagnosis",
    "advice",
)


def _overrides() -> list[str]:
    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return []


class RunRecord:
    def __init__(self, run_dir: Path, cfg: DictConfig) -> None:
        self.run_dir = run_dir
        self.cfg = cfg
        self.writes = rank_zero_only.rank == 0
        self.continuing = (run_dir / SUMMARY_FILE).exists()
        self.started = time.perf_counter()
        self.open = not self.continuing
        if self.open:  # a new run says `running` before anything can fail
            self._running()

    def _update(self, **fields: Any) -> dict[str, Any]:
        fields.setdefault("duration_s", round(time.perf_counter() - self.started, 3))
        return update_summary(self.run_dir, **fields) if self.writes else fields

    def _running(self, **fields: Any) -> None:
        # Every key of the contract is present from the start; the run fills in what it measures.
        measured = dict.fromkeys(MEASURED_KEYS)
        self._update(
            **measured,
            experiment=self.cfg.task_name,
            net=OmegaConf.to_container(self.cfg.model.net, resolve=True),
            status="running",
            duration_s=None,
            **fields,
        )

    def log_from(self, ckpt_step: int | None) -> int | None:
        """Where a continued directory's logs go on: the checkpoint's step, or 0 without one."""
        return (ckpt_step or 0) if self.continuing else None

    def start(self, ckpt_path: Path | None, ckpt_step: int | None) -> None:
        """Training starts (its config and checkpoint checked): record it, cut continued logs."""
        self.open = True
        if not self.writes:
            return
        fields: dict[str, Any] = {}
        if self.continuing:  # the earlier launch's ending no longer holds
            continue_step_logs(self.run_dir, self.log_from(ckpt_step))
            fields = {"error": None, "interrupted_by": None, "checkpoint": None}
        if ckpt_path is not None:
            fields.update(resumed_from=str(ckpt_path), resumed_from_step=ckpt_step)
        self._running(**fields)
        write_provenance(self.run_dir, self.cfg, launch_record(self.cfg, ckpt_path, ckpt_step))

    def failed(self, err: BaseException, extra: dict | None = None) -> None:
        if self.open:  # a resume that failed its checks leaves the earlier record as it was
            self._update(status="failed", error=f"{type(err).__name__}: {err}", **(extra or {}))

    def interrupted(
        self, signal: str, step: int | None, checkpoint: Path | None, extra: dict
    ) -> None:
        if self.open:
            self._update(
                status="interrupted",
                interrupted_by=signal,
                steps=step,
                checkpoint=None if checkpoint is None else str(checkpoint),
                **extra,
            )
        if self.writes:
            again = " ".join(
                [*(o for o in _overrides() if not o.startswith("ckpt_path=")), f"ckpt_path={LAST}"]
            )
            saved = f"saved {checkpoint}" if checkpoint is not None else "no checkpoint saved"
            print(
                f"Interrupted by {signal} at step {step}: {saved}. Resume with: "
                f"python -m gradwatch.train {again}",
                file=sys.stderr,
            )

    def completed(self, **fields: Any) -> dict[str, Any]:
        return self._update(status="completed", **fields)
