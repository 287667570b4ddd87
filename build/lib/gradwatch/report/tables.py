"""summary.csv (every number at full precision) and summary.md (rounded, for reading)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from gradwatch.report.collect import COLUMNS, Job

MD_COLUMNS = [
    ("job", "job"),
    ("experiment", "experiment"),
    ("depth", "depth"),
    ("width", "width"),
    ("activation", "activation"),
    ("init", "init"),
    ("norm", "norm"),
    ("residual", "residual"),
    ("steps", "steps"),
    ("val_acc", "val acc"),
    ("test_acc", "test acc"),
    ("initial_first_last_ratio", "first/last ratio, step 0"),
    ("final_first_last_ratio", "first/last ratio, end"),
    ("verdict", "verdict"),
    ("status", "status"),
]


def fmt_ratio(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if value == 0:
        return "0 (underflow)"
    return f"{value:.2e}" if math.isfinite(value) else str(value)


def fmt_acc(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def fmt_cell(key: str, value: object) -> str:
    if key.endswith("_ratio"):
        return fmt_ratio(value)  # type: ignore[arg-type]
    if key.endswith("_acc"):
        return fmt_acc(value)  # type: ignore[arg-type]
    return "-" if value is None else str(value)


def swept_overrides(jobs: list[Job]) -> dict[str, str]:
    """Each job's overrides whose value differs between jobs (what the sweep varied)."""
    parsed = {
        job.job: dict(o.split("=", 1) for o in job.overrides.split() if "=" in o) for job in jobs
    }
    keys = {k for overrides in parsed.values() for k in overrides}
    varied = sorted(k for k in keys if len({o.get(k) for o in parsed.values()}) > 1)
    return {job: " ".join(f"{k}={o[k]}" for k in varied if k in o) for job, o in parsed.items()}


def write_csv(jobs: list[Job], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for job in jobs:
            writer.writerow({k: "" if v is None else v for k, v in job.row().items()})


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def table_rows(jobs: list[Job]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells: the summary columns and what the sweep varied."""
    swept = swept_overrides(jobs)
    headers = [title for _, title in MD_COLUMNS] + ["swept overrides"]
    rows = [
        [fmt_cell(k, getattr(job, k)) for k, _ in MD_COLUMNS] + [swept[job.job]] for job in jobs
    ]
    return headers, rows


def markdown_table(jobs: list[Job]) -> str:
    headers, rows = table_rows(jobs)
    lines = [_md_row(headers), _md_row(["---"] * len(headers))]
    return "\n".join(lines + [_md_row(row) for row in rows])


def failures(jobs: list[Job]) -> list[Job]:
    return [job for job in jobs if not job.completed]


def write_markdown(jobs: list[Job], path: Path, title: str) -> None:
    failed = failures(jobs)
    parts = [
        f"# {title}",
        "",
        f"{len(jobs)} jobs: {len(jobs) - len(failed)} completed, {len(failed)} not completed. "
        "Ratio = first layer's gradient norm / last layer's (below 1: the input side gets "
        "less signal); `0 (underflow)`: the first layer's gradient is below float32's range.",
        "",
        markdown_table(jobs),
    ]
    if failed:
        parts += ["", "## Jobs that did not complete", ""]
        parts += [
            f"- job {job.job} ({job.experiment}, `{job.overrides}`): {job.status}"
            + (f": {job.error_line}" if job.error else "")
            for job in failed
        ]
    path.write_text("\n".join(parts) + "\n")
