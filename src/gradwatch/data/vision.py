"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision, held in memory as uint8 tensors.

torchvision reads (and, with ``download=True``, fetches) the raw files; the decoded tensors
are cached next to them (``gradwatch_uint8.pt``) so later runs skip decoding. Batches are
index slices normalized on the fly (see :class:`~gradwatch.data.InMemoryDataModule`); the
official test split is the test set and the validation set is carved from the training
files with the seed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from gradwatch.data import vision_files
from gradwatch.data.augment import random_crop, random_hflip
from gradwatch.data.in_memory import InMemoryDataModule
from gradwatch.data.vision_files import VisionFiles


class VisionDataModule(InMemoryDataModule):
    """A torchvision dataset decoded once into memory.

    Args:
        data_dir: the directory torchvision reads from and downloads to (its ``root``).
        download: fetch missing files; offline, a clear error names what is missing.
        batch_size, val_fraction, seed, normalize, on_device: see
            :class:`~gradwatch.data.InMemoryDataModule`.
    """

    files: ClassVar[VisionFiles]

    def __init__(
        self,
        data_dir: str | os.PathLike = "data",
        download: bool = True,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        seed: int = 0,
        normalize: str = "standard",
        on_device: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            val_fraction=val_fraction,
            test_fraction=0.0,
            seed=seed,
            normalize=normalize,
            on_device=on_device,
        )
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.download = bool(download)

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node: fetch, decode and cache there once.
        vision_files.load_cached(self.files, self.data_dir, self.download)

    def load(self):
        tensors = vision_files.load_cached(self.files, self.data_dir, self.download)
        return (tensors["train_x"], tensors["train_y"]), (tensors["test_x"], tensors["test_y"])


class MNISTDataModule(VisionDataModule):
    """MNIST: 60,000 + 10,000 handwritten digits, 28 x 28 grey."""

    files = vision_files.MNIST
    input_shape = (1, 28, 28)
    num_classes = 10


class FashionMNISTDataModule(VisionDataModule):
    """Fashion-MNIST: 60,000 + 10,000 clothing images, 28 x 28 grey, 10 classes."""

    files = vision_files.FASHION_MNIST
    input_shape = (1, 28, 28)
    num_classes = 10


class CIFAR10DataModule(VisionDataModule):
    """CIFAR-10: 50,000 + 10,000 colour images, 32 x 32, 10 classes.

    Training batches get a random crop after zero padding and a random horizontal flip,
    as batched tensor ops on the batch's device; validation and test batches never do.
    The draws come from a generator of their own, seeded with ``seed`` and saved in every
    checkpoint (:meth:`state_dict`), so a resumed run gets the crops and flips the
    uninterrupted run would have had.

    Args:
        augment: turn the training augmentation on or off.
        crop_padding: pixels of zero padding before the random crop (0: no crop).
        (others): see :class:`VisionDataModule`.
    """

    files = vision_files.CIFAR10
    input_shape = (3, 32, 32)
    num_classes = 10

    def __init__(
        self,
        data_dir: str | os.PathLike = "data",
        download: bool = True,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        seed: int = 0,
        normalize: str = "standard",
        on_device: bool = False,
        augment: bool = True,
        crop_padding: int = 4,
    ) -> None:
        super().__init__(data_dir, download, batch_size, val_fraction, seed, normalize, on_device)
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise ValueError(f"data.crop_padding must be an integer >= 0, got {crop_padding!r}.")
        self.augment = bool(augment)
        self.crop_padding = crop_padding
        self.augment_generator = torch.Generator().manual_seed(seed)

    def augment_batch(self, x: torch.Tensor) -> torch.Tensor:
        if not self.augment:
            return x
        crop = random_crop(x, self.crop_padding, generator=self.augment_generator)
        return random_hflip(crop, generator=self.augment_generator)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "augment_rng": self.augment_generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "augment_rng" in state_dict:
            self.augment_generator.set_state(state_dict["augment_rng"])
