"""Benchmark group ``data``: one epoch of MNIST-shaped batches, our pipeline vs the article's.

The benchmark writes 60,000 random 28 x 28 images (and labels) as real IDX files into a
temporary directory, then times one epoch of shuffled batches of 128, batches only, no model:

- baseline: torchvision's ``MNIST`` with ``ToTensor`` through a standard ``DataLoader``
  (the article's ``train_and_monitor_gradients``);
- ours: ``MNISTDataModule``'s uint8 tensors, sliced by ``TensorBatches`` and normalized as
  one tensor op per batch (what ``on_after_batch_transfer`` does in training).

It also times getting the dataset into memory: torchvision decoding the IDX files vs our
datamodule's whole ``setup`` from its uint8 cache (reading it, splitting, channel statistics).
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from gradwatch.data import MNISTDataModule
from scripts.bench.core import Row, median_time

GROUP = "data"
BATCH_SIZE = 128
BASELINE_EPOCH = "torchvision MNIST + ToTensor + DataLoader: epoch"


def write_idx(raw: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """MNIST's four files, uncompressed, as torchvision reads them from ``MNIST/raw``."""
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        header = b"\x00\x00\x08\x03" + struct.pack(">3I", n, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        label_header = b"\x00\x00\x08\x01" + struct.pack(">I", n)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(label_header + labels.tobytes())


def _epoch(batches, prepare=None) -> int:
    count = 0
    for x, _ in batches:
        if prepare is not None:
            x = prepare(x)
        count += len(x)
    return count


def run(repeats: int = 3, quick: bool = False) -> list[Row]:
    n_train = 12_000 if quick else 60_000
    with tempfile.TemporaryDirectory(prefix="gradwatch-bench-data-") as tmp:
        root = Path(tmp)
        write_idx(root / "MNIST" / "raw", n_train, n_test=1_000)

        # Getting the data into memory.
        def decode() -> tuple:
            return datasets.MNIST(root, train=True), datasets.MNIST(root, train=False)

        decode_s = median_time(decode, repeats, warmup=0)
        MNISTDataModule(data_dir=root, download=False).prepare_data()  # writes the cache

        def setup_from_cache() -> MNISTDataModule:
            dm = MNISTDataModule(data_dir=root, download=False, val_fraction=0.0)
            dm.setup()
            return dm

        cached_s = median_time(setup_from_cache, repeats)
        dm = setup_from_cache()

        # One epoch of batches.
        baseline = DataLoader(
            datasets.MNIST(root, train=True, transform=transforms.ToTensor()),
            batch_size=BATCH_SIZE,
            shuffle=True,
        )
        baseline_s = median_time(lambda: _epoch(baseline), repeats, warmup=0)
        ours = dm.train_dataloader()

        def our_epoch() -> int:
            ours.set_epoch(ours.epoch + 1)  # a fresh shuffle each epoch, as in training
            return _epoch(ours, lambda x: dm.prepare_batch(x, train=True))

        assert our_epoch() == _epoch(baseline) == n_train
        ours_s = median_time(our_epoch, repeats)

    size = f"{n_train} x 28 x 28, batch {BATCH_SIZE}"
    epoch_base, epoch_ours = BASELINE_EPOCH, "gradwatch TensorBatches + normalize: epoch"
    load_base = "torchvision MNIST: decode IDX (train + test)"
    load_ours = "gradwatch setup: uint8 cache + split + stats"
    return [
        Row(GROUP, epoch_base, baseline_s, "s", repeats=repeats, note=size),
        Row(GROUP, epoch_ours, ours_s, "s", epoch_base, baseline_s / ours_s, repeats, size),
        Row(GROUP, load_base, decode_s, "s", repeats=repeats, note=size),
        Row(GROUP, load_ours, cached_s, "s", load_base, decode_s / cached_s, repeats, size),
    ]
