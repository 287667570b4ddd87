"""The end-of-run report: a deep net's table shows its ends, not every layer."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from gradwatch.console import TABLE_ROWS, print_job_line, print_report


def test_a_deep_nets_table_shows_its_first_and_last_layers(tmp_path: Path):
    names = [f"net.{i}" for i in range(1000)]
    norms = {n: float(i + 1) for i, n in enumerate(names)}
    grad_cb = SimpleNamespace(
        layer_names=names, first_norms=norms, last_norms=norms, first_step=0, last_step=9
    )
    console = Console(record=True, width=120)
    summary = {"experiment": "deep", "diagnosis": "healthy", "initial_first_last_ratio": 1e-3}
    print_report(summary, grad_cb, tmp_path, console=console)
    text = console.export_text()
    shown = [n for n in names if f" {n} " in text]
    half = TABLE_ROWS // 2
    assert shown == names[:half] + names[-half:]
    assert f"({1000 - TABLE_ROWS} more)" in text
    assert "1.00e+03" in text  # the last layer's norm


def test_a_multirun_job_prints_one_line(tmp_path: Path):
    console = Console(record=True, width=300)
    summary = {
        "experiment": "relu",
        "diagnosis": "healthy",
        "val_acc": 0.9,
        "initial_first_last_ratio": 0.5,
    }
    print_job_line(summary, ["experiment=relu", "model.net.depth=20"], tmp_path, console=console)
    lines = console.export_text().strip().splitlines()
    assert len(lines) == 1
    assert (
        "model.net.depth=20" in lines[0] and "healthy" in lines[0] and "val_acc=0.900" in lines[0]
    )
    assert str(tmp_path) in lines[0]
