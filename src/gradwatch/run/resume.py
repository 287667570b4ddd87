"""Resuming a run: ``ckpt_path=<file>`` or ``ckpt_path=last``, in the run's own directory.

A checkpoint under ``<run dir>/checkpoints/`` is resumed *in that run directory*: Hydra's
``hydra.run.dir`` goes through the ``gradwatch.run_dir`` resolver (:func:`run_dir_resolver`), so
``grad_norms.csv``, the CSV/TensorBoard logs and ``summary.json`` continue. Rows logged by
the interrupted launch after the checkpoint's step are dropped, so no step appears twice.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import gradwatch.run.resolvers  # noqa: F401  registers the resolvers that call this module
from gradwatch.run.checkpoint_io import UnsafeCheckpointError, load_plain
from gradwatch.run.files import CHECKPOINT_DIR, SUMMARY_FILE
from gradwatch.run.summary import read_summary
from gradwatch.step_csv import rows_before, write_rows

LAST = "last"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime  # follows a last.ckpt link to its file
    except OSError:  # a dangling link, or removed meanwhile
        return float("-inf")


def _loads(path: Path) -> bool:
    try:
        checkpoint = load_plain(path, mmap=True)
    except Exception:
        return False
    return isinstance(checkpoint, dict) and "global_step" in checkpoint


def _newest_first(run_dirs: Iterable[Path]) -> list[Path]:
    """The ``*.ckpt`` files in the runs' ``checkpoints/``, newest first (``last.ckpt`` first
    among equals: it links to the newest epoch's file)."""
    found = [
        (mtime, "last" in p.name, p)
        for run in run_dirs
        for p in Path(run, CHECKPOINT_DIR).glob("*.ckpt")
        if (mtime := _mtime(p)) > float("-inf")
    ]
    return [p for *_, p in sorted(found, key=lambda row: row[:2], reverse=True)]


def last_checkpoint_in(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in ``<run_dir>/checkpoints``.

    The newest ``*.ckpt``, so a kill between an epoch's checkpoint and its ``last.ckpt``
    link loses nothing. A file that does not load as a checkpoint is passed over
    (checkpoints are written atomically, so this is belt and braces).
    """
    return next((p for p in _newest_first([Path(run_dir)]) if _loads(p)), None)


def latest_last_checkpoint(log_dir: str | os.PathLike, task_name: str) -> Path | None:
    """The newest complete checkpoint of any run of ``task_name`` under ``log_dir``."""
    runs = Path(log_dir, task_name, "runs").glob("*")
    return next((p for p in _newest_first(runs) if _loads(p)), None)


def run_dir_of(ckpt: Path) -> Path | None:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.ckpt``), if any."""
    run = ckpt.resolve().parent.parent
    if ckpt.resolve().parent.name == CHECKPOINT_DIR and (run / SUMMARY_FILE).exists():
        return run
    return None


def _checkpoint_for(cfg: Any) -> Path | None:
    """The checkpoint ``cfg.ckpt_path`` names, or None when it names none that exists."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is None:
        return None
    if str(ckpt_path) == LAST:
        return latest_last_checkpoint(cfg.paths.log_dir, cfg.task_name)
    path = Path(str(ckpt_path)).expanduser()
    return path if path.is_file() else None


def _resumed_run_dir(root: Any) -> Path | None:
    """The run a resume continues: the checkpoint's, when it is a run of this experiment."""
    ckpt = _checkpoint_for(root)
    run = None if ckpt is None else run_dir_of(ckpt)
    if run is None or read_summary(run).get("experiment") != root.task_name:
        return None  # another experiment's checkpoint starts a run of its own
    return run


def run_dir_resolver(default: str, *, _root_: DictConfig) -> str:
    """``hydra.run.dir``: the resumed run's directory, else ``default`` (a fresh one)."""
    resumed = _resumed_run_dir(_root_)
    return str(resumed) if resumed is not None else default


def hydra_subdir_resolver(*, _root_: DictConfig) -> str:
    """``hydra.output_subdir``: a resume keeps the first launch's ``.hydra/`` files."""
    resumed = _resumed_run_dir(_root_)
    output_dir = OmegaConf.select(_root_, "hydra.runtime.output_dir")
    if resumed is None or output_dir is None or Path(output_dir).resolve() != resumed:
        return ".hydra"
    return f".hydra/resume-{datetime.now():%Y-%m-%d_%H-%M-%S-%f}"


def _resume_hint(task_name: str) -> str:
    return (
        f"Pass ckpt_path=<path to a .ckpt file> (runs keep theirs in <run dir>/{CHECKPOINT_DIR}/), "
        f"or ckpt_path=last for the newest {CHECKPOINT_DIR}/last.ckpt of the most recent "
        f"{task_name!r} run (task_name follows the experiment)."
    )


def resolve_ckpt_path(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to resume from, or None; a clear ValueError when there is none."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is None:
        return None
    if str(ckpt_path) == LAST:
        # A continued run (and every DDP rank of it) finds its own last.ckpt first.
        found = last_checkpoint_in(run_dir) or latest_last_checkpoint(
            cfg.paths.log_dir, cfg.task_name
        )
        if found is None:
            searched = Path(cfg.paths.log_dir, cfg.task_name, "runs", "*", CHECKPOINT_DIR)
            raise ValueError(
                f"ckpt_path=last: no last.ckpt found in {searched}. Runs save "
                f"{CHECKPOINT_DIR}/last.ckpt every epoch and when stopped with Ctrl-C or SIGTERM; "
                "start a run first (a killed run that never finished an epoch has none). "
                + _resume_hint(cfg.task_name)
            )
        return found
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        what = "is a directory, not a checkpoint file" if path.is_dir() else "does not exist"
        raise ValueError(f"ckpt_path={str(ckpt_path)!r} {what}. " + _resume_hint(cfg.task_name))
    return path


def load_checkpoint(path: Path, task_name: str) -> dict[str, Any]:
    """Load a Lightning checkpoint to CPU, or raise a ValueError that says what it is not."""
    try:
        checkpoint = load_plain(path, mmap=True)  # weights_only=True: never runs its code
    except UnsafeCheckpointError as err:
        raise ValueError(f"ckpt_path={str(path)!r} refused: {err}") from None
    except Exception as err:
        raise ValueError(
            f"ckpt_path={str(path)!r} is not a Lightning checkpoint: torch.load failed "
            f"({type(err).__name__}: {err}). " + _resume_hint(task_name)
        ) from None
    missing = {"state_dict", "global_step"} - set(
        checkpoint if isinstance(checkpoint, dict) else ()
    )
    if missing:
        raise ValueError(
            f"ckpt_path={str(path)!r} is not a Lightning training checkpoint "
            f"(it has no {', '.join(sorted(missing))}). " + _resume_hint(task_name)
        )
    return checkpoint


def check_same_network(checkpoint: dict[str, Any], model: torch.nn.Module, path: Path) -> None:
    """Raise a ValueError naming the first differences when the checkpoint's network differs."""
    saved = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = [
        f"{k} is {list(saved[k])} in the checkpoint but {list(wanted[k])} here"
        for k in wanted
        if k in saved and saved[k] != wanted[k]
    ]
    problems += [f"{k} is missing from the checkpoint" for k in wanted if k not in saved]
    problems += [
        f"{k} is in the checkpoint but not in this network" for k in saved if k not in wanted
    ]
    if not problems:
        return
    run = run_dir_of(path)
    where = f" ({run / '.hydra' / 'overrides.yaml'})" if run is not None else ""
    shown = "; ".join(problems[:3]) + (
        f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    )
    raise ValueError(
        f"ckpt_path={str(path)!r} holds a different network than this config: {shown}. "
        f"Resume with the overrides the checkpoint was trained with{where}, or start a new run "
        "without ckpt_path."
    )


def checked_resume_step(
    ckpt_path: Path | None, model: torch.nn.Module, task_name: str
) -> int | None:
    """The step a checkpoint resumes at, once it is known to be one that fits ``model``."""
    if ckpt_path is None:
        return None
    checkpoint = load_checkpoint(ckpt_path, task_name)
    check_same_network(checkpoint, model, ckpt_path)
    return int(checkpoint["global_step"])


def continue_csv_logger(logger: Any, step: int) -> None:
    """Lightning's CSVLogger deletes ``metrics.csv`` when it starts; keep the rows before ``step``.

    Call on global rank 0 only, before training: the logger's writer is created here.
    """
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    fields, kept, _ = rows_before(path, step)
    with warnings.catch_warnings():  # "Previous log files ... will be deleted": not for long
        warnings.filterwarnings("ignore", message="Experiment logs directory")
        writer = logger.experiment  # creating the writer deletes metrics.csv
    write_rows(path, fields, kept)
    writer.metrics_keys = fields  # later saves append under this header (or widen it)
