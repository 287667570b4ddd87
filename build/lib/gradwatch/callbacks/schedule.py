"""When the callbacks measure: ``every N steps`` arguments, shared by all of them."""

from __future__ import annotations

from typing import Any

import lightning as L


def check_interval(name: str, value: Any) -> None:
    """An ``every N steps`` argument: a positive integer, or ``None``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer or null, got {value!r}.")


def logs_at(step: int, every: int | None, trainer: L.Trainer) -> bool:
    """Whether ``step`` is a logging step (``every``, else ``trainer.log_every_n_steps``)."""
    return step % (every or trainer.log_every_n_steps or 1) == 0
