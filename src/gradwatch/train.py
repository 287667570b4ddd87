"""Hydra entry point: compose -> instantiate -> fit -> test -> summary.json.

python -m gradwatch.train experiment=relu model.net.depth=20 trainer.max_epochs=5
python -m gradwatch.train experiment=relu ckpt_path=last   # resume the newest relu run
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from gradwatch.callbacks import GradientNormCallback
from gradwatch.console import print_job_line, print_report
from gradwatch.interrupt import (
    EXIT_CODES,
    InterruptCheckpoint,
    interrupted_by,
    launcher_marked,
    wait_for_launcher,
)
from gradwatch.loggers import finish_wandb, log_run_config
from gradwatch.resume import checked_resume_step, continue_csv_logger, resolve_ckpt_path
from gradwatch.run_lock import refusal
from gradwatch.run_record import RunRecord
from gradwatch.sweep import multirun_job
from gradwatch.validate import validate_config


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    return [instantiate(item) for item in (group or {}).values() if item is not None]


def _loggers(cfg: DictConfig, resume_step: int | None) -> list[Any]:
    """The configured loggers; a continued run directory's logs go on at ``resume_step``."""
    loggers = []
    for item in (cfg.get("logger") or {}).values():
        if item is None:
            continue
        tensorboard = str(item.get("_target_", "")).endswith("TensorBoardLogger")
        # TensorBoard hides what the interrupted launch logged past the checkpoint.
        extra = {"purge_step": resume_step} if tensorboard and resume_step is not None else {}
        logger = instantiate(item, **extra)
        if isinstance(logger, CSVLogger) and resume_step is not None and rank_zero_only.rank == 0:
            continue_csv_logger(logger, resume_step)
        loggers.append(logger)
    return loggers


def _metric(metrics: dict[str, torch.Tensor], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one run; returns its summary. summary.json is written even on failure."""
    record = RunRecord(Path(cfg.paths.output_dir), cfg)
    stopper = InterruptCheckpoint()  # Ctrl-C and SIGTERM: save last.ckpt, status interrupted
    trainer = grad_cb = None
    try:
        stopper.catch_sigterm()
        record.begin()  # the run's lock: one launch per run directory
        validate_config(cfg)
        ckpt_path = resolve_ckpt_path(cfg, record.run_dir)
        if cfg.get("torch_threads"):
            torch.set_num_threads(int(cfg.torch_threads))
        torch.set_flush_denormal(bool(cfg.get("flush_denormal", False)))
        L.seed_everything(cfg.seed, workers=True)
        datamodule = instantiate(cfg.data)
        net = instantiate(
            cfg.model.net, input_shape=datamodule.input_shape, num_classes=datamodule.num_classes
        )
        module_cfg = OmegaConf.masked_copy(cfg.model, [k for k in cfg.model if k != "net"])
        model = instantiate(module_cfg, net=net, num_classes=datamodule.num_classes)
        step = checked_resume_step(ckpt_path, model, cfg.task_name)
        record.start(ckpt_path, step)
        callbacks = [*_instantiate_group(cfg.get("callbacks")), stopper]
        grad_cb = next((c for c in callbacks if isinstance(c, GradientNormCallback)), None)
        loggers = _loggers(cfg, record.log_from(step))
        log_run_config(loggers, cfg)  # dashboards: the resolved config as hyperparameters
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        with launcher_marked():  # DDP workers wait for it when interrupted
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics = dict(trainer.callback_metrics)
        if cfg.get("test"):
            trainer.test(model, datamodule=datamodule, verbose=False)
            metrics.update(trainer.callback_metrics)
        summary = record.completed(
            **(grad_cb.summary() if grad_cb is not None else {}),
            val_acc=_metric(metrics, "val/acc"),
            test_acc=_metric(metrics, "test/acc"),
            steps=trainer.global_step,
        )
        if (
            trainer.is_global_zero
            and HydraConfig.initialized()
            and HydraConfig.get().mode == RunMode.MULTIRUN
        ):
            print_job_line(summary, list(HydraConfig.get().overrides.task), record.run_dir)
        elif trainer.is_global_zero:
            print_report(summary, grad_cb, record.run_dir)
    except BaseException as err:
        step = trainer.global_step if trainer is not None else None
        # A full or read-only disk, whichever writer hit it, or a run in use: one paragraph.
        paragraph = record.write_failed(err, step) or refusal(err)
        if paragraph is not None:
            print(paragraph, file=sys.stderr)
            raise SystemExit(1) from None
        signal = interrupted_by(err, trainer, stopper)
        if not signal:
            record.failed(err, grad_cb.summary() if grad_cb is not None else {})
            raise
        extra = grad_cb.summary() if grad_cb is not None else {}
        record.interrupted(signal, step, stopper.saved_path, extra)
        wait_for_launcher()  # a DDP worker leaves after the launcher, never before
        raise SystemExit(EXIT_CODES[signal]) from None
    finally:
        stopper.release_sigterm()
        finish_wandb()  # so multirun jobs never share a W&B run
        record.close()
    summary["metrics"] = {k: float(v) for k, v in metrics.items()}
    return summary


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    with multirun_job(cfg.paths.log_dir):
        summary = train(cfg)
    # The metric a sweeper (Optuna) optimizes.
    return summary["metrics"].get(cfg.get("optimized_metric", "val/acc"))


if __name__ == "__main__":
    main()
