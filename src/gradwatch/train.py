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
    """Lightning's messages once each, through Hydra's logging: on the console and in the
    run's ``train.log``.

    Imported after Hydra has set up the root logger (as here, inside the job), Lightning
    leaves its loggers propagating to it, and its top ``lightning`` logger also prints
    through a console handler of its own: every line came out twice.
    """
    if not logging.getLogger("lightning.pytorch").propagate:  # imported before Hydra's setup
        return
    lightning = logging.getLogger("lightning")
    for handler in list(lightning.handlers):
        if type(handler) is logging.StreamHandler:  # its console handler; not a file
            lightning.removeHandler(handler)


if __name__ == "__main__":
    skip_gc_at_exit()
    main()
