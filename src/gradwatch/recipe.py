"""What a run does: build -> fit -> test -> report (``python -m gradwatch.train`` calls
:func:`train` for a run, or for each job of a multirun).

The run's lifecycle (lock, config checks, resume, Ctrl-C/SIGTERM, full disks, summary.json)
is :class:`gradwatch.run.lifecycle.Run`; this file only says what a run does.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from gradwatch.loggers import log_run_config
from gradwatch.run.allocator import keep_freed_memory
from gradwatch.run.cuda_probe import skip_missing_nvml
from gradwatch.run.heap import frozen_heap
from gradwatch.run.lifecycle import Run
from gradwatch.run.resume import continue_csv_logger


def build_model(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    """The datamodule and the LightningModule around ``model.net``, seeded."""
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    torch.set_flush_denormal(bool(cfg.get("flush_denormal", False)))
    if cfg.get("keep_freed_memory", True):
        keep_freed_memory()  # no page faults on memory each step frees and the next reuses
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    shape = {"input_shape": datamodule.input_shape, "num_classes": datamodule.num_classes}
    net = instantiate(cfg.model.net, **shape)
    module_cfg = OmegaConf.masked_copy(cfg.model, [k for k in cfg.model if k != "net"])
    return datamodule, instantiate(module_cfg, net=net, num_classes=datamodule.num_classes)


def build_trainer(
    cfg: DictConfig, callbacks: list[L.Callback] | None = None, log_from: int | None = None
) -> L.Trainer:
    """The trainer with the configured callbacks (plus ``callbacks``) and loggers; a
    continued run directory's logs go on at step ``log_from``."""
    configured = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not cfg.trainer.get("enable_progress_bar", True):  # the switch; callbacks say the look
        configured = [c for c in configured if not isinstance(c, ProgressBar)]
    loggers = _loggers(cfg, log_from)
    log_run_config(loggers, cfg)  # dashboards: the resolved config as hyperparameters
    skip_missing_nvml()  # no failing NVML dlopen in every optimizer step on CPU machines
    return instantiate(
        cfg.trainer, callbacks=[*configured, *(callbacks or [])], logger=loggers or False
    )


def _loggers(cfg: DictConfig, log_from: int | None) -> list[Any]:
    loggers = []
    for item in (cfg.get("logger") or {}).values():
        if item is None:
            continue
        tensorboard = str(item.get("_target_", "")).endswith("TensorBoardLogger")
        # TensorBoard hides what the interrupted launch logged past the checkpoint.
        extra = {"purge_step": log_from} if tensorboard and log_from is not None else {}
        logger = instantiate(item, **extra)
        if isinstance(logger, CSVLogger) and log_from is not None and rank_zero_only.rank == 0:
            continue_csv_logger(logger, log_from)
        loggers.append(logger)
    return loggers


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one run; returns its summary (summary.json is written however it ends)."""
    with Run(cfg) as run:  # lock, config checks, the checkpoint to resume from
        # Data and model.
        datamodule, model = build_model(cfg)
        # A checkpoint to resume from must fit this model; then the run says `running`.
        run.start(model)
        # Callbacks, loggers and trainer; a continued run's logs go on from its checkpoint.
        trainer = run.watch(build_trainer(cfg, run.callbacks, run.log_from))
        # Fit, then test, with the garbage collector's full passes skipping what outlives them.
        with frozen_heap():
            run.fit(model, datamodule)
            metrics = dict(trainer.callback_metrics)
            if cfg.get("test"):
                trainer.test(model, datamodule=datamodule, verbose=False)
                metrics.update(trainer.callback_metrics)
        # Record and report.
        return run.completed(metrics)
