"""Benchmark group ``callback_cost``: GradientNormCallback on models this project did not write.

- ``deep520``: a 520-layer Linear(32)+ReLU MLP, batch 64, TensorBoard logger, the callback
  logging every 10th step with its defaults: the median time of a logging step against the
  median time of the other steps of the same run (adjacent steps, so machine noise hits
  both alike). The target is at most 1.3x. The note gives the event-file bytes per logged step.
- ``resnet18``: torchvision's ResNet-18 (10 classes) on random 32x32 images, batch 32, SGD,
  TensorBoard logger, every step logged: step time with no monitoring, with the callback in
  its default mode, gradients only, every 50 steps, Lightning's ``grad_norm`` recipe and
  ``wandb.watch(log_freq=1)`` (W&B offline). Variants are interleaved in every repeat.

    python -m scripts.bench --groups callback_cost --repeats 1 --quick
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradwatch.callbacks import GradientNormCallback
from gradwatch.loggers.tensorboard import BatchedTensorBoardLogger
from scripts.bench.core import Row, interleaved, quiet, rows_against, with_ratios
from scripts.bench.grad_norm import LightningGradNorm
from scripts.bench.training import synchronize

GROUP = "callback_cost"


class Classify(L.LightningModule):
    def __init__(self, net: nn.Module, lr: float = 0.01) -> None:
        super().__init__()
        self.net, self.lr = net, lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class StepTimes(L.Callback):
    """Wall time of every training step (batch start to batch end, all hooks included)."""

    def __init__(self) -> None:
        self.times: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        synchronize(str(pl_module.device))
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        synchronize(str(pl_module.device))  # a GPU's queued work counts in its step
        self.times[trainer.global_step - 1] = time.perf_counter() - self.start


def _fit(
    module, data, root, callbacks, steps, logger=None, every=1, accelerator="cpu", precision=None
) -> StepTimes:
    timer = StepTimes()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator=accelerator,
        devices=1,
        precision=precision,
        logger=logger if logger is not None else BatchedTensorBoardLogger(root),
        log_every_n_steps=every,
        callbacks=[*callbacks, timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(module, DataLoader(data, batch_size=data.tensors[0].shape[0] // steps))
    return timer


def deep520(repeats: int, quick: bool) -> list[Row]:
    steps, skip = (60 if quick else 120), 5
    logging, plain, sizes = [], [], []
    for seed in range(max(1, repeats)):
        torch.manual_seed(seed)
        layers = [m for _ in range(519) for m in (nn.Linear(32, 32), nn.ReLU())]
        net = nn.Sequential(*layers, nn.Linear(32, 10))
        data = TensorDataset(torch.randn(64 * steps, 32), torch.randint(0, 10, (64 * steps,)))
        with tempfile.TemporaryDirectory() as root:
            cb = GradientNormCallback(log_every_n_steps=10, warn=False, dirpath=root)
            timer = _fit(Classify(net, 1e-3), data, root, [cb], steps, every=10)
            events = list(Path(root).rglob("events.out.tfevents.*"))
            sizes.append(sum(e.stat().st_size for e in events) / (steps // 10))
        times = [(s, t) for s, t in timer.times.items() if s >= skip]
        logging.append(statistics.median(t for s, t in times if s % 10 == 0))
        plain.append(statistics.median(t for s, t in times if s % 10))
    rows = [
        Row(GROUP, "deep520/plain_step", 1 / statistics.median(plain), "steps/s"),
        Row(
            GROUP,
            "deep520/logging_step",
            1 / statistics.median(logging),
            "steps/s",
            baseline="deep520/plain_step",
            note=f"{statistics.median(sizes) / 1000:.0f} kB of TensorBoard events per logged step",
        ),
    ]
    return rows


#: Each compared with "none", round by round.
RESNET_VARIANTS = (
    "none",
    "gradwatch",
    "gradwatch_grads_only",
    "gradwatch_every_50",
    "lightning_grad_norm",
    "wandb_watch",
)


def resnet_rate(
    variant: str, steps: int, root: str, accelerator: str = "cpu", precision: str | None = None
) -> float:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    module = Classify(resnet18(num_classes=10))
    data = TensorDataset(torch.randn(32 * steps, 3, 32, 32), torch.randint(0, 10, (32 * steps,)))
    callbacks: list[L.Callback] = []
    logger = None
    if variant.startswith("gradwatch"):
        callbacks.append(
            GradientNormCallback(
                log_every_n_steps=50 if variant.endswith("50") else 1,
                weight_stats=variant != "gradwatch_grads_only",
                warn=False,
                dirpath=root,
            )
        )
    elif variant == "lightning_grad_norm":
        callbacks.append(LightningGradNorm())
    elif variant == "wandb_watch":
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(project="gradwatch-bench", save_dir=root, mode="offline")
        logger.watch(module, log="gradients", log_freq=1, log_graph=False)
    try:
        timer = _fit(module, data, root, callbacks, steps, logger, 1, accelerator, precision)
    finally:
        if variant == "wandb_watch":
            import wandb

            wandb.finish()
    times = [t for s, t in timer.times.items() if s >= 3]
    return 1 / statistics.median(times)


def resnet18(repeats: int, quick: bool) -> list[Row]:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    steps = 12 if quick else 30
    with tempfile.TemporaryDirectory() as root:
        resnet_rate("none", steps, root)  # warm-up: one-off costs (allocator, kernels)
        variants = {v: (lambda v=v: resnet_rate(v, steps, root)) for v in RESNET_VARIANTS}
        rounds = interleaved(variants, max(1, repeats))
    return rows_against(GROUP, rounds, "none", "steps/s", max(1, repeats), "resnet18/")


def run(repeats: int = 3, quick: bool = False) -> list[Row]:
    with quiet():
        rows = deep520(repeats, quick) + resnet18(repeats, quick)
    rows = with_ratios(rows)
    for row in rows:
        if row.ratio and row.name.startswith("resnet18"):
            row.note = f"overhead {100 * (1 / row.ratio - 1):+.1f}% of step time"
        elif row.ratio:
            row.note = f"a logging step takes {1 / row.ratio:.2f}x a plain step; " + row.note
    return rows
