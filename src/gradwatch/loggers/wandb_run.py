"""A W&B logger that never prompts for a login, and a finish for the end of every run."""

from __future__ import annotations

import os
import secrets
import string
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from gradwatch.loggers.naming import run_name
from gradwatch.run.files import WANDB_ID_FILE

#: The W&B run id of a run directory: a resume of the run continues the same W&B run.


def wandb_mode(offline: bool) -> str:
    """``offline`` when asked (argument or ``WANDB_MODE``) or when no API key is found.

    Checking for a key first is what keeps W&B from stopping the run at a login prompt.
    """
    env = os.environ.get("WANDB_MODE", "").lower()
    if offline or env in ("offline", "dryrun"):
        return "offline"
    if env == "disabled":
        return "disabled"
    import wandb

    if wandb.login(prompt=False, verify=False):
        return "online"
    rank_zero_warn(
        "No W&B API key found (set WANDB_API_KEY or run `wandb login`), so this run logs to "
        "W&B offline under its run directory's wandb/ folder; upload it later with "
        "`wandb sync <run dir>/wandb/offline-run-*`. Pass logger.wandb.offline=true to "
        "silence this."
    )
    return "offline"


def run_id(save_dir: str | os.PathLike) -> tuple[str, bool]:
    """``(id, continued)``: the W&B run id kept in ``<save_dir>/wandb_id``, or a new one
    (written there by rank zero). A resume runs in the same run directory, so it finds the id
    of the run it continues."""
    path = Path(save_dir, WANDB_ID_FILE)
    if path.is_file() and (kept := path.read_text().strip()):
        return kept, True
    alphabet = string.ascii_lowercase + string.digits  # W&B's own id alphabet
    new = "".join(secrets.choice(alphabet) for _ in range(8))
    if rank_zero_only.rank == 0:
        path.write_text(new + "\n")
    return new, False


def wandb_logger(
    project: str = "gradwatch",
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    save_dir: str = ".",
    offline: bool = False,
    job_type: str | None = None,
    **kwargs,
) -> WandbLogger:
    """Lightning's WandbLogger, offline when asked or when there is no API key.

    The run is named after the experiment and its overrides (``sigmoid model.net.depth=20``);
    ``job_type`` (the experiment, in ``configs/logger/wandb.yaml``) lets a workspace group a
    sweep's runs by network. The run's id is kept in ``<save_dir>/wandb_id``: a resumed run
    (``ckpt_path=...``) continues the same W&B run. Any other keyword goes to ``wandb.init``
    (``entity``, ``notes``, ...).
    """
    os.makedirs(save_dir, exist_ok=True)
    kept_id, _ = run_id(save_dir)  # Lightning passes resume="allow": the same id continues
    return WandbLogger(
        project=project,
        name=run_name(name),
        group=group,
        tags=list(tags or []),
        save_dir=save_dir,
        mode=wandb_mode(offline),
        log_model=False,
        id=kwargs.pop("id", kept_id),
        job_type=job_type,
        **kwargs,
    )


def finish_wandb() -> None:
    """End the active W&B run, if any: called at the end of every run, failed or not, so
    the jobs of a multirun never log into one another's run."""
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    failed = sys.exc_info()[0] is not None
    wandb.finish(exit_code=1 if failed else 0)
