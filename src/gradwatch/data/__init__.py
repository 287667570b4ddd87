"""In-memory datamodules: data held as tensors and batched by slicing."""

from gradwatch.data.batches import TensorBatches
from gradwatch.data.digits import DigitsDataModule
from gradwatch.data.in_memory import InMemoryDataModule

__all__ = ["DigitsDataModule", "InMemoryDataModule", "TensorBatches"]
