"""Turn a multirun directory into a report: tables, figures, the article's claims, one page.

    python -m gradwatch.report [multirun dir]      # default: the newest under logs/

writes ``<multirun dir>/report/``: summary.csv, summary.md, claims.md, the figures and
index.html.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gradwatch.report.claims import Claim, check_claims, write_claims
from gradwatch.report.collect import REPORT_DIR, Job, ReportError, collect_jobs, newest_multirun
from gradwatch.report.figures import write_figures
from gradwatch.report.html import write_html
from gradwatch.report.tables import write_csv, write_markdown
from gradwatch.report.theory import write_theory

__all__ = ["Job", "Report", "ReportError", "build_report", "collect_jobs", "newest_multirun"]


@dataclass(frozen=True)
class Report:
    out_dir: Path
    jobs: list[Job]
    claims: list[Claim]


def build_report(multirun_dir: str | os.PathLike) -> Report:
    """Writes every report file into ``<multirun_dir>/report/``."""
    root = Path(multirun_dir)
    jobs = collect_jobs(root)
    out = root / REPORT_DIR
    out.mkdir(exist_ok=True)
    title = f"gradwatch sweep report: {root.parent.parent.name}/{root.name}"
    write_csv(jobs, out / "summary.csv")
    write_markdown(jobs, out / "summary.md", title)
    claims = check_claims(jobs)
    write_claims(claims, jobs, out / "claims.md", f"The article's claims, measured ({root.name})")
    figures = write_figures(jobs, out)
    write_theory(out)
    write_html(jobs, claims, figures, out, title)
    return Report(out, jobs, claims)
