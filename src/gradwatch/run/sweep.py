"""Per-job setup of a Hydra multirun job: one W&B group per sweep, and DDP that stays in its job.

W&B: every job of a sweep gets ``WANDB_RUN_GROUP=<sweep name>_<timestamp>`` (named after the
sweep directory ``<log_dir>/<sweep name>/multiruns/<timestamp>/``) unless the variable is set
already; W&B reads it when ``logger.wandb.group`` is null, so an explicit group still wins.
(A ``${now:...}`` in ``hydra.job.env_set`` would not do: it is re-resolved, to a new time, in
every job.)

DDP:
Lightning starts ranks 1..N-1 of ``strategy=ddp`` by re-running the script:
``python -m gradwatch.train <sys.argv[1:]> hydra.run.dir=<HydraConfig.run.dir> ...``
(``_hydra_subprocess_cmd`` in ``lightning.fabric.strategies.launchers.subprocess_script``).
Inside a multirun job that command is wrong four ways: ``sys.argv`` still holds the whole
sweep (and ``-m``, or a preset with ``hydra.mode: MULTIRUN``), so every child starts the sweep
again; ``hydra.run.dir`` resolves to a fresh single-run directory, not the job's; in a joblib
(loky) or submitit worker ``__main__`` is the worker's module, not ours; and the launcher
leaves ``LOCAL_RANK``/``WORLD_SIZE`` and an open process group behind, so the next job in the
same process believes it is already distributed and waits forever.
:func:`multirun_job` fixes all four for the duration of one job.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write

WANDB_GROUP_ENV = "WANDB_RUN_GROUP"
# Set by Lightning's subprocess launcher in the parent process.
DDP_ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Hydra command-line flags that choose the config; the child needs them too.
CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


def _config_flags(argv: list[str]) -> list[str]:
    """The config-choosing flags of ``argv`` (``-cn x`` and ``--config-name=x`` forms)."""
    kept: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in CONFIG_FLAGS:
            kept += [arg, next(args, "")]
        elif arg.split("=", 1)[0] in CONFIG_FLAGS:
            kept.append(arg)
    return kept


def single_job_argv(argv: list[str], job_overrides: list[str]) -> list[str]:
    """The command line that re-runs one job of a sweep as a single run."""
    return [argv[0], *_config_flags(argv[1:]), *job_overrides, "hydra.mode=RUN"]


def sweep_group(job_dir: str | os.PathLike, log_dir: str | os.PathLike | None = None) -> str:
    """The W&B group of a job in ``<log_dir>/<name>/multiruns/<timestamp>/<job>``, or
    ``multirun_<timestamp>`` for a plain multirun's ``<log_dir>/multiruns/<timestamp>/<job>``."""
    sweep_dir = Path(job_dir).resolve().parent
    parent = sweep_dir.parent.parent
    plain = log_dir is not None and parent == Path(log_dir).resolve()
    return f"{'multirun' if plain else parent.name}_{sweep_dir.name}"


@contextmanager
def multirun_job(
    log_dir: str | os.PathLike | None = None, entry_module: str = "gradwatch.train"
) -> Iterator[None]:
    """In a multirun job: set the W&B group, point Lightning's DDP children at this job.

    A no-op outside a multirun. ``entry_module`` is what the DDP children run when this
    process's ``__main__`` is a launcher's worker module.
    """
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        yield
        return
    hydra_cfg = HydraConfig.get()
    main = sys.modules["__main__"]
    saved_argv, saved_spec = sys.argv[:], getattr(main, "__spec__", None)
    saved_env = {key: os.environ.get(key) for key in (*DDP_ENV_KEYS, WANDB_GROUP_ENV)}
    os.environ.setdefault(WANDB_GROUP_ENV, sweep_group(hydra_cfg.runtime.output_dir, log_dir))
    sys.argv = single_job_argv(sys.argv, list(hydra_cfg.overrides.task))
    if saved_spec is not None and saved_spec.name != entry_module:
        main.__spec__ = importlib.util.find_spec(entry_module)
    # Hydra's run_job restores its config after the job; argv and the env are ours to restore.
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = saved_argv
        main.__spec__ = saved_spec
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
