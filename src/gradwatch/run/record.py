"""One launch's record in its run directory: summary.json status, provenance, resumed logs.

``summary.json`` says ``running`` while a launch trains, then ``completed``, ``failed``
(with ``error``) or ``interrupted`` (with ``interrupted_by`` and ``checkpoint``). A launch
that continues an earlier run's directory (a resume) touches nothing there until its config
and checkpoint have been checked, so a bad resume loses nothing. Only global rank 0 writes,
and only while it holds the run's lock (:class:`~gradwatch.run.lock.RunLock`): a second
launch on the same run directory is refused before it writes anything.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from gradwatch.run.checkpoint_io import remove_stale_temps
from gradwatch.run.files import CHECKPOINT_DIR, SUMMARY_FILE
from gradwatch.run.lock import RunLock
from gradwatch.run.provenance import launch_record, write_provenance
from gradwatch.run.resume import LAST, last_checkpoint_in
from gradwatch.run.summary import overwrite_summary, update_summary
from gradwatch.run.write_errors import QuietThreadDiskErrors, disk_error, find_disk_error

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
        self.open = False
        self.lock = RunLock(run_dir)
        self.thread_errors = QuietThreadDiskErrors()

    def begin(self) -> None:
        """Take the run's lock (rank 0), clear what a killed launch left, and say `running`
        in a new run (before anything else can fail). Raises ``RunLockedError``."""
        self.thread_errors.install()
        if self.writes:
            self.lock.acquire()
            for directory in (self.run_dir, self.run_dir / CHECKPOINT_DIR):
                remove_stale_temps(directory)
            for tmp in self.run_dir.glob(f"{SUMMARY_FILE}.*.tmp"):
                tmp.unlink(missing_ok=True)
        self.open = not self.continuing
        if self.open:
            self._running()

    def close(self) -> None:
        self.lock.release()
        self.thread_errors.remove()

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
        self.lock.record()
        fields: dict[str, Any] = {}
        if self.continuing:  # the earlier launch's ending no longer holds (grad_norms.csv: its
            # callback keeps the rows before the checkpoint's step)
            fields = {"error": None, "interrupted_by": None, "checkpoint": None}
        if ckpt_path is not None:
            fields.update(resumed_from=str(ckpt_path), resumed_from_step=ckpt_step)
        self._running(**fields)
        write_provenance(self.run_dir, self.cfg, launch_record(self.cfg, ckpt_path, ckpt_step))

    def failed(self, err: BaseException, extra: dict | None = None) -> None:
        if self.open:  # a resume that failed its checks leaves the earlier record as it was
            self._update(status="failed", error=f"{type(err).__name__}: {err}", **(extra or {}))

    def write_failed(self, err: BaseException, step: int | None) -> str | None:
        """When ``err`` is a write that failed for lack of room or permission: mark the run
        failed if summary.json can still be written, and return one paragraph for the user
        (None for any other error)."""
        found = find_disk_error(err)
        if found is None:
            return None
        outcome = ""
        if self.writes:
            marked = "summary.json says failed" if self.open else "summary.json is unchanged"
            try:
                self.failed(found)
            except OSError:
                try:  # no room for a temporary file: the old file's room may do
                    error = f"{type(found).__name__}: {found}"
                    overwrite_summary(self.run_dir, status="failed", error=error)
                except OSError:
                    marked = "summary.json could not be updated either"
            for directory in (self.run_dir, self.run_dir / CHECKPOINT_DIR):
                remove_stale_temps(directory)  # whatever our own writers left
            newest = last_checkpoint_in(self.run_dir)
            kept = (
                f"the newest whole checkpoint is {newest}" if newest else "no checkpoint was saved"
            )
            at = f" at step {step}" if step is not None else ""
            outcome = f"It ended{at}; {marked}; {kept}."
        return disk_error(err, self.run_dir, outcome)

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
        if not self.writes:  # a DDP worker: where it stopped, to compare with rank 0
            # One write: the ranks share a pipe, and print() writes the newline apart.
            sys.stderr.write(f"[rank {rank_zero_only.rank}] stopped by {signal} at step {step}\n")
        else:
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
