"""The terminal progress bar of a run, cheap on fast steps."""

from __future__ import annotations

import math
from time import monotonic
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class ThrottledProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar``, updated at most ``refresh_rate`` times a second.

    Lightning's bar updates on every training batch: it reads the trainer's progress-bar
    metrics and updates its Rich task, and its refresh thread redraws up to 100 times a
    second while holding the GIL. On ``make train``'s 4 ms steps that cost 1 ms a step. Here
    a batch that ends less than ``1 / refresh_rate`` seconds after the last update is not
    shown, except an epoch's last batch, so the bar always ends on the true count.

    Example::

        trainer = L.Trainer(callbacks=[ThrottledProgressBar(refresh_rate=10)])

    Args:
        refresh_rate: updates (and redraws) per second; 0 disables the bar.
        **kwargs: ``RichProgressBar``'s other arguments (``leave``, ``theme``, ...).
    """

    def __init__(self, refresh_rate: int = 10, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self._updated_at = -math.inf

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        now = monotonic()
        last = i + 1 >= self.total_train_batches
        if self.is_enabled and not last and now - self._updated_at < 1 / self.refresh_rate:
            return
        self._updated_at = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, i)
