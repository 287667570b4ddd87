"""The short report printed at the end of a training run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gradwatch.callbacks.grad_norm import GradientNormCallback
from gradwatch.run.files import GRADIENT_FLOW_FILE, TENSORBOARD_DIR

#: A deeper net's table shows its first and last layers only.
TABLE_ROWS = 24
VERDICT_STYLE = {
    "vanishing": "bold red",
    "exploding": "bold red",
    "non-finite": "bold red",
    "stalled": "bold yellow",
    "healthy": "bold green",
}


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2e}"


def print_job_line(
    summary: dict[str, Any], overrides: list[str], run_dir: Path, console: Console | None = None
) -> None:
    """One line per multirun job, so that a sweep's jobs can share a terminal."""
    acc = summary.get("val_acc")
    acc = f"val_acc={acc:.3f}" if isinstance(acc, float) else "val_acc=-"
    verdict = summary.get("diagnosis", "?")
    (console or Console()).print(
        f"{summary.get('experiment', '')} {' '.join(overrides)}: "
        f"[{VERDICT_STYLE.get(verdict, 'bold')}]{verdict}[/] "
        f"ratio={_fmt(summary.get('initial_first_last_ratio'))} {acc} -> {run_dir}",
        soft_wrap=True,
    )


def print_report(
    summary: dict[str, Any],
    grad_cb: GradientNormCallback | None,
    run_dir: Path,
    console: Console | None = None,
) -> None:
    """The full end-of-run report of a single run: per-layer table, verdict, advice, files."""
    console = console or Console()
    console.rule(f"[bold]gradwatch: {summary.get('experiment', '')}")
    if grad_cb is not None and grad_cb.first_norms:
        table = Table(title="Per-layer gradient norms (input side first)", title_justify="left")
        table.add_column("depth", justify="right")
        table.add_column("layer")
        table.add_column(f"step {grad_cb.first_step}", justify="right")
        table.add_column(f"step {grad_cb.last_step}", justify="right")
        names = list(enumerate(grad_cb.layer_names, 1))
        if len(names) > TABLE_ROWS:  # a deep net: its ends, and grad_norms.csv for the rest
            names = [*names[: TABLE_ROWS // 2], None, *names[-(TABLE_ROWS // 2) :]]
        for row in names:
            if row is None:
                table.add_row(
                    "...", f"({len(grad_cb.layer_names) - TABLE_ROWS} more)", "...", "..."
                )
                continue
            depth, name = row
            table.add_row(
                str(depth),
                name,
                _fmt(grad_cb.first_norms.get(name)),
                _fmt(grad_cb.last_norms.get(name)),
            )
        console.print(table)
    verdict = summary.get("diagnosis", "?")
    console.print(
        f"first/last gradient-norm ratio: step 0 {_fmt(summary.get('initial_first_last_ratio'))}, "
        f"last step {_fmt(summary.get('final_first_last_ratio'))}"
    )
    console.print(f"verdict: [{VERDICT_STYLE.get(verdict, 'bold')}]{verdict}[/]")
    if summary.get("advice"):
        console.print(f"advice: {summary['advice']}")
    accuracy = " ".join(
        f"{key}={summary[key]:.3f}"
        for key in ("val_acc", "test_acc")
        if isinstance(summary.get(key), float)
    )
    if accuracy:
        console.print(f"accuracy: {accuracy}")
    if summary.get("stop_reason"):
        console.print(f"[bold red]stopped early:[/] {summary['stop_reason']}")
    console.print(f"run directory: {run_dir}")
    if (run_dir / GRADIENT_FLOW_FILE).exists():
        console.print(f"gradient-flow figure: {run_dir / GRADIENT_FLOW_FILE}")
    if (run_dir / TENSORBOARD_DIR).exists():
        console.print(
            f"TensorBoard: tensorboard --logdir {run_dir / TENSORBOARD_DIR}  (or make tensorboard)"
        )
