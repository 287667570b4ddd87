"""What produced a run: resolved config, package versions, git commit, command line.

``<run dir>/config.yaml`` holds the fully resolved config (Hydra's ``.hydra/config.yaml``
keeps the interpolations); ``<run dir>/provenance.json`` holds one entry per launch (a
resumed run has several), the newest also at the top level.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning
import torch
from omegaconf import DictConfig, OmegaConf

import gradwatch
from gradwatch.run.files import CONFIG_FILE, PROVENANCE_FILE
from gradwatch.run.summary import write_json


def git_state(path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``path`` (default: this package)."""
    where = Path(path or Path(gradwatch.__file__).parent)
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def launch_record(cfg: DictConfig, resumed_from: Path | None, resumed_step: int | None) -> dict:
    """One launch: versions, git state, command line, seed and where it resumed from."""
    return {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": [Path(sys.executable).name, *sys.argv],
        "gradwatch_version": gradwatch.__version__,
        "git": git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "host": platform.node(),
        "seed": cfg.get("seed"),
        "deterministic": cfg.trainer.get("deterministic"),
        "resumed_from": None if resumed_from is None else str(resumed_from),
        "resumed_from_step": resumed_step,
    }


def write_provenance(run_dir: Path, cfg: DictConfig, launch: dict[str, Any]) -> None:
    """Write ``config.yaml`` (resolved) and add ``launch`` to ``provenance.json``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    path = run_dir / PROVENANCE_FILE
    launches = json.loads(path.read_text()).get("launches", []) if path.exists() else []
    record = {**launch, "launches": [*launches, launch]}
    write_json(path, record)
