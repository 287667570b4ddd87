"""ClassifierModule's train/loss: every logging step's own loss reaches the loggers, and the
progress bar is refreshed without paying ``self.log`` on every step."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch import nn

from gradwatch.data.batches import TensorBatches
from gradwatch.module import ClassifierModule
from tests.memory_logger import MemoryLogger

STEPS, EVERY = 23, 5


class StepLosses(L.Callback):
    """The loss each training step returned, by optimizer step (outside ``self.log``)."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step - 1] = float(outputs["loss"])


def _fit(bar_refresh_s: float, progress_bar: bool) -> tuple[list[int], MemoryLogger, dict]:
    torch.manual_seed(0)
    module = ClassifierModule(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)), 3)
    module.bar_refresh_s = bar_refresh_s
    logged_at: list[int] = []
    log = module.log

    def counting_log(name, *args, **kwargs):
        if name == "train/loss":
            logged_at.append(module.trainer.global_step)
        return log(name, *args, **kwargs)

    module.log = counting_log
    losses, logger = StepLosses(), MemoryLogger()
    trainer = L.Trainer(
        max_steps=STEPS,
        log_every_n_steps=EVERY,
        logger=logger,
        callbacks=[losses, *([TQDMProgressBar()] if progress_bar else [])],
        enable_progress_bar=progress_bar,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    trainer.fit(module, train_dataloaders=TensorBatches(x, y, batch_size=8, shuffle=True))
    return logged_at, logger, losses.losses


LOGGING_STEPS = [s for s in range(STEPS) if (s + 1) % EVERY == 0]


@pytest.mark.parametrize("progress_bar", [False, True])
def test_loggers_get_each_logging_steps_own_loss(progress_bar: bool):
    logged_at, logger, losses = _fit(math.inf, progress_bar)
    # Only the logging steps call self.log (with a bar: also the first step, which shows it).
    assert logged_at == ([0] if progress_bar else []) + LOGGING_STEPS
    written = logger.values("train/loss")
    assert sorted(written) == LOGGING_STEPS
    for step, value in written.items():
        assert value == pytest.approx(losses[step], rel=1e-6), step


def test_progress_bar_refreshed_every_step_when_asked():
    logged_at, logger, _ = _fit(0.0, progress_bar=True)
    assert logged_at == list(range(STEPS))
    assert sorted(logger.values("train/loss")) == LOGGING_STEPS


def test_the_setter_fast_path_keeps_what_nn_module_registers_and_lightning_reads():
    module = ClassifierModule(nn.Linear(4, 3), 3)
    # Submodules, parameters and buffers assigned later are still registered.
    module.head = nn.Linear(3, 2)
    module.scale = nn.Parameter(torch.ones(1))
    module.register_buffer("seen", torch.zeros(1))
    module.seen = torch.ones(1)
    assert "head" in dict(module.named_modules())
    assert "scale" in dict(module.named_parameters())
    assert float(dict(module.named_buffers())["seen"]) == 1.0
    # The hook name Lightning sets is an ordinary attribute, seen inside the hooks.
    module._current_fx_name = "training_step"
    assert module.__dict__["_current_fx_name"] == "training_step"

    seen = []

    class Reads(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, *args) -> None:
            seen.append(pl_module._current_fx_name)

    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        callbacks=[Reads()],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    module = ClassifierModule(nn.Linear(4, 3), 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    trainer.fit(module, train_dataloaders=TensorBatches(x, y, batch_size=8))
    assert seen == ["on_train_batch_start"]
