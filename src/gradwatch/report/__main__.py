"""python -m gradwatch.report [multirun dir] [--log-dir logs]"""

from __future__ import annotations

import argparse
import sys

from gradwatch.report import ReportError, build_report, newest_multirun
from gradwatch.report.claims import FAIL, NOT_MEASURED, PASS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gradwatch.report",
        description="Aggregate a multirun directory into tables, figures, claims and index.html "
        "(written to <multirun dir>/report/).",
    )
    parser.add_argument(
        "multirun_dir",
        nargs="?",
        help="default: the newest multirun under --log-dir",
    )
    parser.add_argument("--log-dir", default="logs", help="where to look for the newest multirun")
    args = parser.parse_args(argv)
    try:
        root = args.multirun_dir or newest_multirun(args.log_dir)
        report = build_report(root)
    except ReportError as err:
        print(f"gradwatch.report: {err}", file=sys.stderr)
        return 2
    jobs, claims = report.jobs, report.claims
    done = sum(job.completed for job in jobs)
    counts = ", ".join(
        f"{sum(c.result == r for c in claims)} {r}" for r in (PASS, FAIL, NOT_MEASURED)
    )
    print(f"{len(jobs)} jobs ({done} completed, {len(jobs) - done} not); claims: {counts}")
    for job in jobs:
        if not job.completed:
            print(f"  job {job.job} {job.status}: {job.error_line}")
    print(f"report: {report.out_dir / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
