"""gradwatch.run.allocator: memory a step frees is reused by the next without page faults."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

import gradwatch.recipe as recipe
from gradwatch.run import allocator
from tests.runs import compose_run

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

# A fresh interpreter: the thresholds are process-wide and this one may have set them. Both
# modes first hold glibc's thresholds at their starting values (128 kB): where its dynamic
# rule would have moved them depends on the heap's history, which varies from run to run.
# Each "step" allocates and frees 4 MB tensors, as a step's temporaries do; the page faults
# of the last six steps (the kernel's count for this thread) are printed.
STEPS = """
import ctypes, json, resource, sys, torch
from gradwatch.run import allocator
mallopt = ctypes.CDLL(None).mallopt
mallopt(allocator.M_MMAP_THRESHOLD, 128 << 10)
mallopt(allocator.M_TRIM_THRESHOLD, 128 << 10)
kept = allocator.keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for step in range(12):
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    a = torch.ones(1 << 20)
    b = torch.ones(1 << 20) + a
    del a, b
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults[6:]}))
"""


def faults_per_step(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS}
    out = subprocess.run(
        [sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout)


@glibc
def test_freed_tensors_are_reused_without_page_faults():
    static, kept = faults_per_step("static"), faults_per_step("keep")
    assert kept["kept"] is True
    pages = (4 << 20) // 4096  # one 4 MB tensor
    # glibc maps each 4 MB block afresh: every step faults in at least one tensor's pages...
    assert min(static["faults"]) >= pages
    # ...and, with the thresholds set, the heap keeps them for the next step.
    assert max(kept["faults"]) < pages // 10


@pytest.mark.parametrize("name", allocator.USER_SETTINGS)
def test_a_persons_own_malloc_settings_win(monkeypatch, name):
    monkeypatch.setenv(name, "131072")
    assert allocator.keep_freed_memory() is False


@pytest.mark.parametrize(("override", "calls"), [((), [1]), (("keep_freed_memory=false",), [])])
def test_the_recipe_sets_it_unless_the_config_says_not_to(tmp_path, monkeypatch, override, calls):
    made = []
    monkeypatch.setattr(recipe, "keep_freed_memory", lambda: made.append(1) or True)
    cfg = compose_run(tmp_path / "run", tmp_path, "experiment=sigmoid", *override)
    recipe.build_model(cfg)
    assert made == calls
