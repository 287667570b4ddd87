"""ModelCheckpoint(min_interval_s): tiny epochs pay for a checkpoint every few seconds, and
the end of fit is always saved."""

from __future__ import annotations

import datetime

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from gradwatch.run.checkpoint_io import ModelCheckpoint


def saved_steps(tmp_path, interval, **kwargs) -> list[int]:
    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path, filename="{step}", save_top_k=-1, min_interval_s=interval, **kwargs
    )
    trainer = L.Trainer(
        max_epochs=5,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoint],
        default_root_dir=tmp_path,
    )
    trainer.fit(BoringModel())
    return sorted(int(p.stem.split("=")[1]) for p in tmp_path.glob("step=*.ckpt"))


def test_every_epoch_without_an_interval(tmp_path):
    assert saved_steps(tmp_path, None) == [2, 4, 6, 8, 10]


def test_an_interval_skips_the_epochs_between_and_keeps_the_last(tmp_path):
    assert saved_steps(tmp_path, 3600) == [2, 10]  # the first save, and the end of fit


def test_a_negative_interval_is_refused():
    with pytest.raises(ValueError, match="min_interval_s must be >= 0 or null, got -1"):
        ModelCheckpoint(min_interval_s=-1)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"every_n_train_steps": 3}, [3, 6, 9]),
        ({"train_time_interval": datetime.timedelta(0)}, list(range(1, 11))),
    ],
)
def test_saves_by_step_or_by_time_still_happen(tmp_path, kwargs, expected):
    # The subclass skips Lightning's per-batch check only when neither is set.
    assert saved_steps(tmp_path, None, **kwargs) == expected


def test_state_key_is_lightnings_and_follows_its_settings(tmp_path):
    """The key names the callback's state in checkpoints: it must stay Lightning's own
    (resumes from checkpoints written without gradwatch) even though it is kept between calls."""
    from lightning.pytorch.callbacks import ModelCheckpoint as LightningCheckpoint

    settings = {"monitor": "val/loss", "mode": "max", "every_n_train_steps": 7}
    ours = ModelCheckpoint(dirpath=tmp_path, min_interval_s=10, **settings)
    assert ours.state_key == LightningCheckpoint(dirpath=tmp_path, **settings).state_key
    ours.monitor = "train/loss"
    assert (
        ours.state_key
        == LightningCheckpoint(dirpath=tmp_path, **{**settings, "monitor": "train/loss"}).state_key
    )
    hourly = datetime.timedelta(hours=1)
    timed = ModelCheckpoint(dirpath=tmp_path, train_time_interval=hourly)
    assert (
        timed.state_key
        == LightningCheckpoint(dirpath=tmp_path, train_time_interval=hourly).state_key
    )
