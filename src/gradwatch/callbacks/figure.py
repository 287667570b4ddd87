"""NormsFigureCallback: the run's own figure of per-layer gradient norms over training."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from gradwatch.plots import plot_norms_over_training, read_grad_norms
from gradwatch.run.files import GRAD_NORMS_FILE


class NormsFigureCallback(L.Callback):
    """At the end of fit, draws ``grad_norms.csv`` (written by ``GradientNormCallback``) as
    each layer's gradient norm against the training step, log scale: the article's
    ``gradient_norms_training.png``.

    Example::

        trainer = L.Trainer(callbacks=[GradientNormCallback(log_every_n_steps=1),
                                       NormsFigureCallback()])

    Args:
        filename: the PNG's name in the run directory.
        title: the figure's title.
        dirpath: where ``grad_norms.csv`` is and the PNG goes; ``None``: the trainer's
            ``default_root_dir`` (the same default as ``GradientNormCallback``).
    """

    def __init__(
        self,
        filename: str = "gradient_norms_training.png",
        title: str = "Layer-wise gradient norms during training",
        dirpath: str | os.PathLike | None = None,
    ) -> None:
        if not str(filename).endswith(".png"):
            raise ValueError(f"filename must end in .png, got {filename!r}.")
        self.filename = filename
        self.title = title
        self.dirpath = dirpath
        self.path: Path | None = None

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run_dir = Path(self.dirpath or trainer.default_root_dir)
        csv_path = run_dir / GRAD_NORMS_FILE
        if not csv_path.is_file():
            return  # nothing was logged (e.g. no GradientNormCallback)
        self.path = run_dir / self.filename
        plot_norms_over_training(read_grad_norms(csv_path), save=self.path, title=self.title)
