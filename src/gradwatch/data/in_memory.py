"""Base datamodule for datasets small enough to hold as tensors."""

from __future__ import annotations

import lightning as L
import torch

from gradwatch.data.batches import TensorBatches
from gradwatch.registry import require_positive


class InMemoryDataModule(L.LightningDataModule):
    """Holds a dataset as float tensors, standardized once, split deterministically.

    Subclasses implement :meth:`load`, returning ``(x, y)`` for the whole labelled pool
    (``x`` shaped ``(N, *input_shape)``) and, when the dataset has an official test split,
    ``(x_test, y_test)``; otherwise the test set is carved from the pool. Standardization
    uses the training split's per-channel mean and std only.

    Args:
        batch_size: examples per training step.
        val_fraction, test_fraction: share of the pool held out (test only when the dataset
            has no official test split).
        seed: fixes the split and the shuffling order.
    """

    #: Shape of one example, e.g. ``(1, 8, 8)``; known before :meth:`setup`.
    input_shape: tuple[int, ...] = ()
    num_classes: int = 0

    def __init__(
        self,
        batch_size: int = 128,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
    ) -> None:
        super().__init__()
        require_positive("data.batch_size", batch_size)
        for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= fraction < 1:
                raise ValueError(f"data.{name} must be in [0, 1), got {fraction!r}.")
        if val_fraction + test_fraction >= 1:
            raise ValueError("data.val_fraction + data.test_fraction must be below 1.")
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def load(
        self,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        (x, y), official_test = self.load()
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(x), generator=generator)
        n_val = round(len(x) * self.val_fraction)
        n_test = 0 if official_test is not None else round(len(x) * self.test_fraction)
        test_idx, val_idx, train_idx = order[:n_test], order[n_test : n_test + n_val], order[
            n_test + n_val :
        ]
        x_train = x[train_idx].float()
        channel_dims = [0, *range(2, x_train.dim())]
        mean = x_train.mean(dim=channel_dims, keepdim=True)
        std = x_train.std(dim=channel_dims, keepdim=True).clamp_min(1e-8)
        x_test, y_test = official_test if official_test is not None else (x[test_idx], y[test_idx])
        self.splits = {
            "train": ((x_train - mean) / std, y[train_idx]),
            "val": ((x[val_idx].float() - mean) / std, y[val_idx]),
            "test": ((x_test.float() - mean) / std, y_test),
        }

    def _batches(self, split: str, shuffle: bool) -> TensorBatches:
        x, y = self.splits[split]
        return TensorBatches(x, y, self.batch_size, shuffle=shuffle, seed=self.seed)

    def train_dataloader(self) -> TensorBatches:
        return self._batches("train", shuffle=True)

    def val_dataloader(self) -> TensorBatches:
        return self._batches("val", shuffle=False)

    def test_dataloader(self) -> TensorBatches:
        return self._batches("test", shuffle=False)
