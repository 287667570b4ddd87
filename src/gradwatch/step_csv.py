"""CSV logs with a ``step`` column (grad_norms.csv, Lightning's metrics.csv), cut back to
where a resumed fit starts. Torch-free."""

from __future__ import annotations

import csv
import os
from pathlib import Path


def rows_before(path: Path, step: int) -> tuple[list[str], list[dict[str, str]], int]:
    """The header, the rows with ``step < step``, and how many rows are past it."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = list(reader.fieldnames or []), list(reader)
    if "step" not in fields:
        return fields, rows, 0
    kept = [row for row in rows if not (row["step"] and int(float(row["step"])) >= step)]
    return fields, kept, len(rows) - len(kept)


def write_rows(path: Path, fields: list[str], rows: list[dict[str, str]]) -> None:
    """Replace ``path`` with ``rows`` under ``fields`` (a temporary file in the same
    directory, then a rename: a reader or a crash never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def drop_rows_from(path: Path, step: int, fields: list[str] | None = None) -> int:
    """Remove the rows with ``step >= step`` (and rewrite the header as ``fields`` when
    given); returns how many rows went."""
    if not path.is_file():
        return 0
    old, kept, dropped = rows_before(path, step)
    if dropped or (fields is not None and fields != old):
        write_rows(path, fields or old, kept)
    return dropped
