"""Base datamodule for datasets small enough to hold as tensors."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch

from gradwatch.data.batches import TensorBatches
from gradwatch.registry import choose, require_positive

#: How batches are scaled on the fly: per-channel standardization with the training split's
#: statistics, division by the largest pixel value (torchvision's ``ToTensor``, [0, 1]), or
#: nothing.
NORMALIZATIONS = ("standard", "unit", "none")

_STATS_CHUNK = 8192  # rows per chunk when computing statistics of a uint8 dataset


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (unbiased) std of ``x`` shaped ``(N, C, ...)`` or ``(N, F)``.

    Computed in float64 over chunks, so a uint8 dataset is never copied whole as floats.
    Returned shaped to broadcast against a batch: ``(1, C, 1, ...)``.
    """
    dims = [0, *range(2, x.dim())]
    count = x.numel() // x.shape[1]
    if x.dtype == torch.uint8:  # exact and fast: a 256-bin histogram per channel
        values = torch.arange(256, dtype=torch.float64)
        hist = torch.stack(
            [torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(x.shape[1])]
        ).to(torch.float64)
        total, squares = hist @ values, hist @ values.square()
    else:
        total = torch.zeros(x.shape[1], dtype=torch.float64)
        squares = torch.zeros_like(total)
        for start in range(0, len(x), _STATS_CHUNK):
            chunk = x[start : start + _STATS_CHUNK].to(torch.float64)
            total += chunk.sum(dim=dims)
            squares += chunk.square().sum(dim=dims)
    mean = total / count
    var = (squares - count * mean.square()) / max(count - 1, 1)
    shape = (1, x.shape[1], *[1] * (x.dim() - 2))
    return mean.view(shape).float(), var.clamp_min(0).sqrt().clamp_min(1e-8).view(shape).float()


class InMemoryDataModule(L.LightningDataModule):
    """Holds a dataset as tensors in its stored dtype (uint8 images stay uint8), split
    deterministically and batched by index slicing.

    Batches are normalized on the fly, as one tensor op per batch, in
    :meth:`on_after_batch_transfer` (Lightning calls it after moving the batch to the
    device, so the arithmetic runs on the GPU when there is one). Training batches first go
    through :meth:`augment_batch`, which subclasses override (the default does nothing).

    Subclasses implement :meth:`load`, returning ``(x, y)`` for the whole labelled pool
    (``x`` shaped ``(N, *input_shape)``) and, when the dataset has an official test split,
    ``(x_test, y_test)``; otherwise the test set is carved from the pool. Statistics come
    from the training split only.

    Args:
        batch_size: examples per training step.
        val_fraction, test_fraction: share of the pool held out (test only when the dataset
            has no official test split).
        seed: fixes the split and the shuffling order.
        normalize: ``standard`` (per-channel mean/std of the training split), ``unit``
            (divide by :attr:`pixel_max`, like torchvision's ``ToTensor``) or ``none``.
        on_device: hold the whole dataset on the trainer's device (e.g. the GPU) so batches
            are sliced there and never cross the bus; no effect on CPU.
    """

    #: Shape of one example, e.g. ``(1, 8, 8)``; known before :meth:`setup`.
    input_shape: tuple[int, ...] = ()
    num_classes: int = 0
    #: The largest raw pixel value, for ``normalize="unit"``.
    pixel_max: float = 255.0

    def __init__(
        self,
        batch_size: int = 128,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        normalize: str = "standard",
        on_device: bool = False,
    ) -> None:
        super().__init__()
        require_positive("data.batch_size", batch_size)
        for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= fraction < 1:
                raise ValueError(f"data.{name} must be in [0, 1), got {fraction!r}.")
        if val_fraction + test_fraction >= 1:
            raise ValueError("data.val_fraction + data.test_fraction must be below 1.")
        choose("data.normalize", normalize, dict.fromkeys(NORMALIZATIONS))
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.normalize = normalize
        self.on_device = bool(on_device)
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.mean = torch.zeros(())
        self.std = torch.ones(())
        self._stats_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def load(
        self,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self._split(*self.load())
        if self.on_device and self.trainer is not None:
            self._move(self.trainer.strategy.root_device)

    def _split(
        self,
        pool: tuple[torch.Tensor, torch.Tensor],
        official_test: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> None:
        x, y = pool
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(x), generator=generator)
        n_val = round(len(x) * self.val_fraction)
        n_test = 0 if official_test is not None else round(len(x) * self.test_fraction)
        test_idx = order[:n_test]
        val_idx = order[n_test : n_test + n_val]
        train_idx = order[n_test + n_val :]
        x_test, y_test = official_test if official_test is not None else (x[test_idx], y[test_idx])
        self.splits = {
            "train": (x[train_idx], y[train_idx]),
            "val": (x[val_idx], y[val_idx]),
            "test": (x_test, y_test),
        }
        if self.normalize == "standard":
            self.mean, self.std = channel_stats(self.splits["train"][0])
        elif self.normalize == "unit":
            self.mean, self.std = torch.zeros(()), torch.tensor(float(self.pixel_max))
        self._stats_on.clear()

    def _move(self, device: torch.device) -> None:
        self.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in self.splits.items()}

    # -- state in checkpoints --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The global random number generators (torch CPU and current CUDA device, NumPy,
        Python) as plain data: restored on resume, so anything drawing from them during
        training (dropout, augmentation, a user's callback) continues as if never stopped.
        The batch order needs nothing here: it is a function of (seed, epoch)."""
        keys = np.random.get_state(legacy=True)
        state: dict[str, Any] = {
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": (keys[0], torch.from_numpy(keys[1].astype(np.int64)), *keys[2:]),
            "python_rng": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torch_rng" in state_dict:
            torch.set_rng_state(state_dict["torch_rng"])
        if "numpy_rng" in state_dict:
            name, keys, *rest = state_dict["numpy_rng"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        if "python_rng" in state_dict:
            version, internal, gauss = state_dict["python_rng"]
            random.setstate((version, tuple(internal), gauss))
        if "cuda_rng" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state(state_dict["cuda_rng"])

    # -- per batch ---------------------------------------------------------------------
    def augment_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Training-set augmentation of a raw batch, as tensor ops; the default is none."""
        return x

    def normalize_batch(self, x: torch.Tensor) -> torch.Tensor:
        """A raw batch (any dtype) as normalized float32, on the batch's device."""
        if x.device not in self._stats_on:
            self._stats_on[x.device] = (self.mean.to(x.device), self.std.to(x.device))
        mean, std = self._stats_on[x.device]
        # One new tensor (never x itself, which the caller may keep), normalized in place.
        return x.to(torch.float32, copy=True).sub_(mean).div_(std)

    def prepare_batch(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """What the model sees: augmented (training only), then normalized."""
        return self.normalize_batch(self.augment_batch(x) if train else x)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        training = self.trainer is not None and self.trainer.training
        return self.prepare_batch(x, train=training), y

    # -- loaders -----------------------------------------------------------------------
    def _batches(self, split: str, shuffle: bool) -> TensorBatches:
        x, y = self.splits[split]
        return TensorBatches(x, y, self.batch_size, shuffle=shuffle, seed=self.seed)

    def train_dataloader(self) -> TensorBatches:
        return self._batches("train", shuffle=True)

    def val_dataloader(self) -> TensorBatches:
        return self._batches("val", shuffle=False)

    def test_dataloader(self) -> TensorBatches:
        return self._batches("test", shuffle=False)
