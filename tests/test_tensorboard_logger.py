"""BatchedTensorBoardLogger: one event per step, read back by TensorBoard as ordinary scalars."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gradwatch.loggers import BatchedTensorBoardLogger


def test_batched_scalars_read_back_like_add_scalar(tmp_path):
    logger = BatchedTensorBoardLogger(tmp_path, name="tb", version="")
    logger.log_metrics({"grad_norm/net.0": 0.5, "grad_norm/total": torch.tensor(2.0)}, step=0)
    logger.log_metrics({"grad_norm/net.0": 0.25, "pair": {"a": 1.0, "b": 2.0}}, step=3)
    logger.finalize("success")
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }
    assert scalars["grad_norm/net.0"] == [(0, 0.5), (3, 0.25)]
    assert scalars["grad_norm/total"] == [(0, pytest.approx(2.0))]
    # A dict value still goes through add_scalars (its own run directories), as in Lightning.
    assert any(path.name.startswith("pair_") for path in (tmp_path / "tb").iterdir())
