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


def test_a_run_gets_its_own_named_directory_which_a_resume_continues(tmp_path):
    logger = BatchedTensorBoardLogger(tmp_path, name="tb", run_name="relu")
    logger.log_metrics({"grad_norm/net.0": 0.5}, step=0)
    logger.finalize("success")
    assert logger.log_dir == str(tmp_path / "tb" / "relu")  # no Hydra: no overrides to add
    again = BatchedTensorBoardLogger(tmp_path, name="tb", run_name="relu model.net.depth=3")
    assert again.log_dir == logger.log_dir


def test_log10_companions_read_back_beside_the_values(tmp_path):
    logger = BatchedTensorBoardLogger(tmp_path, name="tb", version="")
    logger.log_metrics(
        {
            "grad_norm/net.0": 1e-8,
            "opt1/update_ratio/net.0": 1e-3,
            "weight_norm/net.0": 4.0,
            "grad_norm/net.2": 0.0,
        },
        step=0,
    )
    logger.finalize("success")
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = {tag: events.Scalars(tag)[0].value for tag in events.Tags()["scalars"]}
    assert scalars["log10_grad_norm/net.0"] == pytest.approx(-8)
    assert scalars["opt1/log10_update_ratio/net.0"] == pytest.approx(-3)
    assert "log10_weight_norm/net.0" not in scalars  # not asked for
    assert "log10_grad_norm/net.2" not in scalars  # log10(0) has no value


@pytest.mark.parametrize(
    ("tag", "is_layer"),
    [
        ("grad_norm/net.network.0", True),
        ("opt1/grad_norm/net.network.0", True),
        ("grad_norm/net.total_block.0", True),
        ("grad_norm/total", False),
        ("grad_norm/first_last_ratio", False),
        ("grad_norm/clipped_total", False),
        ("grad_norm/amp_skipped", False),
        ("grad_norm/total/opt1", False),
        ("grad_norm/total_optimizer1", False),
        ("log10_grad_norm/net.network.0", False),
        ("weight_norm/net.network.0", False),
    ],
)
def test_the_per_layer_chart_matches_layers_not_aggregates(tag, is_layer):
    """The regex the TensorBoard server applies (``re.match``) to find a chart's tags."""
    import re

    from gradwatch.loggers.tensorboard_plugins import per_layer

    assert bool(re.match(per_layer("grad_norm"), tag)) is is_layer


def test_save_flushes_at_most_every_few_seconds_and_finalize_always(tmp_path, monkeypatch):
    """Lightning calls save() on every logging step; a flush each time costs file-system
    round trips, so flushes are spaced by flush_every_s, and nothing is lost at the end."""
    logger = BatchedTensorBoardLogger(str(tmp_path), name="tb", version="")
    flushes = []
    writer = logger.experiment
    real_flush = writer.flush
    monkeypatch.setattr(writer, "flush", lambda: flushes.append(1) or real_flush())
    now = [100.0]
    monkeypatch.setattr("gradwatch.loggers.tensorboard.time.monotonic", lambda: now[0])
    for step in range(10):
        logger.log_metrics({"grad_norm/a": float(step + 1)}, step=step)
        logger.save()
        now[0] += 1.0  # a logging step a second: 10 s in all
    assert len(flushes) == 2  # at 100 s and 105 s, with flush_every_s = 5
    assert (tmp_path / "tb" / "hparams.yaml").exists()  # the first save writes it
    logger.finalize("success")
    assert len(flushes) >= 3
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("grad_norm/a")] == [float(s + 1) for s in range(10)]
