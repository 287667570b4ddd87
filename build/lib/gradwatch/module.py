"""ClassifierModule: a LightningModule around any classification network."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class ClassifierModule(L.LightningModule):
    """Cross-entropy classifier that logs ``{train,val,test}/{loss,acc}``.

    Args:
        net: any ``nn.Module`` mapping a batch of inputs to logits.
        num_classes: number of classes (for accuracy).
        optimizer: ``params -> Optimizer`` (Hydra passes a ``_partial_`` config);
            defaults to Adam with lr 1e-3, as in the article.
        scheduler: optional ``optimizer -> LRScheduler``, stepped every epoch.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"], logger=False)
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.loss_fn = nn.CrossEntropyLoss()
        # ModuleDict keys cannot shadow nn.Module attributes such as `train`.
        self.accuracy = nn.ModuleDict(
            {
                f"{stage}_acc": MulticlassAccuracy(num_classes, average="micro")
                for stage in ("train", "val", "test")
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss_fn(logits, y)
        self.accuracy[f"{stage}_acc"].update(logits.detach(), y)
        return loss

    def _loss_is_shown(self) -> bool:
        """Whether this training step's loss reaches a logger or the progress bar.

        ``self.log`` costs a millisecond or more per call on a CPU (Lightning moves its
        result collection to the value's device every call), which is a tenth of a small
        network's step. The trainer only writes step metrics every ``log_every_n_steps``
        (the ``+ 1``: Lightning counts the step being run), so log the loss on those steps
        only, or every step while a progress bar shows it.
        """
        trainer = self._trainer
        if trainer is None or trainer.progress_bar_callback is not None:
            return True
        every = trainer.log_every_n_steps
        return every > 0 and (trainer.global_step + 1) % every == 0

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        if self._loss_is_shown():
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        # Accuracy is updated every step but logged (and synced across ranks) once an epoch.
        self.log("train/acc", self.accuracy["train_acc"], on_step=False, on_epoch=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._log_eval(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._log_eval(batch, "test")

    def _log_eval(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        loss = self._step(batch, stage)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log(
            f"{stage}/acc",
            self.accuracy[f"{stage}_acc"],
            on_step=False,
            on_epoch=True,
            prog_bar=True,
        )

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
