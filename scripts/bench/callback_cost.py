"""Benchmark group ``callback_cost``: GradientNormCallback on models this project did not write.

- ``deep520``: a 520-layer Linear(32)+ReLU MLP, batch 64, TensorBoard logger, the callback
  logging every 10th step with its defaults: the median time of a logging step against the
  median time of the other steps of the same run (adjacent steps, so machine noise hits
  both alike). The target is at most 1.3x. The note gives the event-file bytes per logged step.
- ``resnet18``: torchvision's ResNet-18 (10 classes) on random 32x32 images, batch 32, SGD,
  TensorBoard logger: what monitoring a step costs, for the callback in its default mode
  and gradients only, Lightning's ``grad_norm`` recipe and ``wandb.watch`` (W&B offline).
  Each monitors every other step, and its monitored steps are timed against the other
  steps of the same run (as ``deep520``); "none" is the control (odd against even steps).
  Every 50 steps is computed from the callback's row. Variants are interleaved in every
  repeat.

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
from gradwatch.schedule import lightning_logs_at
from scripts.bench.core import Row, interleaved, quiet, with_ratios
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
    """Wall time of every training step, from its batch start to the next one's: the
    trainer's own work after the step's hooks (writing what ``self.log`` gathered to the
    loggers) counts in the step. The last step runs to the end of training."""

    def __init__(self) -> None:
        self.times: dict[int, float] = {}
        self._step: int | None = None

    def _stop(self, pl_module) -> float:
        synchronize(str(pl_module.device))  # a GPU's queued work counts in its step
        now = time.perf_counter()
        if self._step is not None:
            self.times[self._step] = now - self.start
        return now

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        self.start, self._step = self._stop(pl_module), trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop(pl_module)


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
        logging.append(statistics.median(t for s, t in times if lightning_logs_at(s, 10)))
        plain.append(statistics.median(t for s, t in times if not lightning_logs_at(s, 10)))
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


#: Monitoring every other step (``RESNET_EVERY``): each run's monitored steps against its
#: other steps. "none" monitors nothing: its odd steps against its even ones show what the
#: method itself reads (the control).
RESNET_VARIANTS = (
    "none",
    "gradwatch",
    "gradwatch_grads_only",
    "lightning_grad_norm",
    "wandb_watch",
)
RESNET_EVERY = 2


class OnLoggingSteps(LightningGradNorm):
    """Lightning's recipe on the steps Lightning logs at ``every`` (it runs on every step)."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if lightning_logs_at(trainer.global_step, self.every):
            super().on_before_optimizer_step(trainer, pl_module, optimizer)


def resnet_step_times(
    variant: str,
    steps: int,
    root: str,
    every: int = 1,
    accelerator: str = "cpu",
    precision: str | None = None,
) -> dict[int, float]:
    """Each step's wall time, with ``variant`` monitoring the steps Lightning logs at
    ``every`` (``(step + 1) % every == 0``: ours, the recipe and ``wandb.watch``'s
    ``log_freq`` count alike) and the trainer logging every step."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    module = Classify(resnet18(num_classes=10))
    data = TensorDataset(torch.randn(32 * steps, 3, 32, 32), torch.randint(0, 10, (32 * steps,)))
    callbacks: list[L.Callback] = []
    logger = None
    if variant.startswith("gradwatch"):
        callbacks.append(
            GradientNormCallback(
                log_every_n_steps=every,
                weight_stats=variant != "gradwatch_grads_only",
                warn=False,
                dirpath=root,
            )
        )
    elif variant == "lightning_grad_norm":
        callbacks.append(OnLoggingSteps(every))
    elif variant == "wandb_watch":
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(project="gradwatch-bench", save_dir=root, mode="offline")
        logger.watch(module, log="gradients", log_freq=every, log_graph=False)
    try:
        timer = _fit(module, data, root, callbacks, steps, logger, 1, accelerator, precision)
    finally:
        if variant == "wandb_watch":
            import wandb

            wandb.finish()
    return timer.times


def resnet_rate(
    variant: str, steps: int, root: str, accelerator: str = "cpu", precision: str | None = None
) -> float:
    """Steps/s (the median step from step 3 on) with ``variant`` monitoring every step."""
    times = resnet_step_times(variant, steps, root, 1, accelerator, precision)
    return 1 / statistics.median(t for s, t in times.items() if s >= 3)


def resnet_paired(variant: str, steps: int, root: str) -> tuple[float, float]:
    """Steps/s of the monitored steps and of the others in one run (from step 4 on)."""
    times = resnet_step_times(variant, steps, root, RESNET_EVERY)
    monitored = [t for s, t in times.items() if s >= 4 and lightning_logs_at(s, RESNET_EVERY)]
    other = [t for s, t in times.items() if s >= 4 and not lightning_logs_at(s, RESNET_EVERY)]
    return 1 / statistics.median(monitored), 1 / statistics.median(other)


def resnet18(repeats: int, quick: bool) -> list[Row]:
    """Per variant: its monitored steps against the other steps of the same run (adjacent
    steps: the host's drift, 10 to 40% over a minute here, hits both alike), round by round;
    and what logging every 50 steps costs, from the callback's logging steps."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    steps = 16 if quick else 40
    repeats = max(1, repeats)
    with tempfile.TemporaryDirectory() as root:
        resnet_step_times("none", 8, root)  # warm-up: one-off costs (allocator, kernels)
        variants = {v: (lambda v=v: resnet_paired(v, steps, root)) for v in RESNET_VARIANTS}
        rounds = interleaved(variants, repeats)
    rows = []
    for variant, pairs in rounds.items():
        name = f"resnet18/{variant}"
        monitored, other = zip(*pairs)
        ratio = statistics.median(m / o for m, o in pairs)
        rows.append(Row(GROUP, f"{name}: other steps", statistics.median(other), "steps/s"))
        note = "odd steps against even ones: the method's own reading" if variant == "none" else ""
        rows.append(
            Row(
                GROUP,
                name,
                statistics.median(monitored),
                "steps/s",
                baseline=f"{name}: other steps",
                ratio=ratio,
                repeats=repeats,
                note=note,
            )
        )
        if variant == "gradwatch":  # a logging step's extra time spread over 50 steps
            every_50 = 1 / (1 + (1 / ratio - 1) / 50)
            rows.append(
                Row(
                    GROUP,
                    "resnet18/gradwatch_every_50",
                    statistics.median(other) * every_50,
                    "steps/s",
                    baseline=f"{name}: other steps",
                    ratio=every_50,
                    repeats=repeats,
                    note="from the row above: its extra time once in 50 steps",
                )
            )
    return rows


def run(repeats: int = 3, quick: bool = False) -> list[Row]:
    with quiet():
        rows = deep520(repeats, quick) + resnet18(repeats, quick)
    rows = with_ratios(rows)
    for row in rows:
        if row.ratio and row.name.startswith("resnet18"):
            cost = f"overhead {100 * (1 / row.ratio - 1):+.1f}% of step time"
            row.note = f"{cost}; {row.note}" if row.note else cost
        elif row.ratio:
            row.note = f"a logging step takes {1 / row.ratio:.2f}x a plain step; " + row.note
    return rows
