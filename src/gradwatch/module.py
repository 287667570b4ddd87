"""ClassifierModule: a LightningModule around any classification network."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from gradwatch.schedule import lightning_logs_at

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
#: ``{"_target_": "torch.optim.Adam", "lr": 1e-3, ...}``: a factory as plain data.
FactoryConfig = Mapping[str, Any]


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float, str))


def factory_config(factory: Callable | FactoryConfig | None) -> dict[str, Any] | None:
    """A factory as plain data (what checkpoints keep): its Hydra-style config.

    ``functools.partial(torch.optim.Adam, lr=1e-3)`` and the config Hydra made it from
    both give ``{"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.001}``. Any
    other callable gives ``{"_repr_": repr(factory)}`` (recorded, but not rebuildable).
    """
    if factory is None:
        return None
    if isinstance(factory, DictConfig):
        factory = OmegaConf.to_container(factory, resolve=True)  # type: ignore[assignment]
    if isinstance(factory, Mapping):
        config = {str(k): v for k, v in factory.items()}
        return {**config, "_partial_": True} if "_target_" in config else config
    if isinstance(factory, functools.partial) and not factory.args:
        func = factory.func
        target = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', '')}"
        keywords = dict(factory.keywords)
        if "<" not in target and _plain(keywords):
            return {"_target_": target, "_partial_": True, **keywords}
    return {"_repr_": repr(factory)}


def _factory(config: Callable | FactoryConfig | None, what: str) -> Callable | None:
    """A callable from a factory or its plain config."""
    if config is None or (callable(config) and not isinstance(config, Mapping)):
        return config  # type: ignore[return-value]
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)  # type: ignore[assignment]
    if "_target_" not in config:
        raise ValueError(
            f"model.{what} must be a callable or a config with _target_, got {dict(config)!r}."
        )
    return instantiate({**config, "_partial_": True})


class ExampleMean(Metric):
    """The mean over examples of per-batch means (weighted by batch size): the epoch value
    ``self.log(..., on_epoch=True)`` reports, at 20 us an update instead of 0.4 ms, over
    the examples of every DDP rank. A NaN stays NaN. (torchmetrics' ``MeanMetric`` drops
    NaNs, or with ``nan_strategy="disable"`` ignores the weights, in torchmetrics 1.9.)"""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = ()) -> ExampleMean:
        # Lightning's 16-true and bf16-true move the module with .to(dtype), which torchmetrics
        # applies to float states: the sum stays float32 (fp16 overflows at 65504).
        this = super()._apply(fn, exclude_state)
        this.total = this.total.float()
        this._defaults["total"] = this._defaults["total"].float()
        return this

    def update(self, mean: torch.Tensor, n: int) -> None:
        self.total += mean.detach().float() * n
        self.count += n

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class ClassifierModule(L.LightningModule):
    """Cross-entropy classifier that logs ``{train,val,test}/{loss,acc}``.

    Args:
        net: any ``nn.Module`` mapping a batch of inputs to logits.
        num_classes: number of classes (for accuracy).
        optimizer: ``params -> Optimizer`` (Hydra passes a ``_partial_`` config), or its
            config as a mapping with ``_target_``; defaults to Adam with lr 1e-3, as in the
            article.
        scheduler: optional ``optimizer -> LRScheduler`` (or its config), stepped every epoch.

    The hyperparameters (``self.hparams``, kept in checkpoints) are plain data:
    ``num_classes`` and the optimizer's and scheduler's configs (:func:`factory_config`), so
    a checkpoint loads with ``torch.load(weights_only=True)`` and
    ``ClassifierModule.load_from_checkpoint(path, net=...)`` rebuilds the optimizer.
    """

    #: Seconds between progress-bar updates of the loss off the logging steps.
    bar_refresh_s = 0.2

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory | FactoryConfig | None = None,
        scheduler: SchedulerFactory | FactoryConfig | None = None,
    ) -> None:
        super().__init__()
        hparams = {
            "num_classes": num_classes,
            "optimizer": factory_config(optimizer),
            "scheduler": factory_config(scheduler),
        }
        self.save_hyperparameters(hparams, logger=False)
        self.net = net
        self.optimizer_factory = _factory(optimizer, "optimizer")
        self.scheduler_factory = _factory(scheduler, "scheduler")
        self.loss_fn = nn.CrossEntropyLoss()
        self._bar_shown_at = -math.inf
        # ModuleDict keys cannot shadow nn.Module attributes such as `train`.
        self.accuracy = nn.ModuleDict(
            {
                f"{stage}_acc": MulticlassAccuracy(num_classes, average="micro")
                for stage in ("train", "val", "test")
            }
        )
        self.mean_loss = nn.ModuleDict(
            {f"{stage}_loss": ExampleMean() for stage in ("val", "test")}
        )

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets the running hook's name about 40 times a step. nn.Module's setter
        # first checks whether a value is a parameter, buffer or submodule: 1.4 us a call
        # against 0.2, about 2% of a make-train step; a hook's name is none of them.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss_fn(logits, y)
        self.accuracy[f"{stage}_acc"].update(logits.detach(), y)
        return loss

    def _loss_is_shown(self) -> bool:
        """Whether this training step logs its loss (for the loggers and the progress bar).

        ``self.log`` costs about 0.5 ms per call on a CPU (Lightning moves its result
        collection to the value's device every call): logging every step while a progress
        bar shows the loss made ``make train``'s steps 16% slower. The trainer writes step
        metrics to the loggers on its logging steps only (:mod:`gradwatch.schedule`), so the
        loss is logged on those, and in between at most every :attr:`bar_refresh_s` seconds
        while a progress bar shows it.
        """
        trainer = self._trainer
        if trainer is None or lightning_logs_at(trainer.global_step, trainer.log_every_n_steps):
            return True
        bar = trainer.progress_bar_callback
        if bar is None or not bar.is_enabled:  # none, or another DDP rank's
            return False
        now = time.monotonic()
        if now - self._bar_shown_at < self.bar_refresh_s:
            return False
        self._bar_shown_at = now
        return True

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        if self._loss_is_shown():
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        # Accuracy is updated every step but logged (and synced across ranks) once an epoch.
        self.log("train/acc", self.accuracy["train_acc"], on_step=False, on_epoch=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def _eval_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, stage: str
    ) -> None:
        loss = self._step(batch, stage)
        self.mean_loss[f"{stage}_loss"].update(loss, len(batch[1]))
        # Metric objects: Lightning keeps a reference and computes them at the epoch's end,
        # before the callbacks' epoch-end hooks. Logged on the first batch only: two self.log
        # calls on every batch took 0.76 ms of a make-train validation batch's 1.76 ms.
        if batch_idx == 0:
            for name, metric in (
                ("loss", self.mean_loss[f"{stage}_loss"]),
                ("acc", self.accuracy[f"{stage}_acc"]),
            ):
                self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=True)

    def configure_optimizers(self):
        factory = self.optimizer_factory or (lambda params: torch.optim.Adam(params, lr=1e-3))
        optimizer = factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
