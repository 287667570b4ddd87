"""Logger factories for the ``logger`` config group (TensorBoard, CSV and W&B)."""

from gradwatch.loggers.tensorboard import BatchedTensorBoardLogger
from gradwatch.loggers.wandb_run import finish_wandb, wandb_logger

__all__ = ["BatchedTensorBoardLogger", "finish_wandb", "wandb_logger"]
