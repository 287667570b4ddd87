"""Precision presets: the gradient callback reads finite, unscaled gradients in each."""

from __future__ import annotations

import math

import pytest
import torch

from gradwatch.plots import read_grad_norms
from gradwatch.recipe import train
from tests.runs import compose_run, torch_threads_kept

FAST = ["experiment=relu", "debug=fast", "logger=none", "test=false", "torch_threads=1"]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _step0_norms(tmp_path, name: str, *overrides: str) -> dict[str, float]:
    run_dir = tmp_path / name
    with torch_threads_kept():
        summary = train(compose_run(run_dir, tmp_path, *FAST, *overrides))
    assert summary["status"] == "completed" and summary["steps"] == 3
    series = read_grad_norms(run_dir / "grad_norms.csv")
    assert all(math.isfinite(v) and v > 0 for s in series for v in s.norms)
    return {s.name: s.norms[0] for s in series}


def test_bf16_mixed_on_cpu_trains_and_logs_finite_norms_close_to_fp32(tmp_path):
    fp32 = _step0_norms(tmp_path, "fp32", "trainer=cpu", "trainer.precision=32-true")
    bf16 = _step0_norms(tmp_path, "bf16", "trainer=cpu", "trainer.precision=bf16-mixed")
    assert bf16.keys() == fp32.keys()
    for layer, norm in fp32.items():  # bf16 keeps ~3 significant digits
        assert bf16[layer] == pytest.approx(norm, rel=0.1), layer


@CUDA
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_gpu_mixed_precision_norms_are_unscaled(tmp_path, precision):
    fp32 = _step0_norms(tmp_path, "fp32", "trainer=gpu", "trainer.precision=32-true")
    mixed = _step0_norms(tmp_path, precision, "trainer=gpu", f"trainer.precision={precision}")
    for layer, norm in fp32.items():  # a GradScaler factor (65536 at first) would show here
        assert mixed[layer] == pytest.approx(norm, rel=0.1), layer
