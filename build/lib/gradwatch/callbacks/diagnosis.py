"""The verdict on a run's gradients (vanishing / exploding / healthy / non-finite) and advice."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

#: The healthy band of the first/last gradient-norm ratio: below it vanishing, above it exploding.
VANISHING_RATIO = 1e-2
EXPLODING_RATIO = 1e2

ADVICE = {
    "vanishing": (
        "The input-side layers get {ratio:.1e} of the output layer's gradient, so they barely "
        "learn. As the article advises: use ReLU with He init (model.net.activation=relu "
        "model.net.init=kaiming_normal), add BatchNorm (model.net.norm=batch), and use residual "
        "connections for deep nets (experiment=relu, batchnorm or residual)."
    ),
    "exploding": (
        "The input-side layers get {ratio:.1e} times the output layer's gradient. Clip gradients "
        "(trainer.gradient_clip_val=1.0), lower the learning rate, add BatchNorm "
        "(model.net.norm=batch) or shrink the initial weights (model.net.init_scale)."
    ),
    "healthy": (
        "Gradients reach the first layer at {ratio:.1e} of the last layer's magnitude, within "
        "the healthy band: every layer gets a learning signal."
    ),
    "non-finite": (
        "Gradients became NaN or infinite (first in layer {layer!r} at step {step}). Lower the "
        "learning rate, clip gradients (trainer.gradient_clip_val=1.0) or use BatchNorm."
    ),
}


@dataclass(frozen=True)
class Diagnosis:
    verdict: str
    ratio: float
    advice: str


def diagnose(
    ratios: list[float],
    vanishing_ratio: float = VANISHING_RATIO,
    exploding_ratio: float = EXPLODING_RATIO,
    nonfinite_layer: str | None = None,
    nonfinite_step: int | None = None,
) -> Diagnosis:
    """Judge a run by the geometric median of its first/last gradient-norm ratios.

    The median over the logged steps keeps one odd step from deciding the verdict; any
    non-finite gradient decides it outright.
    """
    if nonfinite_layer is not None:
        advice = ADVICE["non-finite"].format(layer=nonfinite_layer, step=nonfinite_step)
        return Diagnosis("non-finite", math.nan, advice)
    # A ratio of 0 is a first-layer gradient that underflowed (the extreme of vanishing) and
    # inf an output-layer gradient of 0: both count, at the ends of the log scale.
    logs = [math.log(r) if r > 0 else -math.inf for r in ratios if not math.isnan(r) and r >= 0]
    if not logs:
        return Diagnosis("healthy", math.nan, "No gradient norms were recorded.")
    ratio = math.exp(statistics.median(logs))
    if ratio < vanishing_ratio:
        verdict = "vanishing"
    elif ratio > exploding_ratio:
        verdict = "exploding"
    else:
        verdict = "healthy"
    return Diagnosis(verdict, ratio, ADVICE[verdict].format(ratio=ratio))
