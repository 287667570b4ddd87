"""A multirun's job directories as one table: one :class:`Job` per job, from its summary.json.

A job directory is a subdirectory of the multirun directory holding ``summary.json`` or
Hydra's ``.hydra/``. Jobs that died before ``train()`` wrote anything get the status
``missing``; jobs whose summary still says ``running`` after the sweep crashed hard.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from gradwatch.run.files import GRAD_NORMS_FILE, SUMMARY_FILE
from gradwatch.run.summary import read_summary

REPORT_DIR = "report"


class ReportError(ValueError):
    """Bad input for the report: a directory that is missing or holds no jobs."""


@dataclass
class Job:
    """One multirun job: its configuration and what its summary.json measured."""

    job: str
    experiment: str
    depth: int | None
    width: int | None
    activation: str | None
    init: str | None
    norm: str | None
    residual: bool | None
    steps: int | None
    val_acc: float | None
    test_acc: float | None
    initial_first_last_ratio: float | None
    final_first_last_ratio: float | None
    verdict: str | None
    status: str
    error: str | None
    duration_s: float | None
    overrides: str
    path: Path = field(repr=False)

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def error_line(self) -> str:
        """The error on one line (Hydra's instantiation errors span several)."""
        return " ".join((self.error or "").split())

    @property
    def grad_norms(self) -> Path:
        return self.path / GRAD_NORMS_FILE

    def row(self) -> dict[str, Any]:
        """The job as a summary.csv row (``path`` relative to the multirun directory)."""
        row = asdict(self)
        row["path"] = self.path.name
        return row


COLUMNS = [f for f in Job.__dataclass_fields__ if f != "path"] + ["path"]


def _number(value: Any) -> float | None:
    """summary.json stores inf as the string "inf" and NaN as null."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    number = _number(value)
    return None if number is None or not math.isfinite(number) else int(number)


def _hydra_file(job_dir: Path, name: str) -> Any:
    path = job_dir / ".hydra" / name
    return OmegaConf.to_container(OmegaConf.load(path)) if path.exists() else None


def read_job(job_dir: Path) -> Job:
    summary = read_summary(job_dir)
    overrides = _hydra_file(job_dir, "overrides.yaml") or []
    net = summary.get("net")
    experiment = summary.get("experiment")
    if net is None or experiment is None:  # died before train() wrote its summary
        config = _hydra_file(job_dir, "config.yaml") or {}
        net = net or config.get("model", {}).get("net", {})
        experiment = experiment or config.get("task_name", "?")
    return Job(
        job=job_dir.name,
        experiment=str(experiment),
        depth=_int(net.get("depth")),
        width=_int(net.get("width")),
        activation=net.get("activation"),
        init=net.get("init"),
        norm=net.get("norm"),
        residual=net.get("residual"),
        steps=_int(summary.get("steps")),
        val_acc=_number(summary.get("val_acc")),
        test_acc=_number(summary.get("test_acc")),
        initial_first_last_ratio=_number(summary.get("initial_first_last_ratio")),
        final_first_last_ratio=_number(summary.get("final_first_last_ratio")),
        verdict=summary.get("diagnosis"),
        status=summary.get("status", "missing"),
        error=summary.get("error"),
        duration_s=_number(summary.get("duration_s")),
        overrides=" ".join(str(o) for o in overrides),
        path=job_dir,
    )


def _job_order(path: Path) -> tuple[int, int | str]:
    return (0, int(path.name)) if path.name.isdigit() else (1, path.name)


def collect_jobs(multirun_dir: str | os.PathLike) -> list[Job]:
    """Every job of a multirun directory, in job-number order."""
    root = Path(multirun_dir)
    if not root.is_dir():
        raise ReportError(f"No such multirun directory: {str(root)!r}.")
    job_dirs = [
        d
        for d in root.iterdir()
        if d.is_dir() and ((d / SUMMARY_FILE).exists() or (d / ".hydra").is_dir())
    ]
    if not job_dirs:
        raise ReportError(
            f"{str(root)!r} holds no job directories (subdirectories with {SUMMARY_FILE} or "
            ".hydra/). Pass a multirun directory, <log_dir>/<name>/multiruns/<timestamp>/."
        )
    return [read_job(d) for d in sorted(job_dirs, key=_job_order)]


def find_multiruns(log_dir: str | os.PathLike) -> list[Path]:
    """Every multirun, oldest first (timestamp names sort in time order): a plain ``-m``'s
    ``<log_dir>/multiruns/*`` and a ``sweep=`` preset's ``<log_dir>/<sweep>/multiruns/*``."""
    found = [*Path(log_dir).glob("multiruns/*"), *Path(log_dir).glob("*/multiruns/*")]
    runs = [p for p in found if p.is_dir()]
    return sorted(runs, key=lambda p: (p.name, p.stat().st_mtime))


def newest_multirun(log_dir: str | os.PathLike) -> Path:
    runs = find_multiruns(log_dir)
    if not runs:
        raise ReportError(
            f"No multirun under {str(log_dir)!r} (looked for <log_dir>/multiruns/* and "
            "<log_dir>/*/multiruns/*). Run a sweep first (make sweep), or pass the multirun "
            "directory (make report RUN=dir)."
        )
    return runs[-1]
