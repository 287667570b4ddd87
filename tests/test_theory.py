"""The article's numpy demos, corrected: checked against torch autograd, not against themselves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradwatch.report import theory


def test_derivative_from_output_is_sigmoids_derivative_and_the_articles_is_not():
    x = torch.linspace(-6, 6, 241, dtype=torch.float64, requires_grad=True)
    torch.sigmoid(x).sum().backward()
    a = torch.sigmoid(x).detach().numpy()
    np.testing.assert_allclose(theory.sigmoid_derivative_from_output(a), x.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(theory.sigmoid_derivative(x.detach().numpy()), x.grad.numpy())
    # The article's bug: sigmoid_derivative applied to the output a = sigmoid(x).
    article = theory.sigmoid_derivative(a)
    assert np.max(np.abs(article - x.grad.numpy())) > 0.05


def _autograd_demo(n_layers=10, input_size=100, batch_size=32, weight_scale=0.01, seed=42):
    """The article's network in torch: mean |dL/dz| per layer for dL/d(output) = 1."""
    rng = np.random.RandomState(seed)
    x = torch.from_numpy(rng.randn(batch_size, input_size)).requires_grad_()
    zs = []
    for _ in range(n_layers):
        w = torch.from_numpy(rng.randn(input_size, input_size) * weight_scale)
        z = x @ w
        z.retain_grad()
        zs.append(z)
        x = torch.sigmoid(z)
    x.backward(torch.ones_like(x))
    return np.array([z.grad.abs().mean().item() for z in zs])


def test_ten_layer_demo_matches_autograd():
    demo = theory.deep_network_gradients()
    expected = _autograd_demo()
    np.testing.assert_allclose(demo.gradients, expected, rtol=1e-9)
    assert demo.first_last_ratio == pytest.approx(expected[0] / expected[-1], rel=1e-9)
    assert demo.first_last_ratio < 1e-12  # 0.25 x (0.01 x sqrt(100)) per layer
    # The article's code gives different numbers: it is not what backprop computes.
    assert not np.allclose(demo.article_gradients, expected, rtol=0.05)


def test_bound_is_a_quarter_per_sigmoid_and_the_demo_stays_below_it():
    demo = theory.deep_network_gradients(n_layers=6)
    np.testing.assert_allclose(demo.bound, [0.25**k for k in (6, 5, 4, 3, 2, 1)])
    assert np.all(demo.gradients <= demo.bound * (1 + 1e-12))
    assert 0.24 < demo.mean_derivative <= 0.25  # z stays near 0 with 0.01-scale weights


def test_cli_writes_both_figures(tmp_path, capsys):
    theory.main(["--out", str(tmp_path)])
    for name in ("activation_comparison.png", "gradient_vanishing.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "Layer  1:" in out and "Layer 10:" in out
