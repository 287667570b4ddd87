"""Hydra entry point: one run, or each job of a multirun (build -> fit -> test -> report is
:func:`gradwatch.recipe.train`).

python -m gradwatch.train experiment=relu model.net.depth=20 trainer.max_epochs=5
python -m gradwatch.train experiment=relu ckpt_path=last   # resume the newest relu run

This module imports Hydra, not Lightning: a multirun's launching process only composes
configs and hands jobs to its workers, which import Lightning (4 s here) themselves, so
they start as soon as the jobs are composed instead of 4 s after.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

import gradwatch.run.resolvers  # noqa: F401  the config's gradwatch.* resolvers
from gradwatch.run.heap import skip_gc_at_exit


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    from gradwatch.recipe import train
    from gradwatch.run.sweep import multirun_job

    _print_lightning_once()
    skip_gc_at_exit()  # in a sweep's worker processes too
    with multirun_job(cfg.paths.log_dir):
        summary = train(cfg)
    # The metric a sweeper (Optuna) optimizes.
    return summary["metrics"].get(cfg.get("optimized_metric", "val/acc"))


def _print_lightning_once() -> None:
    """Lightning's messages once each, on stderr.

    Imported after Hydra has set up the root logger (as here, inside the job), Lightning
    lets ``lightning.pytorch`` and ``lightning.fabric`` propagate, and every line came out
    twice: through the top ``lightning`` logger's console handler and through Hydra's.
    Stop them at the former (stdout stays for the report).
    """
    logging.getLogger("lightning").propagate = False


if __name__ == "__main__":
    skip_gc_at_exit()
    main()
