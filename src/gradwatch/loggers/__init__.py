"""Logger factories for the ``logger`` config group (TensorBoard, CSV and W&B)."""

from gradwatch.loggers.wandb_run import finish_wandb, wandb_logger

__all__ = ["finish_wandb", "wandb_logger"]
