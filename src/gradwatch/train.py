"""Hydra entry point: compose -> instantiate -> fit -> test -> summary.json.

python -m gradwatch.train experiment=relu model.net.depth=20 trainer.max_epochs=5
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gradwatch.callbacks import GradientNormCallback
from gradwatch.console import print_report
from gradwatch.loggers import finish_wandb
from gradwatch.summary import update_summary
from gradwatch.sweep import multirun_job


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    return [instantiate(item) for item in (group or {}).values() if item is not None]


def _metric(metrics: dict[str, torch.Tensor], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one run; returns its summary. summary.json is written even on failure."""
    run_dir = Path(cfg.paths.output_dir)
    started = time.perf_counter()
    update_summary(
        run_dir,
        experiment=cfg.task_name,
        net=OmegaConf.to_container(cfg.model.net, resolve=True),
        status="running",
    )
    try:
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
        callbacks = _instantiate_group(cfg.get("callbacks"))
        trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=_instantiate_group(cfg.get("logger")) or False
        )
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = dict(trainer.callback_metrics)
        if cfg.get("test"):
            trainer.test(model, datamodule=datamodule, verbose=False)
            metrics.update(trainer.callback_metrics)
    except BaseException as err:
        update_summary(
            run_dir,
            status="failed",
            error=f"{type(err).__name__}: {err}",
            duration_s=time.perf_counter() - started,
        )
        raise
    finally:
        finish_wandb()  # so multirun jobs never share a W&B run
    summary = update_summary(
        run_dir,
        status="completed",
        val_acc=_metric(metrics, "val/acc"),
        test_acc=_metric(metrics, "test/acc"),
        duration_s=round(time.perf_counter() - started, 3),
    )
    if trainer.is_global_zero:
        grad_cb = next((c for c in callbacks if isinstance(c, GradientNormCallback)), None)
        print_report(summary, grad_cb, run_dir)
    summary["metrics"] = {k: float(v) for k, v in metrics.items()}
    return summary


@hydra.main(version_base="1.3", config_path="../../configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    with multirun_job():
        summary = train(cfg)
    # The metric a sweeper (Optuna) optimizes.
    return summary["metrics"].get(cfg.get("optimized_metric", "val/acc"))


if __name__ == "__main__":
    main()
