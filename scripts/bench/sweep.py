"""Sweep wall time: ``make sweep``'s grid with the joblib launcher at 2 jobs vs 1 job.

The grid is the ``configs/sweep/small.yaml`` preset, as ``make sweep`` runs it. Each job uses
one torch thread, so two jobs fill two cores without oversubscribing them. The full grid
takes minutes, so ``--quick`` runs a two-network, one-depth grid of ``debug=fast`` jobs
instead (a check that the rows work, not a speedup figure). Two ``ceiling`` rows measure
how much two one-thread processes get done at once against one, on this machine at this
moment: a shared machine caps the sweep's speedup there, whatever the launcher does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from scripts.bench.core import Row

GROUP = "sweep"
QUICK_GRID = ["experiment=sigmoid,relu", "model.net.depth=5", "debug=fast"]
JOBS = (1, 2)


def grid_overrides(quick: bool) -> tuple[list[str], str]:
    if quick:
        return QUICK_GRID, "quick grid: 2 debug=fast jobs"
    return ["sweep=small"], "configs/sweep/small.yaml"


def run_sweep(grid: list[str], n_jobs: int, log_dir: Path) -> tuple[float, int, int]:
    """Wall time of one multirun, and how many of its jobs completed / ran."""
    command = [
        sys.executable,
        "-m",
        "gradwatch.train",
        "-m",
        *grid,
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={n_jobs}",
        "torch_threads=1",
        "trainer.enable_progress_bar=false",
        f"paths.log_dir={log_dir}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"sweep failed ({' '.join(command)}):\n{result.stderr[-2000:]}")
    summaries = [json.loads(p.read_text()) for p in log_dir.glob("*/multiruns/*/*/summary.json")]
    done = sum(s.get("status") == "completed" for s in summaries)
    return elapsed, done, len(summaries)


#: A fixed single-threaded workload: matmuls per second over a few seconds.
SPIN = """
import time, torch
torch.set_num_threads(1)
a = torch.randn(256, 256)
start, n = time.perf_counter(), 0
while time.perf_counter() - start < {seconds}:
    a @ a
    n += 1
print(n / (time.perf_counter() - start))
"""


def matmul_rate(processes: int, seconds: float) -> float:
    """Matmuls/s of ``processes`` one-thread processes running at once, summed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = SPIN.format(seconds=seconds)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(processes)
    ]
    return sum(float(p.communicate()[0]) for p in procs)


def ceiling_rows(seconds: float) -> list[Row]:
    """What two processes get on this machine right now: the most any 2-job sweep can gain.

    On a quiet 2-core machine the ratio is near 2; when other jobs hold the cores it drops
    toward 1, and the sweep's speedup with it.
    """
    base = "ceiling: 1 process"
    return [
        Row(GROUP, base, matmul_rate(1, seconds), "matmul/s", note="one-thread 256x256 matmuls"),
        Row(GROUP, "ceiling: 2 processes", matmul_rate(2, seconds), "matmul/s", baseline=base),
    ]


def run(repeats: int, quick: bool) -> list[Row]:
    if importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None:
        print("[bench] sweep: skipped, hydra-joblib-launcher is not installed", file=sys.stderr)
        return []
    grid, source = grid_overrides(quick)
    rounds = 1 if quick else min(repeats, 2)  # a round is two whole sweeps
    times: dict[int, list[float]] = {n: [] for n in JOBS}
    jobs_note = ""
    seconds = 2.0 if quick else 5.0
    before = ceiling_rows(seconds)  # before and after the sweeps: the load may change
    with tempfile.TemporaryDirectory(prefix="gradwatch-sweep-") as tmp:
        for r in range(rounds):
            for n_jobs in JOBS if r % 2 == 0 else JOBS[::-1]:
                elapsed, done, total = run_sweep(grid, n_jobs, Path(tmp) / f"r{r}-j{n_jobs}")
                times[n_jobs].append(elapsed)
                jobs_note = f"{done}/{total} jobs completed"
    cores = os.cpu_count()
    after = ceiling_rows(seconds)
    ceiling = [
        replace(b, value=(b.value + a.value) / 2, note=f"{b.note} (before and after)".lstrip())
        for b, a in zip(before, after)
    ]
    return ceiling + [
        Row(
            GROUP,
            f"{n} job{'s' if n > 1 else ''} (joblib)",
            statistics.median(values),
            "s",
            baseline=None if n == 1 else "1 job (joblib)",
            repeats=rounds,
            note=f"{source}; {jobs_note}; {cores} cores; torch_threads=1; wall time",
        )
        for n, values in times.items()
    ]
