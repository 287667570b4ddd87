"""The sweep's figures: gradient flow, ratio and accuracy vs depth, norms over training."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from matplotlib.ticker import NullLocator

from gradwatch.plots import plot_norms_over_training, plt, read_grad_norms
from gradwatch.report.collect import Job
from gradwatch.report.theory import SIGMOID_MAX_DERIVATIVE
from gradwatch.verdict import EXPLODING_RATIO, VANISHING_RATIO

#: The verdict's healthy band (gradwatch.verdict is torch-free: the report imports it).
HEALTHY_BAND = (VANISHING_RATIO, EXPLODING_RATIO)

# The article's order, then the deep sweep's (sweep=deep); other experiments follow
# alphabetically.
EXPERIMENT_ORDER = [
    "sigmoid",
    "tanh",
    "relu",
    "batchnorm",
    "residual",
    "deep_plain_sigmoid",
    "deep_plain_relu",
    "deep_standard",
    "deep_zero",
    "deep_rezero",
    "deep_fixup",
]
# Every bundled dataset (digits, MNIST, Fashion-MNIST, CIFAR-10) has ten classes.
CHANCE_ACCURACY = 0.1


def experiments(jobs: Iterable[Job]) -> list[str]:
    """The experiments of ``jobs``, the article's first."""
    names = {job.experiment for job in jobs}
    known = [n for n in EXPERIMENT_ORDER if n in names]
    return known + sorted(names - set(known))


def _color(experiment: str) -> object:
    """One color per known experiment; tab20 holds tab10's ten colors at even positions and
    a lighter twin of each at odd ones, used from the eleventh name on."""
    if experiment in EXPERIMENT_ORDER:
        index = EXPERIMENT_ORDER.index(experiment)
    else:  # stable across runs, unlike hash()
        index = len(EXPERIMENT_ORDER) + sum(map(ord, experiment)) % (20 - len(EXPERIMENT_ORDER))
    return plt.get_cmap("tab20")(2 * index if index < 10 else 2 * (index - 10) + 1)


def by_experiment(jobs: Iterable[Job]) -> dict[str, list[Job]]:
    """Completed jobs with a depth, grouped by experiment and sorted by depth."""
    groups: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        if job.completed and job.depth is not None:
            groups[job.experiment].append(job)
    order = experiments(job for group in groups.values() for job in group)
    return {name: sorted(groups[name], key=lambda j: j.depth) for name in order}


def flow_depth(jobs: list[Job], preferred: int = 10) -> int | None:
    """The depth the per-layer figures show: ``preferred`` (the article's 10) if the sweep has
    it, else the depth most experiments completed."""
    depths: dict[int, set[str]] = defaultdict(set)
    for job in jobs:
        if job.completed and job.depth is not None and job.grad_norms.exists():
            depths[job.depth].add(job.experiment)
    if not depths:
        return None
    if preferred in depths:
        return preferred
    return max(depths, key=lambda d: (len(depths[d]), -abs(d - preferred)))


def _jobs_at(jobs: list[Job], depth: int) -> list[Job]:
    """One completed job per experiment at ``depth`` (the first, by job number)."""
    chosen: dict[str, Job] = {}
    for job in jobs:
        if job.completed and job.depth == depth and job.grad_norms.exists():
            chosen.setdefault(job.experiment, job)
    return [chosen[name] for name in experiments(chosen.values())]


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gradient_flow(jobs: list[Job], depth: int, path: Path) -> None:
    """Per-layer gradient norm at the first logged step against layer position."""
    fig, ax = plt.subplots(figsize=(9, 5))
    for job in _jobs_at(jobs, depth):
        layers = read_grad_norms(job.grad_norms)
        if not layers:
            continue
        first_step = min(layer.steps[0] for layer in layers if layer.steps)
        points = [
            (layer.depth, layer.norms[layer.steps.index(first_step)])
            for layer in layers
            if first_step in layer.steps
        ]
        positions, norms = zip(*points)
        shown = [n if math.isfinite(n) and n > 0 else math.nan for n in norms]
        ax.plot(positions, shown, "o-", ms=3, color=_color(job.experiment), label=job.experiment)
    ax.set_yscale("log")
    ax.set_xlabel("layer (1 = closest to input; every module with parameters counts)")
    ax.set_ylabel("gradient norm at step 0 (log scale)")
    ax.set_title(f"Gradient flow at initialization, depth {depth}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)


def ratio_vs_depth(jobs: list[Job], path: Path) -> None:
    """First/last ratio (step 0 solid, end dashed) against depth, with the 0.25^L line.

    A ratio of exactly 0 (the first layer's gradient underflowed) is drawn as a triangle
    on the bottom edge.
    """
    groups = by_experiment(jobs)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    positive = [
        r
        for group in groups.values()
        for job in group
        for r in (job.initial_first_last_ratio, job.final_first_last_ratio)
        if r is not None and math.isfinite(r) and r > 0
    ]
    floor = min(positive, default=1e-10) / 10
    underflow = False
    for name, group in groups.items():
        depths = [j.depth for j in group]
        for attr, style, label in (
            ("initial_first_last_ratio", "o-", f"{name}, step 0"),
            ("final_first_last_ratio", "s--", f"{name}, end"),
        ):
            values = [getattr(j, attr) for j in group]
            shown = [
                v if v is not None and math.isfinite(v) and v > 0 else math.nan for v in values
            ]
            ax.plot(depths, shown, style, color=_color(name), label=label, alpha=0.9, ms=4)
            zeros = [d for d, v in zip(depths, values) if v == 0]
            if zeros:
                underflow = True
                ax.plot(zeros, [floor] * len(zeros), "v", color=_color(name), ms=9)
    all_depths = _depth_axis(ax, jobs)
    if all_depths:
        grid = np.geomspace(min(all_depths), max(all_depths), 200)
        # 0.25^L for L in the thousands is below float64's range: drawn where it exists.
        with np.errstate(under="ignore"):
            bound = SIGMOID_MAX_DERIVATIVE**grid
        bound[bound == 0] = np.nan
        ax.plot(grid, bound, ":", color="black", label="0.25^L (sigmoid bound)")
    ax.axhspan(*HEALTHY_BAND, color="tab:green", alpha=0.08, label="healthy band")
    ax.set_yscale("log")
    # The bound runs on below the smallest measured ratio: let it leave the axes there
    # rather than flatten against the bottom edge, where the underflow markers sit.
    top = ax.get_ylim()[1]
    ax.set_ylim(floor / 2, top)
    ax.set_xlabel("depth L (hidden layers, or residual blocks; log scale)")
    ax.set_ylabel("first/last gradient-norm ratio (log scale)")
    title = "First/last layer gradient ratio vs depth"
    if underflow:
        title += "\n(triangles on the bottom edge: ratio 0, the first layer's gradient underflowed)"
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)
    _save(fig, path)


def _depth_axis(ax, jobs: list[Job]) -> list[int]:
    """A log depth axis ticked at the swept depths (1 to 10,000 fit side by side)."""
    depths = sorted({j.depth for group in by_experiment(jobs).values() for j in group})
    ax.set_xscale("log")
    if depths:
        ax.set_xticks(depths, [f"{d:,}" for d in depths])
        ax.xaxis.set_minor_locator(NullLocator())
    return depths


def accuracy_vs_depth(jobs: list[Job], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, group in by_experiment(jobs).items():
        depths = [j.depth for j in group]
        val = [math.nan if j.val_acc is None else j.val_acc for j in group]
        test = [math.nan if j.test_acc is None else j.test_acc for j in group]
        ax.plot(depths, val, "o-", color=_color(name), label=f"{name}, val")
        ax.plot(depths, test, "s--", color=_color(name), label=f"{name}, test", alpha=0.6)
    ax.axhline(CHANCE_ACCURACY, color="gray", linestyle=":", label="chance (10 classes)")
    ax.set_ylim(0, 1.02)
    _depth_axis(ax, jobs)
    ax.set_xlabel("depth (hidden layers, or residual blocks; log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy at the end of training vs depth")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)
    _save(fig, path)


def layer_norms_over_training(jobs: list[Job], depth: int, path: Path) -> None:
    """One panel per network: every layer's gradient norm against the training step."""
    chosen = _jobs_at(jobs, depth)
    cols = min(3, max(1, len(chosen)))
    rows = max(1, math.ceil(len(chosen) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax, job in zip(axes.flat, chosen):
        plot_norms_over_training(
            read_grad_norms(job.grad_norms), ax=ax, title=f"{job.experiment}, depth {depth}"
        )
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    for ax in list(axes.flat)[len(chosen) :]:
        ax.axis("off")
    fig.suptitle("Per-layer gradient norms during training (darker = closer to input)")
    for ax in axes.flat:
        for i, line in enumerate(ax.get_lines()):
            line.set_color(plt.get_cmap("viridis")(i / max(1, len(ax.get_lines()) - 1)))
    _save(fig, path)


FIGURES = {
    "gradient_flow.png": "Per-layer gradient norm at step 0, one line per network",
    "ratio_vs_depth.png": "First/last gradient ratio vs depth, with the 0.25^L sigmoid bound",
    "accuracy_vs_depth.png": "Validation and test accuracy vs depth",
    "layer_norms_over_training.png": "Per-layer gradient norms over training, per network",
}


def write_figures(jobs: list[Job], out_dir: Path) -> list[str]:
    """Draws every figure the data allows; returns the file names written."""
    written = []
    depth = flow_depth(jobs)
    if by_experiment(jobs):
        ratio_vs_depth(jobs, out_dir / "ratio_vs_depth.png")
        accuracy_vs_depth(jobs, out_dir / "accuracy_vs_depth.png")
        written += ["ratio_vs_depth.png", "accuracy_vs_depth.png"]
    if depth is not None:
        gradient_flow(jobs, depth, out_dir / "gradient_flow.png")
        layer_norms_over_training(jobs, depth, out_dir / "layer_norms_over_training.png")
        written += ["gradient_flow.png", "layer_norms_over_training.png"]
    return sorted(written, key=list(FIGURES).index)
