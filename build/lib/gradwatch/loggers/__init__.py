"""Logger factories for the ``logger`` config group (TensorBoard, CSV and W&B), and the run's
config as every logger's hyperparameters."""

from gradwatch.loggers.hparams import log_run_config
from gradwatch.loggers.tensorboard import BatchedTensorBoardLogger
from gradwatch.loggers.wandb_run import finish_wandb, wandb_logger

__all__ = ["BatchedTensorBoardLogger", "finish_wandb", "log_run_config", "wandb_logger"]
