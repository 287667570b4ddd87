"""DashboardCallback: the verdict where people look (TensorBoard's TEXT and HPARAMS tabs, the
W&B run summary) and W&B charts of every layer's gradient norm."""

from __future__ import annotations

import math
from pathlib import Path
from time import monotonic
from typing import Any

import lightning as L
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from gradwatch.callbacks.grad_norm import GradientNormCallback
from gradwatch.loggers.hparams import (
    FINAL_RATIO,
    INITIAL_RATIO,
    JUDGED_RATIO,
    VERDICT_CODE,
    VERDICT_CODES,
)
from gradwatch.run.files import GRAD_NORMS_FILE
from gradwatch.verdict import Diagnosis

#: The running verdict is judged again at most this often (seconds).
JUDGE_EVERY_S = 1.0

#: W&B chart keys: every layer's log10 gradient norm against the step, and against depth.
LAYERS_CHART = "charts/grad_norm_per_layer"
DEPTH_CHART = "charts/grad_norm_vs_depth"


def verdict_markdown(diagnosis: Diagnosis, step: int) -> str:
    """The verdict as TensorBoard's TEXT tab shows it (Markdown)."""
    ratio = "n/a" if math.isnan(diagnosis.ratio) else f"{diagnosis.ratio:.2e}"
    return (
        f"**{diagnosis.verdict}** at step {step} (first/last gradient-norm ratio, geometric "
        f"median over the logged steps: {ratio})\n\n{diagnosis.advice}"
    )


class DashboardCallback(L.Callback):
    """Puts the ``GradientNormCallback``'s verdict where people look, through the loggers.

    - TensorBoard: the verdict and its advice as text (tag ``verdict``, TEXT tab), written
      when the verdict changes (looked at most once a second) and at the end of fit; at
      the end, the scalars
      ``verdict/initial_first_last_ratio``, ``verdict/final_first_last_ratio``,
      ``verdict/first_last_ratio`` (the judged median) and ``verdict/code`` (-1 vanishing,
      0 healthy, 1 exploding, 2 non-finite) that the HPARAMS tab shows beside each run's
      config (every logger gets these scalars).
    - W&B: the W&B run summary holds ``diagnosis``, ``advice`` and the ratios (the keys of
      ``GradientNormCallback.summary()``), updated when the verdict changes; at the end of
      fit two line charts:
      every layer's log10 gradient norm against the step (``charts/grad_norm_per_layer``)
      and against depth at the first and last logged step (``charts/grad_norm_vs_depth``).

    It measures nothing: it reads the ``GradientNormCallback`` among the trainer's callbacks
    (and its ``grad_norms.csv`` for the W&B charts) and does nothing without one. Only rank
    zero logs.

    Example::

        trainer = L.Trainer(callbacks=[GradientNormCallback(), DashboardCallback()])

    Args:
        chart_points: at most this many steps per layer in the W&B per-layer chart (evenly
            thinned); the depth chart always has every layer.
    """

    def __init__(self, chart_points: int = 200) -> None:
        if isinstance(chart_points, bool) or not isinstance(chart_points, int) or chart_points < 2:
            raise ValueError(f"chart_points must be an integer >= 2, got {chart_points!r}.")
        self.chart_points = chart_points
        self._grad: GradientNormCallback | None = None
        self._seen = 0  # logged ratios when the verdict was last judged
        self._judged_at = -math.inf
        self._shown: tuple[str, str] | None = None  # (verdict, advice) last logged

    def _find(self, trainer: L.Trainer) -> GradientNormCallback | None:
        return next((c for c in trainer.callbacks if isinstance(c, GradientNormCallback)), None)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._grad = self._find(trainer)
        self._seen, self._judged_at = 0, -math.inf
        self._shown = None

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        # Judging reads every signal (0.15 ms on a small net; with several optimizers even
        # counting the logged ratios judges each one): at most every JUDGE_EVERY_S seconds,
        # still more often than TensorBoard reloads, so the step at which a new verdict is
        # shown depends on the clock. The end of fit judges again whatever the time.
        now = monotonic()
        if self._grad is None or now - self._judged_at < JUDGE_EVERY_S:
            return
        grad, self._judged_at = self._grad, now
        if len(grad.ratios) == self._seen:  # nothing logged since
            return
        self._seen = len(grad.ratios)
        diagnosis = grad.diagnosis()
        if self._shown is None or diagnosis.verdict != self._shown[0]:
            self._show(trainer, diagnosis)

    def _show(self, trainer: L.Trainer, diagnosis: Diagnosis) -> None:
        """The verdict to TensorBoard's text and W&B's summary."""
        assert self._grad is not None
        self._shown = (diagnosis.verdict, diagnosis.advice)
        step = self._grad.last_step if self._grad.last_step is not None else trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("verdict", verdict_markdown(diagnosis, step), step)
            elif isinstance(logger, WandbLogger):
                summary = {**self._grad.summary(), "median_first_last_ratio": diagnosis.ratio}
                logger.experiment.summary.update(_finite(summary))

    def _final(self, trainer: L.Trainer) -> None:
        grad = self._grad
        if grad is None or not grad.ratios:
            return
        diagnosis = grad.diagnosis()
        if self._shown != (diagnosis.verdict, diagnosis.advice):
            self._show(trainer, diagnosis)
        summary = grad.summary()
        metrics = {
            INITIAL_RATIO: summary["initial_first_last_ratio"],
            FINAL_RATIO: summary["final_first_last_ratio"],
            JUDGED_RATIO: diagnosis.ratio,
            VERDICT_CODE: VERDICT_CODES.get(diagnosis.verdict),
        }
        # A non-finite ratio has no point on a chart; verdict/code says non-finite.
        metrics = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    @rank_zero_only
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # After every callback's on_fit_end: grad_norms.csv is complete and closed.
        if stage != "fit" or self._grad is None:
            return
        self._final(trainer)
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if wandb_loggers:
            self._wandb_charts(trainer, wandb_loggers)
        self._grad = None

    @rank_zero_only
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        try:  # what the run saw before it stopped; never hides the exception itself
            self._final(trainer)
        except Exception as err:
            rank_zero_warn(f"DashboardCallback could not log the verdict: {err!r}")
        self._grad = None

    def _wandb_charts(self, trainer: L.Trainer, loggers: list[Logger]) -> None:
        from gradwatch.plots import read_grad_norms

        assert self._grad is not None
        path = Path(self._grad.dirpath or trainer.default_root_dir) / GRAD_NORMS_FILE
        if not path.is_file():
            return
        layers = read_grad_norms(path)
        if not layers:
            return
        import wandb

        per_layer = [_thinned(layer.steps, layer.norms, self.chart_points) for layer in layers]
        first_step = min(layer.steps[0] for layer in layers)
        last_step = max(layer.steps[-1] for layer in layers)
        profiles = {  # step -> (depths, log10 norms) of the layers logged at that step
            f"step {step}": _profile(layers, step)
            for step in dict.fromkeys((first_step, last_step))
        }
        charts = {
            LAYERS_CHART: wandb.plot.line_series(
                xs=[xs for xs, _ in per_layer],
                ys=[ys for _, ys in per_layer],
                keys=[layer.name for layer in layers],
                title="log10 gradient norm per layer",
                xname="step",
            ),
            DEPTH_CHART: wandb.plot.line_series(
                xs=[xs for xs, _ in profiles.values()],
                ys=[ys for _, ys in profiles.values()],
                keys=list(profiles),
                title="log10 gradient norm vs depth (1 = input side)",
                xname="depth",
            ),
        }
        for logger in loggers:
            logger.log_metrics(charts, step=trainer.global_step)


def _log10(value: float | None) -> float | None:
    return math.log10(value) if value is not None and 0 < value < math.inf else None


def _thinned(steps: list[int], norms: list[float], points: int) -> tuple[list, list]:
    """At most ``points`` (step, log10 norm) pairs, evenly spread, the last one kept."""
    keep = range(len(steps))
    if len(steps) > points:
        stride = math.ceil(len(steps) / points)
        keep = [*range(0, len(steps) - 1, stride), len(steps) - 1]
    pairs = [(steps[i], _log10(norms[i])) for i in keep]
    pairs = [(s, v) for s, v in pairs if v is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _profile(layers: list, step: int) -> tuple[list[int], list[float]]:
    """(depths, log10 norms) of the layers with a positive finite norm at ``step``."""
    pairs = []
    for layer in layers:
        if step in layer.steps:
            value = _log10(layer.norms[layer.steps.index(step)])
            if value is not None:
                pairs.append((layer.depth, value))
    return [d for d, _ in pairs], [v for _, v in pairs]


def _finite(summary: dict[str, Any]) -> dict[str, Any]:
    """W&B summary values: non-finite floats as strings ("nan", "inf")."""
    return {
        k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in summary.items()
    }
