"""The article's numpy demos, corrected, and the figures they draw.

    python -m gradwatch.report.theory [--out DIR]

writes ``activation_comparison.png`` (sigmoid, tanh, ReLU and their derivatives) and
``gradient_vanishing.png`` (the article's 10-layer demo) and prints the demo's numbers.

The article's ``deep_network_gradients`` stores each layer's *output* ``a = sigmoid(z)`` and
then calls ``sigmoid_derivative(a)``, which computes ``sigmoid(a) * (1 - sigmoid(a))``: the
sigmoid is applied twice. The derivative of the output with respect to ``z`` is
``a * (1 - a)`` (:func:`sigmoid_derivative_from_output`). Both are computed here so the
figure shows what the bug changes.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gradwatch.plots import plt

SIGMOID_MAX_DERIVATIVE = 0.25


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def sigmoid_derivative(x: np.ndarray) -> np.ndarray:
    """d sigmoid(x) / dx, given the *input* x."""
    s = sigmoid(x)
    return s * (1.0 - s)


def sigmoid_derivative_from_output(a: np.ndarray) -> np.ndarray:
    """d sigmoid(z) / dz, given the *output* a = sigmoid(z)."""
    return a * (1.0 - a)


@dataclass(frozen=True)
class VanishingDemo:
    """Mean |dL/dz| of each layer (index 0 = input side) for dL/d(output) = 1."""

    gradients: np.ndarray  # with the correct derivative a * (1 - a)
    article_gradients: np.ndarray  # the article's code: sigmoid_derivative(a)
    bound: np.ndarray  # 0.25 ** (sigmoid layers between the output and this layer, inclusive)
    mean_derivative: float  # mean a * (1 - a) over every unit and example

    @property
    def first_last_ratio(self) -> float:
        return float(self.gradients[0] / self.gradients[-1])


def _backward(
    outputs: list[np.ndarray], weights: list[np.ndarray], derivative: Callable
) -> np.ndarray:
    grad = np.ones_like(outputs[-1])
    mags = []
    for a, w in zip(reversed(outputs), reversed(weights)):
        grad = grad * derivative(a)
        mags.append(np.mean(np.abs(grad)))
        grad = grad @ w.T
    return np.array(mags[::-1])


def deep_network_gradients(
    n_layers: int = 10,
    input_size: int = 100,
    batch_size: int = 32,
    weight_scale: float = 0.01,
    seed: int = 42,
) -> VanishingDemo:
    """The article's demo: ``n_layers`` x (Linear without bias + sigmoid), N(0, 0.01) weights.

    Draws the same random numbers as the article (``np.random.seed(42)``, input first).
    """
    rng = np.random.RandomState(seed)
    x = rng.randn(batch_size, input_size)
    outputs, weights = [], []
    for _ in range(n_layers):
        w = rng.randn(input_size, input_size) * weight_scale
        x = sigmoid(x @ w)
        weights.append(w)
        outputs.append(x)
    return VanishingDemo(
        gradients=_backward(outputs, weights, sigmoid_derivative_from_output),
        article_gradients=_backward(outputs, weights, sigmoid_derivative),
        bound=SIGMOID_MAX_DERIVATIVE ** np.arange(n_layers, 0, -1, dtype=float),
        mean_derivative=float(np.mean([sigmoid_derivative_from_output(a) for a in outputs])),
    )


def mean_tanh_derivative(n_layers: int = 10, width: int = 128, seed: int = 0) -> float:
    """Mean tanh'(z) over the hidden units of a Xavier-normal tanh MLP fed N(0, 1) inputs."""
    rng = np.random.RandomState(seed)
    x = rng.randn(256, width)
    derivatives = []
    for _ in range(n_layers):
        w = rng.randn(width, width) * np.sqrt(2.0 / (width + width))
        x = np.tanh(x @ w)
        derivatives.append(1.0 - x**2)
    return float(np.mean(derivatives))


def plot_activation_comparison(save: str | os.PathLike) -> None:
    """Sigmoid, tanh and ReLU (top) and their derivatives with their maxima (bottom)."""
    x = np.linspace(-5, 5, 401)
    curves = [
        ("Sigmoid", sigmoid(x), sigmoid_derivative(x), SIGMOID_MAX_DERIVATIVE),
        ("Tanh", np.tanh(x), 1.0 - np.tanh(x) ** 2, 1.0),
        ("ReLU", np.maximum(0.0, x), (x > 0).astype(float), 1.0),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for col, (name, y, dy, max_dy) in enumerate(curves):
        axes[0, col].plot(x, y)
        axes[0, col].set_title(name)
        axes[1, col].plot(x, dy, color="tab:orange")
        axes[1, col].axhline(max_dy, color="tab:red", linestyle="--", label=f"max = {max_dy:g}")
        axes[1, col].set_title(f"{name} derivative (max = {max_dy:g})")
        axes[1, col].legend(loc="upper left", fontsize="small")
        for row in range(2):
            axes[row, col].set_xlabel("x")
            axes[row, col].grid(True, alpha=0.3)
    axes[0, 0].set_ylabel("activation")
    axes[1, 0].set_ylabel("derivative")
    fig.tight_layout()
    fig.savefig(save, dpi=110)
    plt.close(fig)


def plot_gradient_vanishing(demo: VanishingDemo, save: str | os.PathLike) -> None:
    layers = np.arange(1, len(demo.gradients) + 1)
    fig, ax = plt.subplots(figsize=(9, 5))
    ax.semilogy(layers, demo.gradients, "o-", label="corrected: derivative a(1 - a)")
    ax.semilogy(
        layers,
        demo.article_gradients,
        "x--",
        color="gray",
        label="article's code: sigmoid applied twice",
    )
    ax.semilogy(layers, demo.bound, ":", color="tab:red", label="0.25^k: sigmoid derivative alone")
    ax.set_xlabel("layer (1 = closest to input)")
    ax.set_ylabel("mean |gradient| (log scale)")
    ax.set_title(
        f"Gradient vanishing across {len(layers)} sigmoid layers "
        f"(first/last = {demo.first_last_ratio:.1e})"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(save, dpi=110)
    plt.close(fig)


def write_theory(out_dir: str | os.PathLike) -> VanishingDemo:
    """Both figures into ``out_dir``; returns the 10-layer demo's numbers."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    demo = deep_network_gradients()
    plot_activation_comparison(out / "activation_comparison.png")
    plot_gradient_vanishing(demo, out / "gradient_vanishing.png")
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="logs/theory", help="output directory")
    args = parser.parse_args(argv)
    demo = write_theory(args.out)
    print("Gradient magnitudes by layer (1 = input side): correct | article's code | 0.25^k")
    for i, (g, a, b) in enumerate(zip(demo.gradients, demo.article_gradients, demo.bound), 1):
        print(f"Layer {i:2d}: {g:.2e} | {a:.2e} | {b:.2e}")
    print(
        f"first/last ratio {demo.first_last_ratio:.2e}; mean sigmoid derivative "
        f"{demo.mean_derivative:.3f}; 0.25^10 = {0.25**10:.2e}"
    )
    print(
        f"Figures: {Path(args.out) / 'activation_comparison.png'}, "
        f"{Path(args.out) / 'gradient_vanishing.png'}"
    )


if __name__ == "__main__":
    main()
