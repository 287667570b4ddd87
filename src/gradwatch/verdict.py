"""The verdict on a run's gradients and training, and advice for a person. Torch-free.

The verdict words:

``vanishing``   the input side gets far less gradient than the output side (first/last
                ratio below the band), or its updates are negligible next to the other layers'.
``exploding``   the input side gets far more (ratio above the band), or activations grow
                tenfold with depth.
``non-finite``  a gradient became NaN or inf.
``healthy``     none of the above.

A network whose gradients are within the band but that does not learn (its loss does not
fall, its activations have collapsed: ReLU units off for every example, saturated
sigmoid/tanh units, activations shrinking with depth; or its updates are negligible) is
*stalled*: ``healthy`` would hide the failure, and DESIGN.md's contract keeps the four words
above, so it is judged ``vanishing`` (the learning signal does not get through) with
``Diagnosis.stalled`` set, and its advice says what stalled and what to do instead of
repeating the size-of-gradient fixes it may already have.

The band (:data:`VANISHING_RATIO`, :data:`EXPLODING_RATIO`) and the advice live here once;
the callback and the report import them.

Signals (all optional, keyword-only; a signal that is ``None`` or empty is not judged):

``loss_start``, ``loss_end``
    The training loss at the start and at the end of training: the callback feeds the mean
    of the first few logged ``train/loss`` values (the first logged step at least) and the
    mean of the last few (e.g. the last epoch's). The loss *does not fall* when
    ``loss_end > (1 - MIN_LOSS_DROP) * loss_start``.
``chance_loss``
    The loss of a constant prediction, ``ln(num_classes)`` for cross-entropy. A final loss
    ``>= CHANCE_LOSS_SHARE * chance_loss`` is *at chance*.
``update_ratios``
    Per layer, input side first: the norm of an optimizer step's change of the layer's
    weights divided by their norm (``update_ratio/<layer>``), e.g. the median over the
    logged steps of the second half of training. *Negligible* when the median over layers
    is below :data:`NEGLIGIBLE_UPDATE`; the input side is *starved* when the first layer's
    is below :data:`STARVED_UPDATE` times that median (Adam hides vanishing gradients from
    the update's size until they fall under its epsilon; this catches it then).
``dead``
    Per ReLU layer, input side first: the share of its units that are zero for every
    example of the batch (``activation/<layer>/dead``), averaged over the logged steps.
    *Collapsed* when the mean over layers is at least :data:`DEAD_SHARE`. A unit that is
    off for every one of a batch's examples means the examples' representations have
    nearly the same direction (at init, independent inputs would make this almost
    impossible), so the network computes nearly the same function of every input.
``saturation``
    Per sigmoid/tanh layer, input side first: the share of outputs within 2% of either end
    of the range (``activation/<layer>/saturation``), averaged over the logged steps.
    *Saturated* when the mean over layers is at least :data:`SATURATED_SHARE`.
``activation_std``
    Per activation layer, input side first, at the first logged step (initialization): the
    standard deviation of the layer's output (``activation/<layer>/std``). The trend is
    the median over the last quarter of the layers over the median over the first quarter
    (the last layer's over the first's, up to 4 layers): *shrinking* below
    :data:`STD_SHRINK`, *growing* above :data:`STD_GROWTH`.
``batchnorm``
    The network has batch normalization layers (the advice then explains BatchNorm's
    explosion in plain deep networks).
``ours``
    ``True``: advice names this project's config keys (``model.net.init=...``);
    ``False``: the generic form, for any PyTorch project.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

#: The healthy band of the first/last gradient-norm ratio: below it vanishing, above it exploding.
VANISHING_RATIO = 1e-2
EXPLODING_RATIO = 1e2

#: The loss must fall by at least this share of its starting value.
MIN_LOSS_DROP = 0.1
#: A final loss at least this share of the chance loss (ln C) is at chance.
CHANCE_LOSS_SHARE = 0.95
#: Median update ratio (|step| / |weights|) below this: the optimizer barely moves the weights.
NEGLIGIBLE_UPDATE = 1e-6
#: First layer's update ratio below this times the median layer's: the input side is starved.
STARVED_UPDATE = 1e-2
#: Mean share of ReLU units off for the whole batch at or above this: representations collapsed.
DEAD_SHARE = 0.25
#: Mean share of saturated sigmoid/tanh outputs at or above this.
SATURATED_SHARE = 0.25
#: The activations' std trend with depth at init (see ``activation_std``) outside these.
STD_SHRINK = 0.1
STD_GROWTH = 10.0

VERDICTS = ("vanishing", "exploding", "non-finite", "healthy")

# Each fix in two forms: this project's overrides, and plain words for any project.
_FIXES = {
    "relu_he": (
        "use ReLU with He init (model.net.activation=relu model.net.init=kaiming_normal)",
        "use ReLU with He (Kaiming, fan_in) initialization",
    ),
    "batchnorm": ("add BatchNorm (model.net.norm=batch)", "add batch normalization"),
    "residual": (
        "use residual connections for deep nets (experiment=residual, or "
        "model.net.residual=true model.net.branch_init=zero|rezero|fixup without a norm)",
        "use residual connections, with each branch starting at zero for very deep nets "
        "(zero-init last layer, ReZero, Fixup)",
    ),
    "clip": ("clip gradients (trainer.gradient_clip_val=1.0)", "clip gradients (norm 1.0)"),
    "lr": ("lower the learning rate (model.optimizer.lr)", "lower the learning rate"),
    "scale": ("shrink the initial weights (model.net.init_scale)", "shrink the initial weights"),
}


def _fix(name: str, ours: bool) -> str:
    return _FIXES[name][0 if ours else 1]


def _batchnorm_explosion(ours: bool) -> str:
    skips = "experiment=residual" if ours else "skip connections around the normalized layers"
    return (
        " With BatchNorm and no skip connections this is expected at init: in a plain deep "
        "network, batch normalization makes gradients grow exponentially with depth whatever "
        "the activation or the weights' scale (Yang et al. 2019, \"A Mean Field Theory of "
        "Batch Normalization\"). Each BatchNorm layer divides by its batch's standard "
        "deviation and removes the batch mean, and the backward pass of that normalization, "
        "composed with the layer and the activation, multiplies the gradient by a factor above "
        "1 (the smaller the batch, the larger), once per layer. "
        f"Put the BatchNorm inside residual blocks ({skips}) or use fewer layers; "
        f"{_fix('clip', ours)} only bounds the step."
    )


def _nonfinite_advice(layer: str | None, step: int | None, ours: bool) -> str:
    return (
        f"Gradients became NaN or infinite (first in layer {layer!r} at step {step}). "
        f"{_fix('lr', ours).capitalize()}, {_fix('clip', ours)} or {_fix('batchnorm', ours)}."
    )


def _advice(verdict: str, ratio: float, reasons: list[str], ours: bool, batchnorm: bool) -> str:
    f = lambda name: _fix(name, ours)  # noqa: E731
    if reasons:  # a signal, not the ratio, decided it
        said = (
            f"Gradients reach the first layer at {ratio:.1e} of the last layer's (within the "
            f"band), but {'; '.join(reasons)}."
        )
    elif verdict == "vanishing":
        said = (
            f"The input-side layers get {ratio:.1e} of the output layer's gradient, so they "
            "barely learn."
        )
    elif verdict == "exploding":
        said = f"The input-side layers get {ratio:.1e} times the output layer's gradient."
    else:
        return (
            f"Gradients reach the first layer at {ratio:.1e} of the last layer's magnitude, "
            "within the healthy band: every layer gets a learning signal."
        )
    if verdict == "vanishing":
        return (
            f"{said} As the article advises: {f('relu_he')}, {f('batchnorm')}, and {f('residual')}."
        )
    if batchnorm:
        return f"{said}{_batchnorm_explosion(ours)}"
    return f"{said} {f('clip').capitalize()}, {f('lr')}, {f('batchnorm')} or {f('scale')}."


@dataclass(frozen=True)
class Diagnosis:
    verdict: str
    ratio: float
    advice: str
    #: Why a signal other than the ratio decided the verdict (empty when only the ratio did).
    reasons: tuple[str, ...] = ()
    #: The gradients are within the band but the network does not learn (judged vanishing).
    stalled: bool = False


def _mean(values: Sequence[float] | None) -> float | None:
    finite = [v for v in values or () if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else None


def _stall_reasons(
    loss_start: float | None,
    loss_end: float | None,
    chance_loss: float | None,
    update_ratios: Sequence[float] | None,
    dead: Sequence[float] | None,
    saturation: Sequence[float] | None,
    activation_std: Sequence[float] | None,
) -> tuple[list[str], list[str], list[str]]:
    """(vanishing, exploding, stalled) reasons from the signals, each a measured sentence."""
    vanishing: list[str] = []
    exploding: list[str] = []
    stalled: list[str] = []
    updates = [u for u in update_ratios or () if u is not None and math.isfinite(u)]
    if updates:
        median = statistics.median(updates)
        if median < NEGLIGIBLE_UPDATE:
            stalled.append(
                f"the optimizer's steps are negligible: median update ratio {median:.1e} "
                f"(< {NEGLIGIBLE_UPDATE:.0e}; about 1e-3 is typical for Adam)"
            )
        elif updates[0] < STARVED_UPDATE * median:
            vanishing.append(
                f"the first layer's update ratio is {updates[0]:.1e}, "
                f"{updates[0] / median:.1e} of the median layer's ({median:.1e})"
            )
    stds = [s for s in activation_std or () if s is not None and math.isfinite(s)]
    # The trend compares the medians of the first and last quarter of the layers, so one
    # odd layer does not make it: a stem in front of Fixup's down-scaled branches is not a
    # signal that shrinks on its way to the classifier.
    k = math.ceil(len(stds) / 4)
    head, tail = (statistics.median(stds[:k]), statistics.median(stds[-k:])) if stds else (0, 0)
    if len(stds) >= 2 and head > 0:
        trend = tail / head
        ends = (
            f"std {head:.2g} at the first activation, {tail:.2g} at the last (x{trend:.2g})"
            if k == 1
            else f"std {head:.2g} over the first {k} activation layers (median), {tail:.2g} "
            f"over the last {k} (x{trend:.2g})"
        )
        if trend > STD_GROWTH:
            exploding.append(f"activations grow with depth: {ends}")
        elif trend < STD_SHRINK:
            stalled.append(
                f"activations shrink with depth: {ends}, so little of the input reaches "
                "the classifier"
            )
    collapse = (
        (
            _mean(dead),
            DEAD_SHARE,
            "of the ReLU units (mean over layers) are zero for every example of a batch: the "
            "examples' representations have collapsed onto nearly one direction, so every "
            "input gets nearly the same output",
        ),
        (
            _mean(saturation),
            SATURATED_SHARE,
            "of the sigmoid/tanh outputs (mean over layers) sit on the flat ends of the curve, "
            "where the derivative is near zero",
        ),
    )
    for share, threshold, what in collapse:
        if share is not None and share >= threshold:
            stalled.append(f"{share:.0%} {what}")
    if loss_start is not None and loss_end is not None and math.isfinite(loss_start):
        if not math.isfinite(loss_end) or loss_end > (1 - MIN_LOSS_DROP) * loss_start:
            stalled.append(
                f"the training loss did not fall: {loss_start:.3g} at the start, "
                f"{loss_end:.3g} at the end"
            )
        elif chance_loss is not None and loss_end >= CHANCE_LOSS_SHARE * chance_loss:
            stalled.append(
                f"the training loss ends at {loss_end:.3g}, the loss of a constant "
                f"prediction ({chance_loss:.3g})"
            )
    return vanishing, exploding, stalled


def _stalled_advice(reasons: list[str], ratio: float, ours: bool) -> str:
    f = lambda name: _fix(name, ours)  # noqa: E731
    collapsed = any(
        key in r for r in reasons for key in ("ReLU units", "flat ends", "shrink with depth")
    )
    said = (
        f"Gradients reach the first layer at {ratio:.1e} of the last layer's (within the "
        f"band), but the network is not learning: {'; '.join(reasons)}."
    )
    if collapsed:
        return (
            f"{said} A deep plain network can keep the gradient's size and still lose the "
            "differences between its inputs: each layer makes the examples' representations "
            "more alike, until the last layers see nearly one input and the gradient points "
            f"the same way for every example. Fix: {f('residual')}, {f('batchnorm')}, or use "
            "fewer or wider layers."
        )
    return f"{said} Fix: {f('lr')}, {f('residual')} or {f('batchnorm')}."


def diagnose(
    ratios: list[float],
    vanishing_ratio: float = VANISHING_RATIO,
    exploding_ratio: float = EXPLODING_RATIO,
    nonfinite_layer: str | None = None,
    nonfinite_step: int | None = None,
    *,
    loss_start: float | None = None,
    loss_end: float | None = None,
    chance_loss: float | None = None,
    update_ratios: Sequence[float] | None = None,
    dead: Sequence[float] | None = None,
    saturation: Sequence[float] | None = None,
    activation_std: Sequence[float] | None = None,
    batchnorm: bool = False,
    ours: bool = True,
) -> Diagnosis:
    """Judge a run by its first/last gradient-norm ratios and, when given, the signals.

    The ratio is the geometric median over the logged steps (one odd step does not decide
    the verdict); any non-finite gradient decides it outright; then a ratio outside the
    band; then the signals (see the module docstring for their exact definitions).
    """
    if nonfinite_layer is not None:
        advice = _nonfinite_advice(nonfinite_layer, nonfinite_step, ours)
        return Diagnosis("non-finite", math.nan, advice)
    # A ratio of 0 is a first-layer gradient that underflowed (the extreme of vanishing) and
    # inf an output-layer gradient of 0: both count, at the ends of the log scale.
    logs = [math.log(r) if r > 0 else -math.inf for r in ratios if not math.isnan(r) and r >= 0]
    ratio = math.exp(statistics.median(logs)) if logs else math.nan
    vanishing, exploding, stalled = _stall_reasons(
        loss_start, loss_end, chance_loss, update_ratios, dead, saturation, activation_std
    )
    if ratio < vanishing_ratio:
        verdict, reasons = "vanishing", []
    elif ratio > exploding_ratio:
        verdict, reasons = "exploding", []
    elif vanishing:
        verdict, reasons = "vanishing", vanishing
    elif exploding:
        verdict, reasons = "exploding", exploding
    elif stalled:
        verdict, reasons = "stalled", stalled
    elif not logs:
        return Diagnosis("healthy", math.nan, "No gradient norms were recorded.")
    else:
        verdict, reasons = "healthy", []
    if verdict == "stalled":
        advice = _stalled_advice(reasons, ratio, ours)
        return Diagnosis("vanishing", ratio, advice, tuple(reasons), stalled=True)
    advice = _advice(verdict, ratio, reasons, ours, batchnorm)
    return Diagnosis(verdict, ratio, advice, tuple(reasons))
