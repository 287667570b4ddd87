"""index.html: the whole report on one page, offline (relative links, no scripts, no CDN)."""

from __future__ import annotations

import shlex
from html import escape
from pathlib import Path

from gradwatch.report.claims import NOT_MEASURED, PASS, Claim
from gradwatch.report.collect import Job
from gradwatch.report.figures import FIGURES
from gradwatch.report.tables import table_rows
from gradwatch.run.files import TENSORBOARD_DIR

THEORY_FIGURES = {
    "activation_comparison.png": "Sigmoid, tanh and ReLU and their derivatives",
    "gradient_vanishing.png": "The article's 10-layer numpy demo, with the corrected derivative",
}

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.pass { background: #e3f6e3; } .fail { background: #fbe3e3; } .not-measured { color: #777; }
.failed td { background: #fff4e0; }
figure { margin: 1.5em 0; } img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
"""
#: ``make tensorboard``'s port; the page's links to TensorBoard's tabs assume it.
TENSORBOARD_PORT = 6006
TENSORBOARD_TABS = {
    "custom_scalars": "CUSTOM SCALARS: every layer's gradient norm in one chart, per job",
    "hparams": "HPARAMS: the jobs side by side, config and final metrics (table, parallel "
    "coordinates)",
    "text": "TEXT: each job's verdict and advice",
}


def _table(headers: list[str], rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _claims_table(claims: list[Claim]) -> str:
    rows, classes = [], []
    for i, c in enumerate(claims, 1):
        check = c.check if c.source == "sweep" else f"(theory) {c.check}"
        result = c.result.upper() if c.result != NOT_MEASURED else c.result
        rows.append(
            [str(i), escape(c.quote), escape(check), f"<b>{result}</b>", escape(c.evidence)]
        )
        classes.append(
            "pass" if c.result == PASS else "not-measured" if c.result == NOT_MEASURED else "fail"
        )
    return _table(["#", "the article says", "checked", "result", "measured"], rows, classes)


def _jobs_table(jobs: list[Job]) -> str:
    headers, rows = table_rows(jobs)
    classes = ["" if job.completed else "failed" for job in jobs]
    return _table(headers, [[escape(cell) for cell in row] for row in rows], classes)


def _figure(name: str, caption: str) -> str:
    return (
        f'<figure><img src="{escape(name)}" alt="{escape(caption)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _tensorboard(jobs: list[Job], sweep_dir: Path) -> list[str]:
    """How to open the sweep in TensorBoard, when its jobs wrote TensorBoard logs."""
    if not any((job.path / TENSORBOARD_DIR).is_dir() for job in jobs):
        return []
    logdir = shlex.quote(str(sweep_dir.resolve()))
    base = f"http://127.0.0.1:{TENSORBOARD_PORT}/"
    links = "".join(
        f'<li><a href="{base}#{tab}">{escape(text)}</a></li>'
        for tab, text in TENSORBOARD_TABS.items()
    )
    return [
        "<h2>TensorBoard</h2>",
        "<p>Serve this sweep's logs (every job, named by its overrides), then open the tabs:</p>",
        f"<pre>make tensorboard LOG_DIR={escape(logdir)}\n"
        f"# or: tensorboard --logdir {escape(logdir)} --host 127.0.0.1 "
        f"--port {TENSORBOARD_PORT}</pre>",
        f"<ul>{links}</ul>",
    ]


def write_html(
    jobs: list[Job], claims: list[Claim], figures: list[str], out_dir: Path, title: str
) -> Path:
    """Writes ``out_dir/index.html``; ``figures`` are the PNG names present in ``out_dir``."""
    failed = [job for job in jobs if not job.completed]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        '<p>Files: <a href="summary.csv">summary.csv</a>, <a href="summary.md">summary.md</a>, '
        '<a href="claims.md">claims.md</a>.</p>',
        "<h2>The article's claims</h2>",
        _claims_table(claims),
        "<h2>Figures</h2>",
        *(_figure(name, FIGURES[name]) for name in figures if name in FIGURES),
    ]
    theory = [name for name in THEORY_FIGURES if (out_dir / name).exists()]
    if theory:
        parts.append("<h2>Theory (the article's numpy demos, corrected)</h2>")
        parts += [_figure(name, THEORY_FIGURES[name]) for name in theory]
    parts += _tensorboard(jobs, out_dir.parent)
    parts += [f"<h2>Jobs ({len(jobs)}, {len(failed)} not completed)</h2>", _jobs_table(jobs)]
    if failed:
        parts.append("<h3>Jobs that did not complete</h3><ul>")
        parts += [
            f"<li>job {escape(job.job)} ({escape(job.experiment)}, <code>"
            f"{escape(job.overrides)}</code>): {escape(job.status)}"
            + (f": {escape(job.error_line)}" if job.error else "")
            + "</li>"
            for job in failed
        ]
        parts.append("</ul>")
    parts.append("</body></html>")
    path = out_dir / "index.html"
    path.write_text("\n".join(parts) + "\n")
    return path
