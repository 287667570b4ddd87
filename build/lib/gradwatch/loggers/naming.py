"""Names that say what a run is: the experiment followed by its command-line overrides.

Used for the W&B run name (``relu model.net.depth=20``) and the TensorBoard run directory
(``tensorboard/relu,model.net.depth=20``). Kept free of torch, TensorBoard and W&B.
"""

from __future__ import annotations

import re

#: Overrides left out of a run's name: the experiment (already its first word) and those that
#: say where a run goes, how it logs or how it resumes, not what it is.
NOT_IN_NAME = (
    "experiment=",
    "paths.",
    "logger",
    "hydra.",
    "trainer.enable_progress_bar",
    "ckpt_path",
    "callbacks=",
    "callbacks.dashboard",
)
#: A TensorBoard run directory name stays well below the file-system limit of 255 bytes.
MAX_DIR_NAME = 120


def name_overrides() -> list[str]:
    """The overrides of this Hydra job that define the run; ``[]`` when not under Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task
    except (ImportError, ValueError):  # not launched by Hydra
        return []
    return [o for o in overrides if not o.lstrip("+~").startswith(NOT_IN_NAME)]


def run_name(name: str | None) -> str | None:
    """``name`` followed by the command-line overrides that define the run, when under Hydra."""
    kept = name_overrides()
    return " ".join([name or "run", *kept]) if kept else name


def dir_name(name: str | None) -> str:
    """:func:`run_name` as one directory name: ``relu,model.net.depth=20`` (Hydra's own
    ``override_dirname`` style), without path separators, at most ``MAX_DIR_NAME`` bytes."""
    label = ",".join([name or "run", *name_overrides()])
    label = re.sub(r"[/\\\x00-\x1f]", "_", label).strip(". ") or "run"
    encoded = label.encode()[:MAX_DIR_NAME]
    return encoded.decode(errors="ignore")
