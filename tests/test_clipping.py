"""experiment=exploding: gradients explode without clipping; norm or value clipping trains."""

from __future__ import annotations

import math

import pytest

from gradwatch.plots import read_grad_norms
from gradwatch.recipe import train
from tests.runs import compose_run, torch_threads_kept

EIGHT_STEPS = [
    "experiment=exploding",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=8",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "test=false",
    "torch_threads=1",
]


def _run(tmp_path, name: str, *overrides: str) -> tuple[dict, list]:
    run_dir = tmp_path / name
    with torch_threads_kept():
        summary = train(compose_run(run_dir, tmp_path, *EIGHT_STEPS, *overrides))
    return summary, read_grad_norms(run_dir / "grad_norms.csv")


def test_without_clipping_the_gradients_explode_into_nan(tmp_path):
    summary, series = _run(tmp_path, "free")
    assert all(s.norms[0] > 1e2 for s in series)  # every layer, at step 0
    assert summary["diagnosis"] == "non-finite"


@pytest.mark.parametrize(
    "clipping",
    [
        ["trainer.gradient_clip_val=1.0"],
        ["trainer.gradient_clip_algorithm=value", "trainer.gradient_clip_val=0.1"],
    ],
)
def test_clipping_keeps_the_same_network_finite(tmp_path, clipping):
    summary, series = _run(tmp_path, "clipped", *clipping)
    # The callback measures before clipping: the same explosion at step 0 ...
    assert all(s.norms[0] > 1e2 for s in series)
    # ... but the steps stay bounded, so nothing overflows.
    assert summary["diagnosis"] != "non-finite" and summary["steps"] == 8
    assert all(math.isfinite(v) for s in series for v in s.norms)
