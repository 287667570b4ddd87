"""Send histograms and figures to whichever loggers are active (TensorBoard, W&B).

Scalars go through every logger's ``log_metrics``; histograms and images have no common
Lightning API, so each known logger gets its native call and the others are skipped.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from tensorboard.compat.proto.summary_pb2 import Summary


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


#: PNG colour type (byte 25 of the file) -> TensorBoard's colorspace (channels).
PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def png_image_summary(tag: str, png: bytes) -> Summary:
    """A TensorBoard image summary holding ``png`` as it is: no decoding, no re-encoding."""
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    image = Summary.Image(
        height=height, width=width, colorspace=PNG_CHANNELS[png[25]], encoded_image_string=png
    )
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def log_figure(loggers: Iterable[Logger], tag: str, png: Path, step: int) -> None:
    """A figure saved as ``png`` as an image on TensorBoard and W&B.

    The PNG file itself is logged: drawing a figure again, or decoding and re-encoding its
    PNG (``add_image``'s path), costs far more.
    """
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            summary = png_image_summary(tag, png.read_bytes())
            logger.experiment._get_file_writer().add_summary(summary, step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(tag, [str(png)], step=step)
