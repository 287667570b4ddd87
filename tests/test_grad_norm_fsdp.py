"""FSDP2 (Lightning's ModelParallelStrategy, 2 gloo processes on the CPU): per-layer norms of
the full, unsharded gradient, checked against one process training the same net in plain torch."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.fsdp_run import STEPS, make_net

SCRIPT = Path(__file__).with_name("fsdp_run.py")


def reference(run_dir: Path) -> dict[tuple[int, str], tuple[float, float, float]]:
    """(step, layer) -> (grad norm, weight norm, update ratio) of plain SGD on the global
    batches (both ranks' batches together: the mean loss over equal halves is their mean)."""
    net = make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    out = {}
    for step in range(STEPS):
        halves = [torch.load(run_dir / f"batch-{step}-{rank}.pt") for rank in (0, 1)]
        x, y = (torch.cat(parts) for parts in zip(*halves))
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        layers = {i: list(net[i].parameters()) for i in (0, 2, 4)}
        before = {i: [p.detach().clone() for p in ps] for i, ps in layers.items()}
        optimizer.step()
        for i, params in layers.items():
            grad = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params))
            weight = math.sqrt(sum(float(b.double().pow(2).sum()) for b in before[i]))
            change = math.sqrt(
                sum(
                    float((b - p.detach()).double().pow(2).sum()) for b, p in zip(before[i], params)
                )
            )
            out[(step, f"net.{i}")] = (grad, weight, change / weight)
    return out


@pytest.mark.slow
def test_fsdp2_logs_the_norms_of_the_full_gradient_once(tmp_path):
    path = os.pathsep.join([str(SCRIPT.parents[1]), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "grad_norms.csv").open()))
    want = reference(tmp_path)
    assert [(int(r["step"]), r["layer"]) for r in rows] == list(want)  # rank zero only, once
    for row in rows:
        grad, weight, update = want[(int(row["step"]), row["layer"])]
        assert float(row["grad_norm"]) == pytest.approx(grad, rel=1e-5), row
        assert float(row["weight_norm"]) == pytest.approx(weight, rel=1e-5), row
        assert float(row["update_ratio"]) == pytest.approx(update, rel=1e-4), row
    assert [int(r["depth"]) for r in rows[:3]] == [1, 2, 3]
