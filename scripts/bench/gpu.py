"""Benchmark group ``gpu``: the same questions on a CUDA device; skipped without one.

One script for the day a GPU is at hand (``python -m scripts.bench --groups gpu``, or plain
``make bench``, which includes it and skips it on a CPU-only machine). For each precision,
``32-true``, ``16-mixed`` and ``bf16-mixed``:

- ``residual``: the 20-block residual MLP on digits with ``trainer=gpu`` and the whole
  dataset on the device (``data.on_device=true``), our stack with its default callbacks
  and logger against the article's loop on the same GPU (data on the device too, under
  ``torch.autocast`` with a GradScaler for float16);
- ``resnet18``: torchvision's ResNet-18 on random 32x32 images, batch 32, the callback
  logging at every step (default mode, and gradients only) against no monitoring.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace

import torch

from scripts.bench import callback_cost, training
from scripts.bench.core import Row, interleaved, quiet, rows_against, with_ratios

GROUP = "gpu"
PRECISIONS = {"32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
VARIANTS = ("none", "gradwatch", "gradwatch_grads_only")


def training_rows(precision: str, repeats: int, quick: bool, log_dir: str, device: str):
    warmup, epochs, quick_epochs = training.WORKLOADS["residual"][2]
    epochs = quick_epochs if quick else epochs
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    cfg = training.compose_config(
        "residual",
        log_dir,
        f"trainer.accelerator={accelerator}",
        f"trainer.precision={precision}",
        "data.on_device=true",
    )
    amp = PRECISIONS[precision]
    plain = f"{precision} residual: plain loop"
    rounds = interleaved(
        {
            plain: lambda: training.plain_loop_steps_per_s(
                cfg, warmup, epochs, fused=True, device=device, amp=amp
            ),
            f"{precision} residual: gradwatch": lambda: training.stack_steps_per_s(
                cfg, warmup, epochs
            ),
        },
        repeats,
    )
    return rows_against(GROUP, rounds, plain, "steps/s", repeats)


def resnet_rows(precision: str, repeats: int, quick: bool, root: str, accelerator: str):
    steps = 12 if quick else 50
    rate = lambda variant: callback_cost.resnet_rate(  # noqa: E731
        variant, steps, root, accelerator=accelerator, precision=precision
    )
    rate("none")  # warm-up: kernels, allocator
    rates = interleaved({v: lambda v=v: rate(v) for v in VARIANTS}, repeats)
    return rows_against(GROUP, rates, "none", "steps/s", repeats, f"{precision} resnet18/")


def rows(repeats: int, quick: bool, device: str, precisions=tuple(PRECISIONS)) -> list[Row]:
    """Every row on ``device`` (``cuda`` normally; ``cpu`` to check the group's code)."""
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    out: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gradwatch-gpu-") as tmp, quiet():
        for precision in precisions:
            out += training_rows(precision, repeats, quick, tmp, device)
            out += resnet_rows(precision, repeats, quick, tmp, accelerator)
    out = with_ratios(out)
    for row in out:
        if row.ratio and "resnet18" in row.name:
            row.note = f"overhead {100 * (1 / row.ratio - 1):+.1f}% of step time"
    return out


def run(repeats: int, quick: bool) -> list[Row]:
    if not torch.cuda.is_available():
        print("[bench] gpu: skipped, no CUDA device here", file=sys.stderr)
        return []
    name = torch.cuda.get_device_name(0)
    return [replace(r, note=f"{name}; {r.note}") for r in rows(repeats, quick, "cuda")]
