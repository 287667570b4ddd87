"""Training throughput: our full stack against the article's hand-written PyTorch loop.

Workloads (``WORKLOADS``): the ``make train`` run (the article's 10-layer sigmoid MLP on
digits, 10-step epochs, all 20 epochs: one warm-up and 19 timed, as the run does them), the
20-block residual MLP on digits, and the sigmoid MLP on MNIST-shaped data (60,000 random
28x28 images in MNIST's own file format, 469-step epochs: one warm-up and one timed).
Same network, seed, batch (128) and Adam(lr=1e-3) on both sides:

- ``plain loop``: the article's loop over ``DataLoader(TensorDataset(x, y), shuffle=True)``
  (zero_grad, forward, cross-entropy, backward, step); the baseline of every row;
- ``plain loop + .item() norms``: the same, recording every parameter's gradient norm with
  ``.item()`` each step, as the article monitors them;
- ``plain loop + fused Adam``: the same with ``Adam(fused=True)``, which our config uses;
- ``gradwatch``: ``configs/train.yaml`` composed with Hydra's compose API (default callbacks
  and logger, no progress bar, no validation, no test) and ``Trainer.fit``;
- ``gradwatch, grad norms every step``: the same with ``callbacks.grad_norm.log_every_n_steps=1``;
- ``gradwatch, logging every 50 steps`` and ``every 5 steps``: the same at Lightning's
  default cadence and twice as often as ours (every 10): what the monitoring costs on
  logging steps;
- ``gradwatch, progress bar``: as ``make train`` runs it, with the progress bar (ours,
  updated at most 10 times a second), and with Lightning's own, updated every batch;
- ``gradwatch, no checkpoint`` and ``Lightning alone``: where the stack's time goes;
- a 20-layer sigmoid MLP (which, unlike the 10-layer one, makes subnormal floats): our
  stack with ``flush_denormal=true`` vs without;
- residual, not quick: ``plain loop, torch.compile`` (where inductor works on this CPU);
- a fused Adam step with and without the NVML probe that ``import lightning`` switches on
  (:mod:`gradwatch.run.cuda_probe`): on machines without NVIDIA's driver our stack drops
  it, and the plain loop is timed without it, as a script that never imports Lightning.

Steps/s are taken over whole epochs after one warm-up epoch, so per-epoch costs (the
module's epoch-end logging, the DataLoader's reshuffle, a checkpoint every
``min_interval_s``) count, and one-offs do not: start-up, and the fit's final checkpoint
(:class:`EpochClock`), which the process group's whole-process row times. The timed windows
here are shorter than ``min_interval_s`` (10 s), so no save falls in them: the "no
checkpoint" row shows what ``ModelCheckpoint`` costs on every step. Variants run
interleaved, ``repeats`` rounds each: a row shows its median, and its ratio is the median
of the rounds' own ratios (a round's variants run close together, while the host's speed
drifts over the group; see ``scripts.bench.core.rows_against``). Times are wall time,
or CPU time of this process with ``--clock cpu`` (one torch thread, so CPU time is the work
done, whatever else shares the machine).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradwatch
from gradwatch.recipe import build_model, build_trainer
from gradwatch.run.cuda_probe import NVML_CHECK, skip_missing_nvml
from gradwatch.run.heap import frozen_heap
from scripts.bench.core import Row, interleaved, median_time, quiet, rows_against
from tests.fake_vision import write_mnist  # MNIST's own IDX files, random pixels

GROUP = "training"
CONFIG_DIR = Path(gradwatch.__file__).resolve().parents[2] / "configs"
#: ``GRADWATCH_BENCH_CLOCK=cpu`` (``--clock cpu``) times with this process's CPU time, which
#: other jobs on a shared machine inflate far less than wall time; the default is wall time.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
#: Lightning adds a ModelCheckpoint of its own unless checkpointing is switched off.
NO_CHECKPOINT = ("~callbacks.model_checkpoint", "++trainer.enable_checkpointing=false")
#: The Trainer with nothing of ours but the module and data: Lightning's own per-step cost.
BARE = ("callbacks=none", "logger=none", "++trainer.enable_checkpointing=false")
#: The progress bar, drawn as on a terminal (into /dev/null: Rich skips drawing elsewhere).
PROGRESS_BAR = (
    "trainer.enable_progress_bar=true",
    "+callbacks.progress_bar.console_kwargs.force_terminal=true",
)
#: Lightning's own bar (its default where rich is installed), updated on every batch.
LIGHTNING_BAR = (
    "callbacks.progress_bar._target_=lightning.pytorch.callbacks.RichProgressBar",
    "callbacks.progress_bar.refresh_rate=100",
)
#: workload -> (experiment, overrides, (warm-up, timed, timed when quick) epochs, variants);
#: ``None``: every variant of :func:`network_rows`. Digits: 10 steps an epoch.
WORKLOADS = {
    "sigmoid": ("sigmoid", (), (1, 19, 2), None),
    "residual": ("residual", (), (1, 2, 1), None),
    "sigmoid, MNIST-shaped": (
        "sigmoid",
        ("data=mnist", "data.download=false"),  # data.data_dir: the files written by the group
        (1, 1, 1),  # 469 steps an epoch
        (
            "plain loop",
            "plain loop + fused Adam",
            "gradwatch",
            "gradwatch, progress bar",
            "Lightning alone",
        ),
    ),
}
#: 66,667 images, of which MNIST's 10% validation split leaves 60,000: 469 batches of 128.
MNIST_IMAGES = 66_667


def clock() -> float:
    return CLOCKS[os.environ.get("GRADWATCH_BENCH_CLOCK", "wall")]()


def compose_config(experiment: str, log_dir: str, *overrides: str) -> DictConfig:
    """``configs/train.yaml`` as ``make train`` composes it, minus the progress bar."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"experiment={experiment}",
                f"paths.log_dir={log_dir}",
                "trainer.enable_progress_bar=false",
                "++trainer.limit_val_batches=0",
                "test=false",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = tempfile.mkdtemp(dir=log_dir)
    return cfg


class EpochClock(L.Callback):
    """Wall time from the start of the first timed epoch to the end of training, less the
    checkpoint saves made after the last epoch's steps: the fit's final checkpoint is a
    one-off, like start-up, which the process group times. Other saves (every
    ``min_interval_s``) count."""

    def __init__(self, warmup_epochs: int) -> None:
        self.warmup_epochs = warmup_epochs
        self.start: float | None = None
        self.start_step = 0
        self.steps_per_s = float("nan")
        self.final_saves_s = 0.0
        self._ending = False  # the last epoch's steps are done

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        save = trainer.save_checkpoint

        def timed_save(*args: Any, **kwargs: Any) -> Any:
            began = clock()
            try:
                return save(*args, **kwargs)
            finally:
                if self._ending:
                    self.final_saves_s += clock() - began

        trainer.save_checkpoint = timed_save  # this trainer only

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.warmup_epochs:
            synchronize(str(pl_module.device))
            self.start, self.start_step = clock(), trainer.global_step

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._ending = trainer.current_epoch + 1 >= trainer.max_epochs

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.start is not None, "no timed epoch ran"
        synchronize(str(pl_module.device))
        steps = trainer.global_step - self.start_step
        self.steps_per_s = steps / (clock() - self.start - self.final_saves_s)


def stack_steps_per_s(cfg: DictConfig, warmup: int, epochs: int) -> float:
    """Our stack as ``gradwatch.recipe.train`` builds and fits it (the same calls, the heap
    frozen as there), timed by :class:`EpochClock`."""
    with open_dict(cfg):
        cfg.trainer.max_epochs = warmup + epochs
    datamodule, model = build_model(cfg)
    timer = EpochClock(warmup)
    trainer = build_trainer(cfg, [timer])
    try:
        with frozen_heap():
            trainer.fit(model, datamodule=datamodule)
    finally:
        torch.set_flush_denormal(False)
    return timer.steps_per_s


def plain_loop_steps_per_s(
    cfg: DictConfig,
    warmup: int,
    epochs: int,
    item_norms: bool = False,
    compiled: bool = False,
    fused: bool = False,
    device: str = "cpu",
    amp: torch.dtype | None = None,
) -> float:
    """The article's training loop on the same network, data and batch size; on ``device``
    with the data held there, and under ``torch.autocast(amp)`` (float16 with a GradScaler,
    as Lightning's 16-mixed) when ``amp`` is given."""
    torch.manual_seed(cfg.seed)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    x, y = datamodule.splits["train"]
    # Datamodules that normalize each batch on the fly (normalize_batch): give the plain loop
    # the same inputs, normalized once up front as a hand-written loop would hold them.
    if callable(normalize := getattr(datamodule, "normalize_batch", None)):
        x = normalize(x.to(device))
    dataset = TensorDataset(x.to(device), y.to(device))
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True)
    model = instantiate(
        cfg.model.net, input_shape=datamodule.input_shape, num_classes=datamodule.num_classes
    ).to(device)
    forward = torch.compile(model) if compiled else model
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.model.optimizer.lr, fused=fused)
    scaler = torch.amp.GradScaler(device, enabled=amp == torch.float16)
    norms: list[float] = []
    steps, start = 0, 0.0
    for epoch in range(warmup + epochs):
        if epoch == warmup:
            synchronize(device)
            steps, start = 0, clock()
        for data, target in loader:
            optimizer.zero_grad()
            if amp is None:  # the article's loop, as it is written
                loss = criterion(forward(data), target)
                loss.backward()
            else:
                with torch.autocast(device, dtype=amp):
                    loss = criterion(forward(data), target)
                scaler.scale(loss).backward()
            if item_norms:
                norms += [p.grad.norm().item() for p in model.parameters() if p.grad is not None]
            if amp is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
            steps += 1
    synchronize(device)
    return steps / (clock() - start)


def hidden_output(fn: Callable[..., float], *args: Any) -> float:
    """``fn(*args)`` with its terminal output (a progress bar) thrown away."""
    with open(os.devnull, "w") as devnull, redirect_stdout(devnull), redirect_stderr(devnull):
        return fn(*args)


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so the clock measures it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def compile_works() -> str | None:
    """None when torch.compile runs a backward pass here, else why not."""
    try:
        net = torch.compile(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
        net(torch.randn(2, 4)).sum().backward()
    except Exception as err:  # inductor needs a working C++ toolchain
        return f"torch.compile unavailable: {type(err).__name__}: {str(err)[:120]}"
    return None


def network_rows(workload: str, repeats: int, quick: bool, log_dir: str) -> list[Row]:
    experiment, extra, (warmup, epochs, quick_epochs), only = WORKLOADS[workload]
    epochs = quick_epochs if quick else epochs
    extra = (*extra, f"paths.data_dir={log_dir}/data")
    cfg = compose_config(experiment, log_dir, *extra)
    every = compose_config(experiment, log_dir, *extra, "callbacks.grad_norm.log_every_n_steps=1")
    every_50 = compose_config(experiment, log_dir, *extra, "trainer.log_every_n_steps=50")
    every_5 = compose_config(experiment, log_dir, *extra, "trainer.log_every_n_steps=5")
    # Where the stack's time goes: without ModelCheckpoint (its hooks), and Lightning alone.
    no_checkpoint = compose_config(experiment, log_dir, *extra, *NO_CHECKPOINT)
    bare = compose_config(experiment, log_dir, *extra, *BARE)
    bar = compose_config(experiment, log_dir, *extra, *PROGRESS_BAR)
    lightning_bar = compose_config(experiment, log_dir, *extra, *PROGRESS_BAR, *LIGHTNING_BAR)
    variants: dict[str, Callable[[], float]] = {
        "plain loop": lambda: plain_loop_steps_per_s(cfg, warmup, epochs),
        "plain loop + .item() norms": lambda: plain_loop_steps_per_s(
            cfg, warmup, epochs, item_norms=True
        ),
        "plain loop + fused Adam": lambda: plain_loop_steps_per_s(cfg, warmup, epochs, fused=True),
        "gradwatch": lambda: stack_steps_per_s(cfg, warmup, epochs),
        "gradwatch, grad norms every step": lambda: stack_steps_per_s(every, warmup, epochs),
        "gradwatch, logging every 50 steps": lambda: stack_steps_per_s(every_50, warmup, epochs),
        "gradwatch, logging every 5 steps": lambda: stack_steps_per_s(every_5, warmup, epochs),
        "gradwatch, progress bar": lambda: hidden_output(stack_steps_per_s, bar, warmup, epochs),
        "gradwatch, Lightning's progress bar": lambda: hidden_output(
            stack_steps_per_s, lightning_bar, warmup, epochs
        ),
        "gradwatch, no checkpoint": lambda: stack_steps_per_s(no_checkpoint, warmup, epochs),
        "Lightning alone": lambda: stack_steps_per_s(bare, warmup, epochs),
    }
    notes = {
        "plain loop": "DataLoader(TensorDataset), shuffle",
        "gradwatch": "Hydra config, Trainer.fit, default callbacks + logger, no val",
        "gradwatch, no checkpoint": "default callbacks minus ModelCheckpoint",
        "gradwatch, logging every 50 steps": "Lightning's default cadence "
        f"(ours: {cfg.trainer.log_every_n_steps})",
        "gradwatch, logging every 5 steps": "our cadence before 2026-11-30",
        "Lightning alone": "no callbacks, logger or checkpoint",
        "gradwatch, progress bar": "as `make train` runs it, with the bar (not shown)",
        "gradwatch, Lightning's progress bar": "its RichProgressBar, updated every batch",
    }
    variants = {k: v for k, v in variants.items() if only is None or k in only}
    compile_note = None
    if workload == "residual" and not quick:
        compile_note = compile_works()
        if compile_note is None:
            variants["plain loop, torch.compile"] = lambda: plain_loop_steps_per_s(
                cfg, warmup, epochs, compiled=True
            )
    rounds = interleaved(variants, repeats)
    rows = rows_against(GROUP, rounds, "plain loop", "steps/s", repeats, f"{workload}: ", notes)
    if compile_note:
        rows.append(
            Row(GROUP, f"{workload}: plain loop, torch.compile", 0.0, "steps/s", note=compile_note)
        )
    return rows


def flush_denormal_rows(repeats: int, quick: bool, log_dir: str) -> list[Row]:
    """Our stack with and without ``flush_denormal`` on a 20-layer sigmoid MLP.

    The 10-layer net makes no subnormal floats on digits; at depth 20 the input-side
    gradients are ~1e-19, so Adam's squared-gradient average falls below 1.2e-38.
    """
    warmup, epochs = 1, 2 if quick else 8
    name = "sigmoid depth 20: gradwatch"
    deep = ("model.net.depth=20",)
    cfgs = {
        name: compose_config("sigmoid", log_dir, *deep),
        f"{name}, flush_denormal": compose_config("sigmoid", log_dir, *deep, "flush_denormal=true"),
    }
    variants = {k: (lambda c=c: stack_steps_per_s(c, warmup, epochs)) for k, c in cfgs.items()}
    return rows_against(GROUP, interleaved(variants, repeats), name, "steps/s", repeats)


def nvml_probe_rows(repeats: int, probe_dropped: bool) -> list[Row]:
    """A fused Adam step on the 10-layer sigmoid MLP's parameters, with the environment
    ``import lightning`` leaves (``PYTORCH_NVML_BASED_CUDA_CHECK=1``) and as
    ``gradwatch.recipe.build_trainer`` leaves it where NVML is missing."""
    net = nn.Sequential(*(nn.Linear(128, 128) for _ in range(10)))
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-9, fused=True)
    name, probed = "Adam step", "Adam step, NVML probed"

    def timed(probe: bool) -> float:
        with mock.patch.dict(os.environ, {NVML_CHECK: "1"} if probe else {}):
            return 100 / median_time(lambda: [optimizer.step() for _ in range(100)], 5)

    if not probe_dropped:  # torch counts GPUs through NVML here (or has no CUDA): one row
        return [Row(GROUP, name, timed(False), "steps/s", repeats=5)]
    steps = interleaved({name: lambda: timed(False), probed: lambda: timed(True)}, repeats)
    notes = {probed: "as after `import lightning` on a machine without NVIDIA's driver"}
    return rows_against(GROUP, steps, name, "steps/s", repeats, notes=notes)


def run(repeats: int, quick: bool) -> list[Row]:
    # The plain loop as a script that never imports Lightning runs it: without the failing
    # NVML probe Lightning's import switches on (our stack drops it in build_trainer).
    probe_dropped = skip_missing_nvml()
    with tempfile.TemporaryDirectory(prefix="gradwatch-bench-") as log_dir, quiet():
        write_mnist(Path(log_dir, "data"), n_train=MNIST_IMAGES, n_test=10_000)
        rows = [
            row for workload in WORKLOADS for row in network_rows(workload, repeats, quick, log_dir)
        ]
        rows += flush_denormal_rows(repeats, quick, log_dir)
        return rows + nvml_probe_rows(repeats, probe_dropped)
