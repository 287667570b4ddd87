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
from tests.tensorboard_server import free_port

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


class EvalReference(L.Callback):
    """At each validation's end (in the callbacks' epoch-end hook, which Lightning calls
    before the module's): the logged val/loss and val/acc, and the same computed here in
    plain torch over the whole validation set with the weights of that moment."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.pairs = x, y, []

    def reference(self, net: nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            logits = net(self.x)
        loss = nn.functional.cross_entropy(logits, self.y)  # the mean over all examples
        return float(loss), float((logits.argmax(1) == self.y).float().mean())

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        logged = trainer.callback_metrics
        self.pairs.append(
            ((float(logged["val/loss"]), float(logged["val/acc"])), self.reference(pl_module.net))
        )


def test_eval_loss_and_accuracy_are_each_epochs_mean_over_examples():
    torch.manual_seed(0)
    x, y = torch.randn(96, 4), torch.randint(0, 3, (96,))
    x_val, y_val = torch.randn(50, 4), torch.randint(0, 3, (50,))  # batches of 16, 16, 16, 2
    module = ClassifierModule(nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)), 3)
    module.configure_optimizers = lambda: torch.optim.SGD(module.parameters(), lr=0.5)
    reference = EvalReference(x_val, y_val)
    trainer = L.Trainer(
        max_epochs=3,
        logger=False,
        callbacks=[reference],
        num_sanity_val_steps=2,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    val = TensorBatches(x_val, y_val, batch_size=16)
    trainer.fit(module, TensorBatches(x, y, batch_size=16, shuffle=True), val)
    assert len(reference.pairs) == 4  # the sanity check (2 batches), then every epoch
    epochs = reference.pairs[1:]
    losses = [ref[0] for _, ref in epochs]
    assert max(losses) - min(losses) > 1e-3  # the weights moved: epochs differ
    for logged, ref in epochs:  # each epoch alone (not mixed with the sanity check's)
        assert logged == pytest.approx(ref, rel=1e-5)

    (result,) = trainer.test(module, val, verbose=False)
    expected = reference.reference(module.net)
    assert (result["test/loss"], result["test/acc"]) == pytest.approx(expected, rel=1e-5)


def test_a_nan_eval_loss_is_reported_as_nan():
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    x[9, 2] = float("nan")  # one example of the second batch of three
    module = ClassifierModule(nn.Linear(4, 3), 3)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu")
    (result,) = trainer.validate(module, TensorBatches(x, y, batch_size=8), verbose=False)
    assert math.isnan(result["val/loss"])  # not dropped, as MeanMetric would


def test_the_eval_loss_sum_stays_float32_when_the_module_is_cast_to_half():
    module = ClassifierModule(nn.Linear(4, 3), 3).to(dtype=torch.float16)  # as 16-true does
    mean = module.mean_loss["val_loss"]
    for _ in range(3):
        mean.update(torch.tensor(1000.0, dtype=torch.float16), 128)  # 384,000 > fp16's max
    assert mean.total.dtype == torch.float32
    assert float(mean.compute()) == 1000.0
    mean.reset()
    assert mean.total.dtype == torch.float32


def test_under_ddp_eval_metrics_cover_every_ranks_examples(tmp_path, monkeypatch):
    # Lightning leaves MASTER_PORT set in this process: the sweep tests' DDP jobs, started
    # later from here, would inherit it and all listen on one port.
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    torch.manual_seed(0)
    # 60 examples: each of the 2 ranks validates 30 (batches of 16 and 14), different ones.
    x_val, y_val = torch.randn(60, 4), torch.randint(0, 3, (60,))
    module = ClassifierModule(nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)), 3)
    trainer = L.Trainer(
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    (result,) = trainer.validate(module, TensorBatches(x_val, y_val, batch_size=16), verbose=False)
    expected = EvalReference(x_val, y_val).reference(module.net)
    rank_zero = EvalReference(x_val[0::2], y_val[0::2]).reference(module.net)
    assert (result["val/loss"], result["val/acc"]) == pytest.approx(expected, rel=1e-5)
    assert result["val/loss"] != pytest.approx(rank_zero[0], rel=1e-3)  # not one rank's mean
