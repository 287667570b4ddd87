"""A run's configuration as every logger's hyperparameters, and the final metrics beside them.

``log_run_config(loggers, cfg)`` (called by ``gradwatch.train``) gives every logger the
resolved Hydra config with flattened keys (``model.net.depth``, ``model.optimizer.lr``, ...)
plus three short names: ``experiment``, ``dataset`` and ``optimizer``. W&B keeps all of it as
the run's config; TensorBoard's HPARAMS tab shows the keys of :data:`HPARAMS` next to the
metrics of :data:`HPARAMS_METRICS`. Kept free of torch, TensorBoard and W&B.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: The HPARAMS tab's hyperparameter columns (``logger.tensorboard.hparams`` replaces them).
HPARAMS = (
    "experiment",
    "dataset",
    "model.net.depth",
    "model.net.width",
    "model.net.activation",
    "model.net.init",
    "model.net.init_scale",
    "model.net.norm",
    "model.net.residual",
    "optimizer",
    "model.optimizer.lr",
    "data.batch_size",
    "seed",
    "trainer.max_epochs",
    "trainer.gradient_clip_val",
)
#: The verdict as a number, for the HPARAMS tab (its metrics are numbers).
VERDICT_CODES = {"vanishing": -1.0, "healthy": 0.0, "exploding": 1.0, "non-finite": 2.0}
#: Scalars logged once, at the end of fit (``DashboardCallback``), for the HPARAMS tab.
INITIAL_RATIO = "verdict/initial_first_last_ratio"
FINAL_RATIO = "verdict/final_first_last_ratio"
JUDGED_RATIO = "verdict/first_last_ratio"
VERDICT_CODE = "verdict/code"
#: The HPARAMS tab's metric columns: (scalar tag, column title); each shows the tag's last value.
HPARAMS_METRICS = (
    ("val/acc", "val acc"),
    ("test/acc", "test acc"),
    ("val/loss", "val loss"),
    (INITIAL_RATIO, "first/last ratio, first step"),
    (FINAL_RATIO, "first/last ratio, last step"),
    (JUDGED_RATIO, "first/last ratio judged (median)"),
    (VERDICT_CODE, "verdict: -1 vanishing, 0 healthy, 1 exploding, 2 non-finite"),
)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"net": {"depth": 10}}}`` -> ``{"model.net.depth": 10}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _choices() -> dict[str, str]:
    """Hydra's config-group choices of this run (``data: digits``, ...), when under Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return {k: v for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
    except (ImportError, ValueError):
        return {}


def run_config(cfg: Any) -> dict[str, Any]:
    """The resolved config, flattened, with ``experiment``, ``dataset`` and ``optimizer``."""
    from omegaconf import OmegaConf

    try:
        tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception:  # an interpolation that cannot resolve here: its text, never a failed run
        tree = OmegaConf.to_container(cfg, resolve=False)
    flat = flatten(tree)
    choices = _choices()
    data_target = str(flat.get("data._target_", "")).rsplit(".", 1)[-1]
    short = {
        "experiment": choices.get("experiment", flat.get("task_name")),
        "dataset": choices.get("data", data_target.removesuffix("DataModule").lower() or None),
        "optimizer": str(flat.get("model.optimizer._target_", "")).rsplit(".", 1)[-1] or None,
    }
    return {**{k: v for k, v in short.items() if v is not None}, **flat}


def shown(config: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The ``keys`` of ``config`` that it has, in order."""
    return {key: config[key] for key in keys if key in config}


def log_run_config(loggers: Iterable[Any], cfg: Any) -> dict[str, Any]:
    """Every logger's ``log_hyperparams`` with :func:`run_config`; returns the config."""
    loggers = list(loggers)
    if not loggers:
        return {}
    config = run_config(cfg)
    for logger in loggers:
        logger.log_hyperparams(config)
    return config
