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
        accuracy = self.accuracy[f"{stage}_acc"]
        accuracy.update(logits.detach(), y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=not on_step, prog_bar=True)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

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
