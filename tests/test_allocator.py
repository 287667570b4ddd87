"""gradwatch.run.allocator: memory a step frees is reused by the next without page faults."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

import gradwatch.recipe as recipe
from tests.runs import compose_run

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

# A fresh interpreter: the thresholds are process-wide and this one may have set them. Each
# "step" allocates and frees 4 MB tensors, as a step's temporaries do; the page faults of
# the last six steps (the kernel's count for this thread) are printed.
STEPS = """
import json, resource, sys, torch
from gradwatch.run.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for step in range(12):
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    a = torch.ones(1 << 20)
    b = torch.ones(1 << 20) + a
    del a, b
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults[6:]}))
"""
#: glibc's thresholds at their starting values (128 kB), held there: where its dynamic rule
#: would have raised them depends on the heap's history, which varies from run to run.
STATIC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def faults_per_step(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", STEPS, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **STATIC},
    )
    return json.loads(out.stdout)


@glibc
def test_freed_tensors_are_reused_without_page_faults():
    default, kept = faults_per_step("default"), faults_per_step("keep")
    assert kept["kept"] is True
    pages = (4 << 20) // 4096  # one 4 MB tensor
    # glibc maps each 4 MB block afresh: every step faults in at least one tensor's pages...
    assert min(default["faults"]) >= pages
    # ...and, with the thresholds set, the heap keeps them for the next step.
    assert max(kept["faults"]) < pages // 10


def test_the_recipe_sets_it_for_every_run(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(recipe, "keep_freed_memory", lambda: calls.append(1) or True)
    cfg = compose_run(tmp_path / "run", tmp_path, "logger=none", "callbacks=none")
    recipe.build_trainer(cfg)
    assert calls == [1]
