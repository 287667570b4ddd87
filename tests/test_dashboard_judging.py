"""DashboardCallback: the running verdict is judged at most once a second, and at the end."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.demos.boring_classes import BoringModel

from gradwatch.callbacks import GradientNormCallback, dashboard
from gradwatch.callbacks.dashboard import JUDGE_EVERY_S, DashboardCallback

SECONDS_PER_BATCH = 0.25


class Clock(L.Callback):
    """Moves the dashboard's clock SECONDS_PER_BATCH at every batch."""

    now = 0.0

    def on_train_batch_start(self, *args) -> None:
        Clock.now += SECONDS_PER_BATCH


def test_the_verdict_is_judged_at_most_once_a_second_and_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(dashboard, "monotonic", lambda: Clock.now)
    Clock.now = 0.0
    grad = GradientNormCallback(log_every_n_steps=1, dirpath=tmp_path)
    judged, diagnosis = [], grad.diagnosis

    def judge():
        judged.append(trainer.global_step)
        return diagnosis()

    monkeypatch.setattr(grad, "diagnosis", judge)
    trainer = L.Trainer(
        max_steps=10,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Clock(), grad, DashboardCallback()],
        default_root_dir=tmp_path,
    )
    trainer.fit(BoringModel())
    # Batch i ends at 0.25 * (i + 1) s with step i + 1 done: judged at the first (0.25 s),
    # then once a full second has passed (1.25 s, 2.25 s), then at the end of fit.
    assert JUDGE_EVERY_S == 1.0
    during, at_end = judged[:3], judged[3:]
    assert during == [1, 5, 9]
    assert at_end and set(at_end) == {10}
