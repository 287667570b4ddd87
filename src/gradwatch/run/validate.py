"""Checks on the composed config that fail fast, before anything is built or written.

Names and sizes of the network and the data are checked where they are used (the
registries, ``MLP``, the datamodules); this module covers what no constructor sees in time.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from gradwatch.registry import require_positive

_CUDA_ACCELERATORS = {"gpu", "cuda"}
_CPU_CHOICES = "trainer=default (accelerator auto), trainer=cpu, or trainer=ddp_cpu"


MAX_SEED = 2**32 - 1  # what NumPy accepts


def check_seed(seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}.")


def check_learning_rate(cfg: DictConfig) -> None:
    optimizer = cfg.get("model", {}).get("optimizer")
    if optimizer is not None and "lr" in optimizer:
        require_positive("model.optimizer.lr", optimizer.lr, float)


def check_accelerator(trainer: DictConfig) -> None:
    """A GPU preset on a machine without a usable GPU gets a message, not a backend trace."""
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    if accelerator in _CUDA_ACCELERATORS and not torch.cuda.is_available():
        raise ValueError(
            f"trainer.accelerator={accelerator!r} needs a CUDA GPU, but none is visible "
            "(torch.cuda.is_available() is False: no GPU, no driver, or a CPU-only torch build). "
            f"Use {_CPU_CHOICES}; trainer=gpu and trainer=ddp are for CUDA machines."
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"trainer.accelerator='mps' needs an Apple-silicon GPU, which this machine lacks. "
            f"Use {_CPU_CHOICES}."
        )


def validate_config(cfg: DictConfig) -> None:
    """Raise a ValueError naming the bad value and what would be valid."""
    check_seed(cfg.get("seed"))
    check_learning_rate(cfg)
    check_accelerator(cfg.trainer)
