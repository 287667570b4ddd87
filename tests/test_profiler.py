"""The trainer's profiler: ours (profiling off) by default, Lightning's when asked for."""

from __future__ import annotations

import lightning as L
import pytest
from hydra.utils import instantiate
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.profilers import SimpleProfiler

from gradwatch.callbacks import GradientNormCallback
from gradwatch.run.profiler import NoProfiler
from tests.test_configs import compose_cfg


class Counts(L.Callback):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_train_batch_start(self, *args) -> None:
        self.calls.append("batch_start")

    def on_before_optimizer_step(self, *args) -> None:
        self.calls.append("before_step")


def _fit(tmp_path, *overrides: str) -> tuple[L.Trainer, Counts]:
    cfg = compose_cfg(tmp_path, "trainer=cpu", *overrides)
    counts = Counts()
    callbacks = [counts, GradientNormCallback(log_every_n_steps=1, dirpath=tmp_path)]
    trainer = instantiate(
        cfg.trainer,
        max_steps=3,
        limit_val_batches=0,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(BoringModel())
    return trainer, counts


def test_by_default_nothing_is_profiled_and_every_hook_still_runs(tmp_path):
    trainer, counts = _fit(tmp_path)
    assert type(trainer.profiler) is NoProfiler
    assert counts.calls == ["batch_start", "before_step"] * 3
    assert trainer.global_step == 3


def test_lightning_profilers_still_time_the_hooks_when_asked(tmp_path):
    trainer, counts = _fit(tmp_path, "trainer.profiler=simple")
    assert isinstance(trainer.profiler, SimpleProfiler)
    timed = trainer.profiler.recorded_durations
    key = "[Callback]Counts.on_before_optimizer_step"
    assert len(timed[key]) == 3, sorted(timed)
    assert counts.calls == ["batch_start", "before_step"] * 3


def test_an_error_inside_the_no_op_context_still_propagates():
    profiler = NoProfiler()
    with pytest.raises(ValueError, match="inner"), profiler.profile("a"), profiler.profile("b"):
        raise ValueError("inner")
