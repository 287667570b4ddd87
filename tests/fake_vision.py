"""Small MNIST and CIFAR-10 written in their real on-disk formats, with known pixels and labels.

Example ``i`` carries its index in its first pixel (channel 0, row 0, column 0) and has the
label :func:`label_of` ``(i)``, so a test can check that labels survive the round trip.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from torchvision import datasets

MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                "ship", "truck"]  # fmt: skip


def label_of(index):
    return (index * 3 + 1) % 10


def _images(n: int, shape: tuple[int, ...], offset: int, seed: int) -> np.ndarray:
    images = np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    images.reshape(n, -1)[:, 0] = (np.arange(n) + offset) % 256
    return images


def write_mnist(root: Path, n_train: int = 200, n_test: int = 50, folder: str = "MNIST") -> Path:
    """IDX files as torchvision's MNIST (or FashionMNIST) reads them from ``root/folder/raw``."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for train, n, offset in ((True, n_train, 0), (False, n_test, 100)):
        images = _images(n, (28, 28), offset, seed=n + offset)
        labels = label_of(np.arange(n) + offset).astype(np.uint8)
        image_file, label_file = MNIST_FILES[train]
        header = b"\x00\x00\x08\x03" + struct.pack(">3I", n, 28, 28)
        (raw / image_file).write_bytes(header + images.tobytes())
        (raw / label_file).write_bytes(
            b"\x00\x00\x08\x01" + struct.pack(">I", n) + labels.tobytes()
        )
    return raw


def write_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch, per_batch: int = 20) -> Path:
    """``cifar-10-batches-py`` as the real archive unpacks it (pickled dicts of uint8 rows).

    torchvision checks every file against the MD5 of the real dataset, so the fake files'
    own MD5s are patched into the class for the test.
    """
    folder = root / datasets.CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        offset = 0 if name == "test_batch" else k * per_batch
        images = _images(per_batch, (3, 32, 32), offset, seed=k)
        entry = {
            "batch_label": name,
            "labels": [int(label_of(i + offset)) for i in range(per_batch)],
            "data": images.reshape(per_batch, 3072),
            "filenames": [f"img_{i + offset}.png" for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"label_names": CIFAR_LABELS, "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    cls = datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[n, md5(n)] for n in names[:5]])
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5("batches.meta")})
    return folder
