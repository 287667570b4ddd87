"""The logging cadence, defined once: which optimizer steps write step metrics.

Lightning writes what ``self.log`` logged on a step when ``(step + 1) % log_every_n_steps
== 0`` (it counts the step being run): steps 4, 9, 14, ... for 5. The callbacks measure on
those same steps, so ``train/loss`` and ``grad_norm/*`` share their steps, and on step 0
too, which the verdict's initial ratio needs.
"""

from __future__ import annotations

from typing import Any

import lightning as L


def check_interval(name: str, value: Any) -> None:
    """An ``every N steps`` argument: a positive integer, or ``None``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer or null, got {value!r}.")


def lightning_logs_at(step: int, every: int) -> bool:
    """Whether Lightning writes the step metrics of optimizer step ``step``."""
    return every > 0 and (step + 1) % every == 0


def logs_at(step: int, every: int | None, trainer: L.Trainer) -> bool:
    """Whether a callback measures at ``step``: step 0 and Lightning's logging steps
    (``every``, else ``trainer.log_every_n_steps``)."""
    return step == 0 or lightning_logs_at(step, every or trainer.log_every_n_steps or 1)
