"""The verdict sees more than the first/last ratio: a net that does not learn is not healthy."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from gradwatch.nets import MLP
from gradwatch.verdict import DEAD_SHARE, diagnose


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    return (x - x.mean(0)) / (x.std(0) + 1e-6), torch.tensor(y)


def measure(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict:
    """What the callbacks measure, computed here by hand: the first/last gradient ratio at
    step 0, each ReLU's share of units off for the whole batch at init, the loss at the first
    and the last step."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only contend on a shared machine
    try:
        return _measure(net, x, y, steps)
    finally:
        torch.set_num_threads(threads)


def _measure(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict:
    outputs: dict[nn.Module, torch.Tensor] = {}  # each ReLU's output at step 0, in call order
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]

    def keep(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        outputs.setdefault(module, output.detach())

    hooks = [m.register_forward_hook(keep) for m in relus]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses, ratio = [], math.nan
    for step in range(steps):
        batch = torch.arange(step * 128, step * 128 + 128) % len(x)
        opt.zero_grad()
        loss = F.cross_entropy(net(x[batch]), y[batch])
        loss.backward()
        if step == 0:
            for h in hooks:
                h.remove()
            first, last = linears[0], linears[-1]
            grad = lambda m: torch.cat([p.grad.flatten() for p in m.parameters()]).norm()  # noqa: E731
            ratio = (grad(first) / grad(last)).item()
        opt.step()
        losses.append(loss.item())
    dead = [(out == 0).all(dim=0).float().mean().item() for out in outputs.values()]
    stds = [out.std().item() for out in outputs.values()]
    return {"ratio": ratio, "dead": dead, "stds": stds, "losses": losses}


def judge(m: dict):
    """The verdict on what :func:`measure` measured (the loss at the end: last 5 steps)."""
    losses = m["losses"]
    return diagnose(
        [m["ratio"]],
        dead=m["dead"],
        activation_std=m["stds"],
        loss_start=losses[0],
        loss_end=sum(losses[-5:]) / 5,
        chance_loss=math.log(10),
    )


def test_a_deep_plain_relu_net_that_cannot_learn_is_not_healthy(digits):
    """100 layers of ReLU + He, width 32: the gradient's size is fine, the learning is not."""
    torch.manual_seed(0)
    net = MLP(64, 10, depth=100, width=32, activation="relu", init="kaiming_normal")
    m = measure(net, *digits, steps=25)
    assert 1e-2 < m["ratio"] < 1e2  # the ratio alone says healthy ...
    assert diagnose([m["ratio"]]).verdict == "healthy"
    assert sum(m["dead"]) / len(m["dead"]) >= DEAD_SHARE  # ... a third of the units are off
    result = judge(m)
    assert (result.verdict, result.stalled) == ("vanishing", True), result
    assert "ReLU units" in result.advice and "residual" in result.advice


def test_a_deep_rezero_net_that_learns_is_healthy(digits):
    torch.manual_seed(0)
    net = MLP(64, 10, depth=100, width=32, activation="relu", init="kaiming_normal",
              residual=True, branch_init="rezero")  # fmt: skip
    m = measure(net, *digits, steps=25)
    losses = m["losses"]
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]  # it learns
    result = judge(m)
    assert result.verdict == "healthy", result


def test_a_deep_fixup_net_that_learns_is_healthy(digits):
    """Fixup scales every branch's first layer by depth**-0.5, so the branches' ReLUs are far
    quieter than the stem's at init; that is the design, not a signal dying with depth."""
    torch.manual_seed(0)
    net = MLP(64, 10, depth=300, width=32, activation="relu", init="kaiming_normal",
              residual=True, branch_init="fixup")  # fmt: skip
    m = measure(net, *digits, steps=25)
    assert m["stds"][-1] < 0.1 * m["stds"][0]  # the last ReLU: a tenth of the first's
    losses = m["losses"]
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]  # yet it learns
    result = judge(m)
    assert result.verdict == "healthy", result


def test_activations_that_shrink_layer_after_layer_are_stalled():
    stds = [0.8 * 0.8**i for i in range(20)]  # x0.8 a layer: x0.02 over the last 5 vs first 5
    result = diagnose([1.0], activation_std=stds)
    assert (result.verdict, result.stalled) == ("vanishing", True)
    assert "over the first 5 activation layers" in result.reasons[0]
    quiet_after_the_stem = [0.8] + [0.07] * 19  # one loud first layer: no trend
    assert diagnose([1.0], activation_std=quiet_after_the_stem).verdict == "healthy"


def test_a_flat_loss_at_chance_is_stalled_whatever_the_ratio():
    result = diagnose([0.8, 1.1], loss_start=2.31, loss_end=2.30, chance_loss=math.log(10))
    assert result.stalled and result.verdict == "vanishing"
    assert "did not fall: 2.31" in result.advice
    # A loss that fell, but only to the loss of a constant prediction.
    result = diagnose([0.8], loss_start=3.5, loss_end=2.29, chance_loss=math.log(10))
    assert result.stalled and "constant prediction" in result.advice


@pytest.mark.parametrize(
    ("signals", "verdict", "stalled", "phrase"),
    [
        (
            {"update_ratios": [1e-9, 1e-3, 2e-3, 1e-3]},
            "vanishing",
            False,
            "update ratio is 1.0e-09",
        ),
        ({"update_ratios": [1e-8, 1e-8, 1e-8]}, "vanishing", True, "negligible"),
        ({"activation_std": [0.5, 0.2, 0.01]}, "vanishing", True, "shrink with depth"),
        ({"activation_std": [0.5, 3.0, 50.0]}, "exploding", False, "grow with depth"),
        ({"saturation": [0.6, 0.4]}, "vanishing", True, "flat ends"),
        ({"dead": [0.1, 0.1], "update_ratios": [1e-3, 1e-3]}, "healthy", False, "healthy band"),
    ],
)
def test_each_signal_decides_the_verdict(signals, verdict, stalled, phrase):
    result = diagnose([1.0], **signals)
    assert (result.verdict, result.stalled) == (verdict, stalled), result
    assert phrase in result.advice, result


def test_the_ratio_verdicts_and_their_order_are_unchanged():
    assert diagnose([1e-5]).verdict == "vanishing"
    assert diagnose([1e5], 1e-2, 1e2).verdict == "exploding"
    assert diagnose([1.0], nonfinite_layer="net.0", nonfinite_step=3).verdict == "non-finite"
    # A ratio outside the band wins over the signals; non-finite wins over everything.
    assert diagnose([1e-5], dead=[0.9]).verdict == "vanishing"
    found = diagnose([1e-5], dead=[0.9], nonfinite_layer="x", nonfinite_step=1)
    assert found.verdict == "non-finite"


def test_batchnorm_explosion_is_explained():
    advice = diagnose([7.4e3], batchnorm=True).advice
    assert "exponentially with depth" in advice and "Yang et al. 2019" in advice
    assert "add BatchNorm" not in advice  # it already has it
    assert "Yang" not in diagnose([7.4e3]).advice


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ratios": [1e-9]},
        {"ratios": [1e9], "batchnorm": True},
        {"ratios": [1.0], "dead": [0.5]},
        {"ratios": [1.0], "loss_start": 2.3, "loss_end": 2.3},
        {"ratios": [1.0], "update_ratios": [1e-9, 1e-3, 1e-3]},
        {"ratios": [1.0], "nonfinite_layer": "fc1", "nonfinite_step": 2},
    ],
)
def test_generic_advice_names_no_config_key(kwargs):
    ours, generic = diagnose(**kwargs).advice, diagnose(**kwargs, ours=False).advice
    keys = ("model.", "trainer.", "experiment=")
    assert any(k in ours for k in keys), ours
    assert not any(k in generic for k in keys), generic


def test_verdict_imports_without_torch():
    code = "import sys, gradwatch.verdict; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
