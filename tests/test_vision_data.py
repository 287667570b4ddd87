"""MNIST / Fashion-MNIST / CIFAR-10 through torchvision's classes, on files in the real formats."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace
from urllib.error import URLError

import pytest
import torch
from torchvision import datasets

from gradwatch.data import (
    CIFAR10DataModule,
    CorruptDatasetError,
    DatasetNotFoundError,
    FashionMNISTDataModule,
    MNISTDataModule,
)
from gradwatch.data.augment import random_crop, random_hflip
from gradwatch.data.vision_files import CACHE_FILE
from tests.fake_vision import label_of, write_cifar10, write_mnist


def _pixel_index(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)[:, 0].long()


def test_mnist_loads_through_torchvision_with_splits_dtypes_and_labels(tmp_path):
    write_mnist(tmp_path, n_train=200, n_test=50)
    dm = MNISTDataModule(data_dir=tmp_path, download=False, val_fraction=0.1, seed=1)
    dm.prepare_data()
    dm.setup()
    sizes = {split: len(y) for split, (_, y) in dm.splits.items()}
    assert sizes == {"train": 180, "val": 20, "test": 50}
    for x, y in dm.splits.values():
        assert x.dtype == torch.uint8 and x.shape[1:] == dm.input_shape == (1, 28, 28)
        assert y.dtype == torch.long
        torch.testing.assert_close(y, torch.as_tensor(label_of(_pixel_index(x).numpy())))
    # train and val together are exactly the 200 training images, none twice
    pool = torch.cat([_pixel_index(dm.splits["train"][0]), _pixel_index(dm.splits["val"][0])])
    assert sorted(pool.tolist()) == list(range(200))
    assert sorted(_pixel_index(dm.splits["test"][0]).tolist()) == list(range(100, 150))


def test_split_follows_the_seed(tmp_path):
    write_mnist(tmp_path)
    val = {}
    for seed in (1, 1, 2):
        dm = MNISTDataModule(data_dir=tmp_path, download=False, seed=seed)
        dm.setup()
        val.setdefault(seed, []).append(_pixel_index(dm.splits["val"][0]))
    torch.testing.assert_close(val[1][0], val[1][1])
    assert not torch.equal(val[1][0], val[2][0])


def test_batches_are_normalized_on_the_fly_with_training_statistics(tmp_path):
    write_mnist(tmp_path)
    dm = MNISTDataModule(data_dir=tmp_path, download=False)
    dm.setup()
    x_train = dm.normalize_batch(dm.splits["train"][0])
    assert x_train.dtype == torch.float32
    assert x_train.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert x_train.std().item() == pytest.approx(1.0, abs=1e-3)
    raw, y = next(iter(dm.train_dataloader()))
    assert raw.dtype == torch.uint8 and len(raw) == dm.batch_size
    x, y_out = dm.on_after_batch_transfer((raw, y), 0)
    torch.testing.assert_close(x, (raw.float() - dm.mean) / dm.std)
    assert y_out is y

    unit = MNISTDataModule(data_dir=tmp_path, download=False, normalize="unit")
    unit.setup()
    raw = unit.splits["train"][0]
    torch.testing.assert_close(unit.normalize_batch(raw), raw.float() / 255)


def test_second_setup_reads_the_cache_and_does_not_decode(tmp_path, monkeypatch):
    raw_dir = write_mnist(tmp_path)
    first = MNISTDataModule(data_dir=tmp_path, download=False)
    first.setup()
    assert (raw_dir / CACHE_FILE).is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("torchvision decoded the files again")

    monkeypatch.setattr(datasets.MNIST, "__init__", no_decoding)
    second = MNISTDataModule(data_dir=tmp_path, download=False)
    second.prepare_data()
    second.setup()
    for split in ("train", "val", "test"):
        torch.testing.assert_close(second.splits[split][0], first.splits[split][0])
        torch.testing.assert_close(second.splits[split][1], first.splits[split][1])


def test_a_changed_raw_file_invalidates_the_cache(tmp_path):
    raw_dir = write_mnist(tmp_path, n_train=200)
    MNISTDataModule(data_dir=tmp_path, download=False).setup()
    write_mnist(tmp_path, n_train=120)
    dm = MNISTDataModule(data_dir=tmp_path, download=False, val_fraction=0.0)
    dm.setup()
    assert len(dm.splits["train"][1]) == 120
    assert (raw_dir / CACHE_FILE).is_file()


def test_offline_without_files_fails_fast_with_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    dm = MNISTDataModule(data_dir=tmp_path, download=True)
    with pytest.raises(DatasetNotFoundError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert f"MNIST is not in {tmp_path / 'MNIST' / 'raw'}" in message
    assert "Network is unreachable" in message
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "data=digits"):
        assert name in message


def test_a_failing_download_is_reported_once_clearly(tmp_path, monkeypatch):
    from gradwatch.data import vision_files

    attempts = []

    def refuse(url, *args, **kwargs):
        attempts.append(url)
        raise URLError("connection refused")

    monkeypatch.setattr(vision_files, "_reachable", lambda url, timeout: None)
    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", refuse)
    with pytest.raises(DatasetNotFoundError, match="Fashion-MNIST is not in .*connection refused"):
        FashionMNISTDataModule(data_dir=tmp_path, download=True).setup()
    assert attempts  # torchvision tried, and its failure became our error


def test_no_files_and_download_off(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cannot be downloaded \(data.download=false\)"):
        CIFAR10DataModule(data_dir=tmp_path, download=False).setup()


def test_a_truncated_idx_file_is_named(tmp_path):
    raw_dir = write_mnist(tmp_path)
    images = raw_dir / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(CorruptDatasetError, match="train-images-idx3-ubyte is truncated") as err:
        MNISTDataModule(data_dir=tmp_path, download=False).setup()
    assert str(images) in str(err.value)


def test_cifar10_loads_through_torchvision(tmp_path, monkeypatch):
    write_cifar10(tmp_path, monkeypatch, per_batch=20)
    dm = CIFAR10DataModule(data_dir=tmp_path, download=False, val_fraction=0.2)
    dm.setup()
    assert {k: len(y) for k, (_, y) in dm.splits.items()} == {"train": 80, "val": 20, "test": 20}
    x, y = dm.splits["train"]
    assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32) == dm.input_shape
    torch.testing.assert_close(y, torch.as_tensor(label_of(_pixel_index(x).numpy())))
    assert dm.mean.shape == (1, 3, 1, 1)
    normalized = dm.normalize_batch(x)
    torch.testing.assert_close(normalized.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)


def test_a_corrupt_cifar_batch_is_named(tmp_path, monkeypatch):
    folder = write_cifar10(tmp_path, monkeypatch)
    batch = folder / "data_batch_3"
    data = bytearray(batch.read_bytes())
    data[-10] ^= 0xFF
    batch.write_bytes(bytes(data))
    with pytest.raises(CorruptDatasetError, match=f"{batch} is corrupt"):
        CIFAR10DataModule(data_dir=tmp_path, download=False).setup()


def test_augmentation_only_on_training_batches(tmp_path, monkeypatch):
    write_cifar10(tmp_path, monkeypatch)
    dm = CIFAR10DataModule(data_dir=tmp_path, download=False)
    dm.setup()
    raw, y = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    dm.trainer = SimpleNamespace(training=True)
    train_x, _ = dm.on_after_batch_transfer((raw, y), 0)
    dm.trainer = SimpleNamespace(training=False)
    eval_x, _ = dm.on_after_batch_transfer((raw, y), 0)
    assert train_x.shape == eval_x.shape == raw.shape and train_x.dtype == torch.float32
    torch.testing.assert_close(eval_x, dm.normalize_batch(raw))
    assert not torch.equal(train_x, eval_x)

    off = CIFAR10DataModule(data_dir=tmp_path, download=False, augment=False)
    off.setup()
    off.trainer = SimpleNamespace(training=True)
    torch.testing.assert_close(
        off.on_after_batch_transfer((raw, y), 0)[0], off.normalize_batch(raw)
    )


def test_each_augmented_image_is_a_padded_crop_or_its_mirror():
    torch.manual_seed(0)
    x = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = random_hflip(random_crop(x, padding=2))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for i in range(len(x)):
        windows = [
            (flip, padded[i, :, dy : dy + 8, dx : dx + 8])
            for dy in range(5)
            for dx in range(5)
            for flip in (False, True)
        ]
        matches = [f for f, w in windows if torch.equal(out[i], w.flip(-1) if f else w)]
        assert matches, f"example {i} is not a crop of its padded original"
        flips += matches[0]
    assert 0 < flips < len(x)


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown data.normalize 'zscore'. Valid choices"):
        MNISTDataModule(data_dir=tmp_path, normalize="zscore")
    with pytest.raises(ValueError, match="data.crop_padding must be an integer >= 0, got -1"):
        CIFAR10DataModule(data_dir=tmp_path, crop_padding=-1)


def test_input_shape_is_known_before_setup(tmp_path):
    assert MNISTDataModule(data_dir=tmp_path).input_shape == (1, 28, 28)
    assert FashionMNISTDataModule(data_dir=tmp_path).num_classes == 10
    assert CIFAR10DataModule(data_dir=Path(tmp_path)).input_shape == (3, 32, 32)


class _Probe(torch.nn.Module):
    """Records the batches a Trainer hands the model."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3 * 32 * 32, 10)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.linear(x.flatten(1))


def test_the_trainer_feeds_the_model_normalized_float_batches(tmp_path, monkeypatch):
    import lightning as L

    from gradwatch.module import ClassifierModule

    write_cifar10(tmp_path, monkeypatch)
    dm = CIFAR10DataModule(data_dir=tmp_path, download=False, batch_size=16, augment=False)
    probe = _Probe()
    trainer = L.Trainer(
        max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(ClassifierModule(probe, num_classes=10), datamodule=dm)
    first = probe.seen[0]
    assert first.dtype == torch.float32 and first.shape == (16, 3, 32, 32)
    raw = dm.splits["train"][0][dm.train_dataloader()._indices()[:16]]
    torch.testing.assert_close(first, dm.normalize_batch(raw))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_device_holds_the_dataset_on_the_gpu(tmp_path):
    write_mnist(tmp_path)
    dm = MNISTDataModule(data_dir=tmp_path, download=False, on_device=True)
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    dm.setup()
    assert all(x.is_cuda and y.is_cuda for x, y in dm.splits.values())
    x, _ = next(iter(dm.train_dataloader()))
    assert x.is_cuda and x.dtype == torch.uint8
    assert dm.normalize_batch(x).is_cuda
