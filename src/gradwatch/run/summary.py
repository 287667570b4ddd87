"""summary.json: one file per run that says how the run ended and what it measured."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from gradwatch.run.files import SUMMARY_FILE


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_json(path: Path, data: dict[str, Any], **dumps: Any) -> None:
    """Write ``data`` as JSON atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")  # DDP ranks may write at once
    try:
        tmp.write_text(json.dumps(data, indent=2, **dumps) + "\n")
        os.replace(tmp, path)
    except BaseException:  # a full disk leaves no temporary file behind
        tmp.unlink(missing_ok=True)
        raise


def update_summary(run_dir: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``<run_dir>/summary.json``, written atomically."""
    path = Path(run_dir) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {**read_summary(run_dir), **_jsonable(fields)}
    write_json(path, summary, sort_keys=True)
    return summary


def overwrite_summary(run_dir: str | os.PathLike, **fields: Any) -> None:
    """Merge ``fields`` into ``summary.json`` by rewriting the file in place: the last resort
    on a full disk, where the atomic write's temporary file has no room but the old file's
    blocks do. Not atomic: only for recording how a run failed."""
    path = Path(run_dir) / SUMMARY_FILE
    summary = {**read_summary(run_dir), **_jsonable(fields)}
    data = (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
