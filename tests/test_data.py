"""The in-memory datamodule: deterministic splits, standardization, batching by slicing."""

from __future__ import annotations

import pytest
import torch

from gradwatch.data import DigitsDataModule, TensorBatches


def test_digits_splits_are_deterministic_and_disjoint():
    a, b = DigitsDataModule(seed=3), DigitsDataModule(seed=3)
    a.setup(), b.setup()
    sizes = {k: len(v[1]) for k, v in a.splits.items()}
    assert sum(sizes.values()) == 1797
    assert sizes["val"] == round(1797 * 0.15) == sizes["test"]
    for split in ("train", "val", "test"):
        torch.testing.assert_close(a.splits[split][0], b.splits[split][0])
    c = DigitsDataModule(seed=4)
    c.setup()
    assert not torch.equal(a.splits["val"][1], c.splits["val"][1])


def test_standardized_with_training_statistics():
    dm = DigitsDataModule()
    dm.setup()
    raw, y = dm.splits["train"]
    x = dm.normalize_batch(raw)  # batches are standardized on the fly
    assert x.shape[1:] == dm.input_shape and x.dtype == torch.float32 and y.dtype == torch.long
    assert x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert x.std().item() == pytest.approx(1.0, abs=1e-3)


def test_batches_cover_the_epoch_and_reshuffle_per_epoch():
    x = torch.arange(10).float().unsqueeze(1)
    batches = TensorBatches(x, torch.arange(10), batch_size=4, shuffle=True, seed=0)
    assert len(batches) == 3
    first = torch.cat([xb for xb, _ in batches]).squeeze(1)
    assert sorted(first.tolist()) == list(range(10))
    assert [len(yb) for _, yb in batches] == [4, 4, 2]
    again = torch.cat([xb for xb, _ in batches]).squeeze(1)
    torch.testing.assert_close(first, again)  # same epoch, same order
    batches.set_epoch(1)
    assert not torch.equal(first, torch.cat([xb for xb, _ in batches]).squeeze(1))


def test_batches_keep_pairs_together_and_drop_last():
    x = torch.arange(10).float()
    batches = TensorBatches(x, torch.arange(10) * 2, batch_size=4, shuffle=True, drop_last=True)
    assert len(batches) == 2
    for xb, yb in batches:
        torch.testing.assert_close(yb, xb.long() * 2)


def test_bad_batch_size_is_refused():
    with pytest.raises(ValueError, match="data.batch_size must be a positive integer, got 0"):
        DigitsDataModule(batch_size=0)
