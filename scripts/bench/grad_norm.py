"""Benchmark group ``grad_norm``: what watching gradients at every step costs.

For the article's 10-layer sigmoid MLP and its 20-block residual MLP, on digits batches of
128, one torch thread, steps per CPU-second of the training thread (see StepTimer) of
Lightning training with:

- ``none``: no monitoring (the baseline);
- ``gradwatch``: GradientNormCallback logging every step with its defaults (per-layer
  gradient norms, weight norms and update ratios, grad_norms.csv);
- ``gradwatch_grads_only``: the same with ``weight_stats=False`` (gradient norms only, the
  work the next two options do);
- ``article_item_loop``: the article's per-parameter ``p.grad.norm().item()`` loop;
- ``lightning_grad_norm``: Lightning's ``grad_norm`` utility + ``log_dict`` in
  ``on_before_optimizer_step``, as its docs show;
- with a W&B offline logger (baseline ``none+wandb``): ``gradwatch+wandb`` (the callback's
  keys also sent to W&B) and ``wandb_watch`` (``wandb.watch(log="gradients", log_freq=1)``).

Variants are interleaved in every repeat so that machine noise hits all of them alike; the
note of each row gives the overhead as a share of the baseline's step time.

    python -m scripts.bench.grad_norm --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import grad_norm

from gradwatch.callbacks import GradientNormCallback
from gradwatch.data import DigitsDataModule
from gradwatch.module import ClassifierModule
from gradwatch.nets import MLP
from scripts.bench.core import Row, pin_threads, quiet, with_ratios

GROUP = "grad_norm"

NETS: dict[str, Callable[[], torch.nn.Module]] = {
    "sigmoid_mlp": lambda: MLP((1, 8, 8), 10, depth=10, width=128, activation="sigmoid"),
    "residual_mlp": lambda: MLP(
        (1, 8, 8),
        10,
        depth=20,
        width=256,
        activation="relu",
        init="kaiming_normal",
        norm="batch",
        residual=True,
        bias_init="zeros",
    ),
}


class StepTimer(L.Callback):
    """CPU time of the training thread from the start of step ``skip`` to the end of
    training, all hooks included. With one torch thread all the work of a step runs on this
    thread, and CPU time does not count the time other jobs on a shared machine take."""

    def __init__(self, skip: int) -> None:
        self.skip = skip
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.skip and not self.start:
            self.start = time.thread_time()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.end = time.thread_time()


def timed_hooks(callback: L.Callback, timer: StepTimer) -> L.Callback:
    """Count the CPU time ``callback`` spends in its per-step hooks inside the timed window
    (``timer.hook_time``): an overhead measured within one run, immune to run-to-run noise."""
    timer.hook_time = 0.0
    for name in ("on_before_optimizer_step", "on_train_batch_end"):
        hook = getattr(callback, name)

        def timed(trainer, *args, _hook=hook):
            start = time.thread_time()
            _hook(trainer, *args)
            if timer.start:
                timer.hook_time += time.thread_time() - start

        setattr(callback, name, timed)
    return callback


class ArticleItemLoop(L.Callback):
    """The article's loop: every weight's gradient norm, one ``.item()`` per parameter."""

    def __init__(self) -> None:
        self.norms: dict[str, list[float]] = defaultdict(list)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        for name, param in pl_module.named_parameters():
            if "weight" in name and param.grad is not None:
                self.norms[name.rsplit(".", 1)[0]].append(param.grad.norm().item())


class LightningGradNorm(L.Callback):
    """Lightning's documented recipe: ``self.log_dict(grad_norm(self, norm_type=2))``."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        pl_module.log_dict(grad_norm(pl_module, norm_type=2))


def _steps_per_second(
    net_name: str, variant: str, steps: int, skip: int, root: str
) -> tuple[float, float | None]:
    """Steps per CPU-second, and the share of that time spent in the monitoring callback's
    own per-step hooks (``None`` where the work is not in such hooks)."""
    torch.manual_seed(0)
    net = NETS[net_name]()
    module = ClassifierModule(net, num_classes=10)
    timer = StepTimer(skip)
    callbacks: list[L.Callback] = [timer]
    logger: WandbLogger | bool = False
    if variant.startswith("gradwatch"):
        weight_stats = variant != "gradwatch_grads_only"
        callback = GradientNormCallback(
            log_every_n_steps=1, dirpath=root, warn=False, weight_stats=weight_stats
        )
        callbacks.append(timed_hooks(callback, timer))
    elif variant == "article_item_loop":
        callbacks.append(timed_hooks(ArticleItemLoop(), timer))
    elif variant == "lightning_grad_norm":
        callbacks.append(LightningGradNorm())
    if variant.endswith("wandb") or variant == "wandb_watch":
        logger = WandbLogger(project="gradwatch-bench", save_dir=root, mode="offline")
        if variant == "wandb_watch":
            logger.watch(module, log="gradients", log_freq=1, log_graph=False)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=logger,
        log_every_n_steps=1,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )
    try:
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=128, seed=0))
    finally:
        if logger:
            import wandb

            wandb.finish()
    elapsed = timer.end - timer.start
    share = timer.hook_time / elapsed if hasattr(timer, "hook_time") else None
    return (steps - skip) / elapsed, share


VARIANTS = {  # name -> baseline
    "none": None,
    "gradwatch": "none",
    "gradwatch_grads_only": "none",
    "article_item_loop": "none",
    "lightning_grad_norm": "none",
    "none+wandb": None,
    "gradwatch+wandb": "none+wandb",
    "wandb_watch": "none+wandb",
}


def run(repeats: int = 3, quick: bool = False) -> list[Row]:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    torch.set_flush_denormal(True)  # sigmoid nets make subnormals, which are slow on CPU
    steps = {"sigmoid_mlp": 60 if quick else 100, "residual_mlp": 15 if quick else 30}
    rows = []
    with tempfile.TemporaryDirectory() as root, quiet():
        for net_name, n in steps.items():
            rates: dict[str, list[float]] = defaultdict(list)
            shares: dict[str, list[float]] = defaultdict(list)
            for _ in range(max(1, repeats)):
                for variant in VARIANTS:
                    rate, share = _steps_per_second(net_name, variant, n, skip=5, root=root)
                    rates[variant].append(rate)
                    if share is not None:
                        shares[variant].append(share)
            for variant, baseline in VARIANTS.items():
                rows.append(
                    Row(
                        GROUP,
                        f"{net_name}/{variant}",
                        statistics.median(rates[variant]),
                        "steps/cpu-s",
                        baseline=f"{net_name}/{baseline}" if baseline else None,
                        repeats=max(1, repeats),
                        note=(
                            f"in its hooks: {100 * statistics.median(shares[variant]):.1f}%"
                            " of step CPU time"
                            if shares[variant]
                            else ""
                        ),
                    )
                )
    rows = with_ratios(rows)
    for row in rows:
        if row.ratio:
            overhead = f"overhead {100 * (1 / row.ratio - 1):+.1f}% of step time"
            row.note = "; ".join(filter(None, [overhead, row.note]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.grad_norm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    pin_threads(1)
    for row in run(args.repeats, args.quick):
        ratio = f"{row.ratio:.3f}" if row.ratio else "-"
        print(f"{row.name:36s} {row.value:9.1f} {row.unit}  ratio {ratio:>6}  {row.note}")


if __name__ == "__main__":
    main()
