"""gradwatch.run.cuda_probe: no failing NVML dlopen in every optimizer step where NVML is
missing, and the same answer from torch.cuda.is_available() either way."""

from __future__ import annotations

import ctypes
import os
import warnings

import pytest
import torch

from gradwatch.recipe import build_trainer
from gradwatch.run.cuda_probe import NVML_CHECK, skip_missing_nvml


def _nvml_loads() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def _dlopens(fn, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many ``ctypes.CDLL`` loads ``fn()`` attempts."""
    calls = []
    real = ctypes.CDLL

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(ctypes, "CDLL", counting)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    return len(calls)


def _adam_step() -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    weight.grad = torch.ones(3)
    torch.optim.Adam([weight], fused=True).step()


@pytest.mark.skipif(not torch.backends.cuda.is_built(), reason="a CPU-only torch never asks NVML")
@pytest.mark.skipif(torch.version.hip is not None, reason="ROCm torch counts through amdsmi")
def test_this_machine(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(NVML_CHECK, "1")  # as `import lightning` leaves it
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # "" or -1: no NVML at all
    before = torch.cuda.is_available()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nvml_counts = torch.cuda._device_count_nvml() >= 0
    if nvml_counts:  # NVIDIA's driver answers: left as Lightning set it
        assert not skip_missing_nvml()
        assert os.environ[NVML_CHECK] == "1"
        assert torch.cuda.is_available() == before
        return
    if not _nvml_loads():  # a CPU machine: the step tried to load it
        assert _dlopens(_adam_step, monkeypatch) >= 1
    assert skip_missing_nvml()
    assert NVML_CHECK not in os.environ
    assert torch.cuda.is_available() == before == (torch._C._cuda_getDeviceCount() > 0)
    assert _dlopens(_adam_step, monkeypatch) == 0
    assert _dlopens(torch.cuda.is_available, monkeypatch) == 0


@pytest.mark.parametrize(("nvml_count", "dropped"), [(-1, True), (0, False), (2, False)])
def test_dropped_only_where_torch_falls_back_to_the_runtime(
    monkeypatch: pytest.MonkeyPatch, nvml_count: int, dropped: bool
):
    monkeypatch.setenv(NVML_CHECK, "1")
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: nvml_count)
    assert skip_missing_nvml() is dropped
    assert (NVML_CHECK in os.environ) is not dropped


def test_left_alone_when_not_set(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(NVML_CHECK, raising=False)
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: pytest.fail("probed NVML"))
    assert not skip_missing_nvml()


def test_the_recipe_drops_it(monkeypatch: pytest.MonkeyPatch, make_cfg):
    monkeypatch.setenv(NVML_CHECK, "1")
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: -1)
    build_trainer(make_cfg("logger=none", "trainer.enable_progress_bar=false"))
    assert NVML_CHECK not in os.environ
