"""grad_norms.csv: the full per-layer profile of one fit, whatever the loggers are."""

from __future__ import annotations

import time
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn

from gradwatch.step_csv import drop_rows_from

COLUMNS = ("step", "layer", "depth", "grad_norm", "weight_norm", "update_ratio", "optimizer")
#: The file reaches the disk at least this often (and at every checkpoint and at the end).
FLUSH_SECONDS = 2.0


class GradNormsFile:
    """The file belongs to the fit that writes it: a fresh fit starts it anew, a fit resumed
    from a checkpoint keeps the rows before the checkpoint's step and continues after them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None
        self._flushed = 0.0

    def open(self, resume_step: int | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            drop_rows_from(self.path, resume_step, list(COLUMNS))
            self._file = self.path.open("a", newline="")
            return
        if self.path.is_file() and self.path.stat().st_size:
            rank_zero_warn(f"{self.path} holds an earlier fit's rows: starting it anew.")
        self._file = self.path.open("w", newline="")
        self._file.write(",".join(COLUMNS) + "\n")

    @property
    def is_open(self) -> bool:
        return self._file is not None

    def write(self, text: str) -> None:
        """Append ready-made rows (layer names are module paths: no quoting needed)."""
        self._file.write(text)
        now = time.monotonic()
        if now - self._flushed > FLUSH_SECONDS:  # a flush per step would cost a syscall
            self._file.flush()
            self._flushed = now

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
