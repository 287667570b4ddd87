"""Send histograms and figures to whichever loggers are active (TensorBoard, W&B).

Scalars go through every logger's ``log_metrics``; histograms and images have no common
Lightning API, so each known logger gets its native call and the others are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger


def log_histograms(loggers: Iterable[Logger], values: dict[str, torch.Tensor], step: int) -> None:
    """One histogram per key: ``add_histogram`` on TensorBoard, ``wandb.Histogram`` on W&B."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            for tag, tensor in values.items():
                logger.experiment.add_histogram(tag, tensor.detach().float().cpu(), step)
        elif isinstance(logger, WandbLogger):
            import wandb

            histograms = {
                tag: wandb.Histogram(tensor.detach().float().cpu().numpy())
                for tag, tensor in values.items()
            }
            logger.log_metrics(histograms, step=step)


def log_figure(loggers: Iterable[Logger], tag: str, png: Path, step: int) -> None:
    """A figure saved as ``png`` as an image on TensorBoard and W&B.

    The PNG is read back rather than the figure re-rendered: drawing a figure costs far
    more than decoding its PNG.
    """
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            from matplotlib.image import imread

            rgb = imread(png)[..., :3]  # float in [0, 1], height x width x RGB(A)
            logger.experiment.add_image(tag, rgb, step, dataformats="HWC")
        elif isinstance(logger, WandbLogger):
            logger.log_image(tag, [str(png)], step=step)
