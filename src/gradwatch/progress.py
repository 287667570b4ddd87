"""The terminal progress bar of a run, cheap on fast steps."""

from __future__ import annotations

import math
from time import monotonic
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


def _no_redraw() -> None:
    pass


class ThrottledProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar``, whose training bar is updated at most
    ``refresh_rate`` times a second.

    Lightning's bar updates on every training batch: it reads the trainer's progress-bar
    metrics and updates its Rich task, and its refresh thread redraws up to 100 times a
    second while holding the GIL. On ``make train``'s 4 ms steps that cost 0.5 to 1 ms a
    step. Here a training batch that ends less than ``1 / refresh_rate`` seconds after the
    last update is not shown at once; the count catches up at the next update, at the end
    of the epoch (also one cut short by ``max_steps`` or a stop) and before validation.
    Validation and test bars, with far fewer batches, update as Lightning's do. An epoch
    that starts less than ``1 / refresh_rate`` seconds after the last update is drawn with
    the next one (Lightning redraws at every epoch start: 1.25 ms, 3% of ``make train``'s
    10-step epochs).

    Example::

        trainer = L.Trainer(callbacks=[ThrottledProgressBar(refresh_rate=10)])

    Args:
        refresh_rate: updates (and redraws) per second; 0 disables the bar.
        **kwargs: ``RichProgressBar``'s other arguments (``leave``, ``theme``, ...).
    """

    def __init__(self, refresh_rate: int = 10, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self._updated_at = -math.inf
        self._unshown: int | None = None  # batches done in this epoch, not yet on the bar

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        now = monotonic()
        last = i + 1 >= self.total_train_batches
        if self.is_enabled and not last and now - self._updated_at < 1 / self.refresh_rate:
            self._unshown = i + 1
            return
        self._updated_at, self._unshown = now, None
        super().on_train_batch_end(trainer, pl_module, outputs, batch, i)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        progress = self.progress
        held = (
            self.is_enabled
            and progress is not None
            and monotonic() - self._updated_at < 1 / self.refresh_rate
        )
        if held:  # Rich's Progress.reset redraws: the next update will
            progress.refresh = _no_redraw
        try:
            super().on_train_epoch_start(trainer, pl_module)
        finally:
            if held:
                del progress.refresh  # Rich's own again

    def _catch_up(self) -> None:
        if self._unshown is not None and self.train_progress_bar_id is not None:
            self._update(self.train_progress_bar_id, self._unshown)
        self._unshown = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._catch_up()
        super().on_train_epoch_end(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._catch_up()
        super().on_validation_start(trainer, pl_module)
