"""Benchmark group ``process``: the whole default run as a user starts it, wall time.

- ``python -m gradwatch.train``: the default run (20 epochs on digits with validation, the
  test split, the report), TensorBoard logger, default callbacks, progress bar off;
- ``hand-written Lightning script`` (``_lightning_script.py``): the same work with
  Lightning's defaults and none of gradwatch's monitoring; the baseline of the group;
- ``plain torch script`` (``_torch_script.py``): the same loop without Lightning;
- ``import gradwatch.recipe`` (what a training process imports) against ``import lightning``,
  ``import gradwatch.train`` (the entry point: all that a sweep's launching process imports)
  and ``import lightning`` against ``import torch``: start-up, which dominates a run this short.

Every row is a fresh ``python`` process (one torch thread), interleaved over the repeats.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.bench.core import Row

GROUP = "process"
HERE = Path(__file__).resolve().parent
BASELINE = "hand-written Lightning script"
#: One torch thread, as every row; no progress bar, as the hand-written scripts.
ARGS = ["torch_threads=1", "trainer.enable_progress_bar=false"]


def commands(out: Path) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "python -m gradwatch.train": [py, "-m", "gradwatch.train", f"paths.log_dir={out}", *ARGS],
        BASELINE: [py, str(HERE / "_lightning_script.py"), str(out)],
        "plain torch script": [py, str(HERE / "_torch_script.py")],
        "import gradwatch.recipe": [py, "-c", "import gradwatch.recipe"],
        "import gradwatch.train": [py, "-c", "import gradwatch.train"],
        "import lightning": [py, "-c", "import lightning.pytorch"],
        "import torch": [py, "-c", "import torch"],
    }


BASELINES = {
    "python -m gradwatch.train": BASELINE,
    "plain torch script": BASELINE,
    "import gradwatch.recipe": "import lightning",
    "import gradwatch.train": "import lightning",
    "import lightning": "import torch",
}
NOTES = {
    "python -m gradwatch.train": "default run: 20 epochs on digits, val, test, report",
    BASELINE: "same work, Lightning defaults, no gradwatch monitoring",
    "plain torch script": "same work, no logger or checkpoint",
}


def wall_time(command: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=HERE)
    took = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return took


def run(repeats: int, quick: bool) -> list[Row]:
    rounds = 1 if quick else repeats
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="gradwatch-process-") as tmp:
        runs = commands(Path(tmp))
        names = list(runs)
        for r in range(rounds):  # rotate the order: a slow moment hits every row alike
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times.setdefault(name, []).append(wall_time(runs[name]))
    return [
        Row(
            GROUP,
            name,
            statistics.median(times[name]),
            "s",
            baseline=BASELINES.get(name),
            repeats=rounds,
            note=NOTES.get(name, "python -c"),
        )
        for name in runs
    ]
