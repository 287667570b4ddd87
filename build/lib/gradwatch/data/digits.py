"""scikit-learn's bundled 8x8 handwritten digits: offline, 1,797 images, 10 classes."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from gradwatch.data.in_memory import InMemoryDataModule


class DigitsDataModule(InMemoryDataModule):
    """The UCI optical digits shipped inside scikit-learn: no download, ever."""

    input_shape = (1, 8, 8)
    num_classes = 10
    pixel_max = 16.0

    def load(self):
        digits = load_digits()
        x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1)
        y = torch.as_tensor(digits.target, dtype=torch.long)
        return (x, y), None
