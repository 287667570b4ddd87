"""The article's quantitative claims, each checked against the sweep's measured numbers.

Every check returns a :class:`Claim` with a result: ``pass``, ``fail`` or ``not measured``
(the sweep has no job that can test it, e.g. no depth >= 100 in the small grid). Only
completed jobs count. The thresholds are the module constants below; claims.md states them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gradwatch.report.collect import Job
from gradwatch.report.figures import CHANCE_ACCURACY, HEALTHY_BAND, by_experiment
from gradwatch.report.tables import fmt_acc, fmt_ratio
from gradwatch.report.theory import (
    SIGMOID_MAX_DERIVATIVE,
    deep_network_gradients,
    mean_tanh_derivative,
)

# The callback's default verdict band: a first/last ratio inside it is "healthy".
# A network "trains" when its validation accuracy reaches this (digits: chance is 0.1).
TRAINED_ACCURACY = 0.9
# "Untrainable": validation accuracy within this of chance.
CHANCE_MARGIN = 0.1

PASS, FAIL, NOT_MEASURED = "pass", "fail", "not measured"
#: Accuracies are float32 means: 243/270 is stored as 0.89999998. Compare with this slack.
ACCURACY_SLACK = 1e-6


@dataclass(frozen=True)
class Claim:
    quote: str  # the article's words
    check: str  # what was measured and the threshold
    result: str  # pass, fail or not measured
    evidence: str  # the measured numbers
    source: str = "sweep"  # "sweep" (measured here) or "theory" (the article's numpy demo)


def _runs(groups: dict[str, list[Job]], experiment: str) -> list[Job]:
    return groups.get(experiment, [])


def _at(job: Job) -> str:
    return f"depth {job.depth}"


def _list(jobs: list[Job], value: Callable[[Job], str]) -> str:
    return "; ".join(f"{_at(j)}: {value(j)}" for j in jobs)


def _ratio(job: Job) -> float | None:
    return job.initial_first_last_ratio


def _not_measured(quote: str, check: str, why: str, source: str = "sweep") -> Claim:
    return Claim(quote, check, NOT_MEASURED, why, source)


def sigmoid_10_layers_reduce_1e6(groups: dict[str, list[Job]]) -> Claim:
    quote = "A 10-layer sigmoid network can reduce gradients by a factor of 10^-6 or more."
    check = "sigmoid, depth 10: first/last gradient-norm ratio at step 0 <= 1e-6"
    runs = [j for j in _runs(groups, "sigmoid") if j.depth == 10 and _ratio(j) is not None]
    if not runs:
        return _not_measured(quote, check, "no completed sigmoid job at depth 10")
    ok = all(_ratio(j) <= 1e-6 for j in runs)
    return Claim(quote, check, PASS if ok else FAIL, _list(runs, lambda j: fmt_ratio(_ratio(j))))


def six_to_ten_orders(groups: dict[str, list[Job]]) -> Claim:
    quote = (
        "Layers near the input receive gradients that are 6-10 orders of magnitude smaller "
        "[than the output layer]."
    )
    check = "sigmoid, depth 10: -log10(first/last ratio at step 0) between 6 and 10"
    runs = [j for j in _runs(groups, "sigmoid") if j.depth == 10 and _ratio(j)]
    if not runs:
        return _not_measured(quote, check, "no completed sigmoid job at depth 10 with a ratio")
    orders = {j.job: -math.log10(_ratio(j)) for j in runs}
    ok = all(6 <= o <= 10 for o in orders.values())
    return Claim(quote, check, PASS if ok else FAIL, _list(runs, lambda j: f"{orders[j.job]:.1f}"))


def sigmoid_shrinks_exponentially(groups: dict[str, list[Job]]) -> Claim:
    quote = (
        "Sigmoid's max derivative is 0.25 ... the chain rule multiplies these small values "
        "across layers: the product shrinks exponentially with depth (0.25^10 = 9.5e-7)."
    )
    check = (
        "sigmoid, every depth: ratio at step 0 <= 0.25^depth, and a fit of log10(ratio) vs "
        "depth gives a per-layer factor <= 0.25 (a ratio of 0 is an underflow: counts as "
        "below the bound, left out of the fit)"
    )
    runs = [j for j in _runs(groups, "sigmoid") if _ratio(j) is not None]
    fit = [j for j in runs if _ratio(j) > 0 and math.isfinite(_ratio(j))]
    if len({j.depth for j in fit}) < 2:
        return _not_measured(quote, check, "needs completed sigmoid jobs at two or more depths")
    slope = np.polyfit([j.depth for j in fit], [math.log10(_ratio(j)) for j in fit], 1)[0]
    factor = 10**slope
    below = all(_ratio(j) <= SIGMOID_MAX_DERIVATIVE**j.depth for j in runs)
    evidence = (
        f"per-layer factor {factor:.3f} (fit over depths {sorted({j.depth for j in fit})}); "
        + _list(runs, lambda j: f"{fmt_ratio(_ratio(j))} vs 0.25^L = {0.25**j.depth:.1e}")
    )
    return Claim(quote, check, PASS if below and factor <= 0.25 else FAIL, evidence)


def deep_sigmoid_untrainable(groups: dict[str, list[Job]]) -> Claim:
    quote = "A 20-layer [sigmoid] network becomes essentially untrainable."
    check = (
        f"sigmoid, depth >= 20: validation accuracy <= chance + {CHANCE_MARGIN} "
        f"({CHANCE_ACCURACY + CHANCE_MARGIN:.1f})"
    )
    runs = [j for j in _runs(groups, "sigmoid") if j.depth >= 20 and j.val_acc is not None]
    if not runs:
        return _not_measured(quote, check, "no completed sigmoid job at depth >= 20")
    ok = all(j.val_acc <= CHANCE_ACCURACY + CHANCE_MARGIN for j in runs)
    return Claim(quote, check, PASS if ok else FAIL, _list(runs, lambda j: fmt_acc(j.val_acc)))


def _healthy_everywhere(groups, experiment: str, quote: str) -> Claim:
    low, high = HEALTHY_BAND
    check = f"{experiment}, every depth: ratio at step 0 within [{low:g}, {high:g}]"
    runs = [j for j in _runs(groups, experiment) if _ratio(j) is not None]
    if not runs:
        return _not_measured(quote, check, f"no completed {experiment} job")
    ok = all(low <= _ratio(j) <= high for j in runs)
    evidence = _list(runs, lambda j: f"{fmt_ratio(_ratio(j))} (val acc {fmt_acc(j.val_acc)})")
    return Claim(quote, check, PASS if ok else FAIL, evidence)


def _trained(job: Job) -> bool:
    return job.val_acc is not None and job.val_acc >= TRAINED_ACCURACY - ACCURACY_SLACK


def _label(job: Job) -> str:
    return f"{job.experiment} {fmt_acc(job.val_acc)}"


def _residual_jobs(groups: dict[str, list[Job]]) -> list[Job]:
    """Completed residual jobs with an accuracy, whatever their experiment."""
    return [j for g in groups.values() for j in g if j.residual and j.val_acc is not None]


def _trains(groups, min_depth: int, quote: str) -> Claim:
    """At every swept depth >= ``min_depth``, some residual network reaches the accuracy.

    Every residual job counts (the article's BatchNorm blocks and the branch inits that
    need no norm); a control that is meant to fail (e.g. residual blocks without a norm
    and a standard init) is listed but does not sink the claim when another residual net
    of the same depth trains.
    """
    check = (
        f"residual nets, every swept depth >= {min_depth}: the best validation accuracy "
        f">= {TRAINED_ACCURACY}"
    )
    runs = [j for j in _residual_jobs(groups) if j.depth >= min_depth]
    if not runs:
        return _not_measured(
            quote,
            check,
            f"no completed residual job at depth >= {min_depth} (try SWEEP=full or SWEEP=deep)",
        )
    plain = {j.depth: j for j in _plain_jobs(groups)}
    parts, ok = [], True
    for depth in sorted({j.depth for j in runs}):
        at = sorted((j for j in runs if j.depth == depth), key=lambda j: -j.val_acc)
        ok &= _trained(at[0])
        other = plain.get(depth)
        beside = f" (plain {other.experiment}: {fmt_acc(other.val_acc)})" if other else ""
        parts.append(f"depth {depth:,}: " + ", ".join(map(_label, at)) + beside)
    return Claim(quote, check, PASS if ok else FAIL, "; ".join(parts))


def _plain_jobs(groups: dict[str, list[Job]]) -> list[Job]:
    """Completed plain (no skip) jobs with an accuracy, the best one per depth last."""
    jobs = [j for g in groups.values() for j in g if j.residual is False and j.val_acc is not None]
    return sorted(jobs, key=lambda j: (j.depth, j.val_acc))


def _deepest_trained(jobs: list[Job]) -> Job | None:
    trained = [j for j in jobs if _trained(j)]
    return max(trained, key=lambda j: (j.depth, j.val_acc), default=None)


def deepest_plain_vs_residual(groups: dict[str, list[Job]]) -> Claim:
    quote = (
        "Skip connections in ResNets provide direct gradient pathways, allowing gradients to "
        "flow unchanged through shortcut connections."
    )
    check = (
        f"the deepest net that trains (val acc >= {TRAINED_ACCURACY}) with skips is deeper "
        "than the deepest without"
    )
    plain, residual = _plain_jobs(groups), _residual_jobs(groups)
    if not plain or not residual:
        return _not_measured(quote, check, "needs completed plain and residual jobs")

    def describe(job: Job | None, kind: str, jobs: list[Job]) -> str:
        if job is None:
            tried = sorted({j.depth for j in jobs})
            return f"{kind}: none trains (depths {', '.join(f'{d:,}' for d in tried)})"
        return (
            f"{kind}: {job.experiment} at depth {job.depth:,} (val acc {fmt_acc(job.val_acc)}, "
            f"ratio at step 0 {fmt_ratio(_ratio(job))})"
        )

    deep_plain, deep_residual = _deepest_trained(plain), _deepest_trained(residual)
    ok = deep_residual is not None and (
        deep_plain is None or deep_residual.depth > deep_plain.depth
    )
    evidence = (
        describe(deep_plain, "deepest plain", plain)
        + "; "
        + describe(deep_residual, "deepest residual", residual)
    )
    return Claim(quote, check, PASS if ok else FAIL, evidence)


def theory_claims() -> list[Claim]:
    demo = deep_network_gradients()
    power = SIGMOID_MAX_DERIVATIVE**10
    monotone = bool(np.all(np.diff(demo.gradients) > 0))
    tanh = mean_tanh_derivative()
    return [
        Claim(
            "A 10-layer network with average gradient values of 0.25 per layer results in "
            "0.25^10 = 0.00000095.",
            "the arithmetic",
            PASS if abs(power - 9.5e-7) / 9.5e-7 < 0.01 else FAIL,
            f"0.25^10 = {power:.3e}",
            "theory",
        ),
        Claim(
            "deep_network_gradients(): gradient magnitudes vanish across 10 sigmoid layers.",
            "the article's demo with the correct derivative a(1 - a): mean |gradient| grows "
            "monotonically from input to output",
            PASS if monotone else FAIL,
            f"layer 1: {demo.gradients[0]:.1e}, layer 10: {demo.gradients[-1]:.1e}, first/last "
            f"{demo.first_last_ratio:.1e} (the article's code, sigmoid applied twice: "
            f"{demo.article_gradients[0] / demo.article_gradients[-1]:.1e}); mean sigmoid "
            f"derivative {demo.mean_derivative:.3f} (the article's decay demo assumes ~0.2)",
            "theory",
        ),
        Claim(
            "The tanh function has a maximum derivative of 1, but in practice averages around 0.4.",
            "mean tanh'(z) over the units of a 10-layer width-128 Xavier-normal tanh MLP fed "
            "N(0, 1) inputs, at initialization: within 0.3-0.5",
            PASS if 0.3 <= tanh <= 0.5 else FAIL,
            f"mean tanh'(z) = {tanh:.2f}",
            "theory",
        ),
    ]


def check_claims(jobs: list[Job]) -> list[Claim]:
    groups = by_experiment(jobs)
    return [
        sigmoid_10_layers_reduce_1e6(groups),
        six_to_ten_orders(groups),
        sigmoid_shrinks_exponentially(groups),
        deep_sigmoid_untrainable(groups),
        _healthy_everywhere(
            groups,
            "relu",
            "ReLU has a derivative of 1 for positive inputs, preventing gradient decay; He "
            "initialization maintains gradient variance across layers.",
        ),
        _healthy_everywhere(
            groups, "tanh", "Xavier/Glorot initialization [for tanh] maintains gradient variance."
        ),
        _healthy_everywhere(
            groups, "batchnorm", "Batch normalization ... helps maintain gradient flow."
        ),
        _trains(groups, 20, "Use residual connections for very deep networks (>20 layers)."),
        _trains(
            groups,
            100,
            "Residual connections ... enabling networks with hundreds of layers to train "
            "effectively.",
        ),
        deepest_plain_vs_residual(groups),
        *theory_claims(),
    ]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_claims(claims: list[Claim], jobs: list[Job], path: Path, title: str) -> None:
    counts = {r: sum(c.result == r for c in claims) for r in (PASS, FAIL, NOT_MEASURED)}
    failed = [j for j in jobs if not j.completed]
    lines = [
        f"# {title}",
        "",
        f"{counts[PASS]} pass, {counts[FAIL]} fail, {counts[NOT_MEASURED]} not measured. "
        f"Measured on {sum(j.completed for j in jobs)} completed jobs"
        + (f" ({len(failed)} more did not complete: see summary.md)" if failed else "")
        + ". Ratio = first layer's gradient norm / output layer's, at step 0.",
        "",
        "| # | the article says | checked | result | measured |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, c in enumerate(claims, 1):
        result = c.result.upper() if c.result != NOT_MEASURED else c.result
        check = c.check if c.source == "sweep" else f"(theory) {c.check}"
        lines.append(
            f"| {i} | {_md_cell(c.quote)} | {_md_cell(check)} | **{result}** | "
            f"{_md_cell(c.evidence)} |"
        )
    lines += [
        "",
        f"Thresholds: healthy band {HEALTHY_BAND[0]:g} to {HEALTHY_BAND[1]:g} (the callback's "
        f"verdict band); trained: val acc >= {TRAINED_ACCURACY}; untrainable: val acc <= "
        f"chance ({CHANCE_ACCURACY}) + {CHANCE_MARGIN}. (theory) rows come from the article's "
        "numpy demos with the corrected sigmoid derivative (python -m gradwatch.report.theory).",
    ]
    path.write_text("\n".join(lines) + "\n")
