"""A W&B logger that never prompts for a login, and a finish for the end of every run."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

#: Overrides left out of a run's name: the experiment (already its first word) and those that
#: say where a run goes or how it logs, not what it is.
_NOT_IN_NAME = ("experiment=", "paths.", "logger", "hydra.", "trainer.enable_progress_bar")


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


def run_name(name: str | None) -> str | None:
    """``name`` followed by the command-line overrides that define the run, when under Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task
    except (ImportError, ValueError):  # not launched by Hydra
        return name
    kept = [o for o in overrides if not o.lstrip("+~").startswith(_NOT_IN_NAME)]
    return " ".join([name or "run", *kept]) if kept else name


def wandb_logger(
    project: str = "gradwatch",
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    save_dir: str = ".",
    offline: bool = False,
    **kwargs,
) -> WandbLogger:
    """Lightning's WandbLogger, offline when asked or when there is no API key.

    The run is named after the experiment and its overrides (``sigmoid model.net.depth=20``).
    Any other keyword goes to ``wandb.init`` (``entity``, ``notes``, ...).
    """
    os.makedirs(save_dir, exist_ok=True)
    return WandbLogger(
        project=project,
        name=run_name(name),
        group=group,
        tags=list(tags or []),
        save_dir=save_dir,
        mode=wandb_mode(offline),
        log_model=False,
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
