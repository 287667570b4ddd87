"""ThrottledProgressBar: Lightning's Rich bar updated a few times a second, ending every
epoch on the true count; trainer.enable_progress_bar still switches it off."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel

from gradwatch import progress
from gradwatch.progress import ThrottledProgressBar
from gradwatch.recipe import build_trainer

EPOCHS, BATCHES = 2, 16


class Clock:
    """``time.monotonic`` that moves ``step`` seconds per reading."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _fit(
    monkeypatch: pytest.MonkeyPatch, seconds_per_batch: float, **trainer_kwargs: Any
) -> tuple[list, list]:
    """The batches Lightning's bar was given, and the training bar's count at each epoch's
    end and each validation's start."""
    monkeypatch.setattr(progress, "monotonic", Clock(seconds_per_batch))
    shown: list[tuple[int, int]] = []
    finals: list[float] = []
    real = RichProgressBar.on_train_batch_end

    def spy(self, trainer, pl_module, outputs, batch, batch_idx):
        shown.append((trainer.current_epoch, batch_idx))
        real(self, trainer, pl_module, outputs, batch, batch_idx)

    class Finals(L.Callback):
        def _count(self, trainer) -> None:
            bar = trainer.progress_bar_callback
            if bar.train_progress_bar_id is not None:
                finals.append(bar.progress.tasks[bar.train_progress_bar_id].completed)

        def on_train_epoch_end(self, trainer, pl_module):
            self._count(trainer)

        def on_validation_start(self, trainer, pl_module):
            self._count(trainer)

    monkeypatch.setattr(RichProgressBar, "on_train_batch_end", spy)
    options = {"max_epochs": EPOCHS, "limit_val_batches": 0, **trainer_kwargs}
    trainer = L.Trainer(
        limit_train_batches=BATCHES,
        callbacks=[ThrottledProgressBar(refresh_rate=10), Finals()],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        **options,
    )
    trainer.fit(BoringModel())
    return shown, finals


def test_fast_batches_update_the_bar_a_few_times_and_end_on_the_count(monkeypatch):
    # 0.03 s a batch: about every fourth batch at 10 updates a second, and each epoch's last.
    shown, finals = _fit(monkeypatch, 0.03)
    for epoch in range(EPOCHS):
        batches = [b for e, b in shown if e == epoch]
        assert BATCHES - 1 in batches
        assert 4 <= len(batches) <= 7, batches
    assert finals == [BATCHES] * EPOCHS


def test_slow_batches_update_it_every_batch(monkeypatch):
    shown, finals = _fit(monkeypatch, 0.5)
    assert shown == [(e, b) for e in range(EPOCHS) for b in range(BATCHES)]
    assert finals == [BATCHES] * EPOCHS


def test_a_stop_mid_epoch_and_a_validation_show_the_true_count(monkeypatch):
    # Frozen clock: after each epoch's first batch, nothing is shown until it catches up.
    _, finals = _fit(monkeypatch, 0.0, max_steps=BATCHES + 6)
    assert finals == [BATCHES, 6]
    _, finals = _fit(monkeypatch, 0.0, max_epochs=1, limit_val_batches=2, val_check_interval=5)
    assert finals == [5, 10, 15, BATCHES]


@pytest.mark.parametrize("interactive", [False, True])
@pytest.mark.parametrize("seconds_per_batch, redrawn", [(0.001, False), (0.5, True)])
def test_an_epoch_start_right_after_an_update_is_drawn_with_the_next(
    monkeypatch, seconds_per_batch, redrawn, interactive
):
    """Rich's Progress.reset redraws the bar at once, on the training thread, at every epoch
    start (the first creates the bar); less than 0.1 s after an update it is left to the
    bar's refresh thread or the next update (in Jupyter, where Lightning's refresh() draws
    on the training thread), so each epoch still reaches the screen."""
    import threading

    from lightning.pytorch.callbacks.progress import rich_progress
    from rich.live import Live

    monkeypatch.setattr(rich_progress, "_IS_INTERACTIVE", interactive)

    bars: list[RichProgressBar] = []
    draws: list[tuple[bool, str]] = []  # (on the training thread, visible task)
    real_draw = Live.refresh

    def draw(self):
        tasks = bars[0].progress.tasks if bars and bars[0].progress else []
        shown = next((t.description for t in tasks if t.visible), "")
        draws.append((threading.current_thread() is threading.main_thread(), shown))
        real_draw(self)

    monkeypatch.setattr(Live, "refresh", draw)
    starts, shadowed = [], []
    real_start = ThrottledProgressBar.on_train_epoch_start

    def mark(self, trainer, pl_module):
        bars[:] = [self]
        before = sum(main for main, _ in draws)
        real_start(self, trainer, pl_module)
        starts.append(sum(main for main, _ in draws) - before)
        shadowed.append("refresh" in vars(self.progress))  # Rich's own refresh is back

    monkeypatch.setattr(ThrottledProgressBar, "on_train_epoch_start", mark)
    _, finals = _fit(monkeypatch, seconds_per_batch)
    # (in Jupyter Lightning's own refresh() draws once more at each start)
    assert starts[0] >= 1 and [n > 0 for n in starts[1:]] == [redrawn] * (EPOCHS - 1), starts
    assert shadowed == [False] * EPOCHS
    assert finals == [BATCHES] * EPOCHS
    assert all(any(f"Epoch {e}/" in shown for _, shown in draws) for e in range(EPOCHS)), draws


@pytest.mark.parametrize("enabled", [True, False])
def test_the_trainer_switch_still_decides(make_cfg, enabled):
    cfg = make_cfg("logger=none", f"trainer.enable_progress_bar={str(enabled).lower()}")
    trainer = build_trainer(cfg)
    assert isinstance(trainer.progress_bar_callback, ThrottledProgressBar) is enabled
    assert (trainer.progress_bar_callback is None) is not enabled
