"""A Lightning logger that keeps what it is given, for tests to read back."""

from __future__ import annotations

from lightning.pytorch.loggers import Logger


class MemoryLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))

    def values(self, key: str) -> dict[int | None, float]:
        """``{step: value}`` of one key."""
        return {step: m[key] for step, m in self.rows if key in m}
