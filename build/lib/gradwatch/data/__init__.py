"""In-memory datamodules: data held as tensors and batched by slicing."""

from gradwatch.data.batches import TensorBatches
from gradwatch.data.digits import DigitsDataModule
from gradwatch.data.in_memory import InMemoryDataModule
from gradwatch.data.vision import (
    CIFAR10DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    VisionDataModule,
)
from gradwatch.data.vision_files import CorruptDatasetError, DatasetNotFoundError

__all__ = [
    "CIFAR10DataModule",
    "CorruptDatasetError",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "InMemoryDataModule",
    "MNISTDataModule",
    "TensorBatches",
    "VisionDataModule",
]
