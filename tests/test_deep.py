"""Residual branch initializations (zero, ReZero, Fixup) and 1,000-block nets without a norm."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwatch.nets import CNN, MLP, ResidualBlock
from gradwatch.recipe import train

IDENTITY_INITS = ["zero", "rezero", "fixup"]


def residual_mlp(depth: int, branch_init: str, **kwargs) -> MLP:
    options = {"width": 16, "activation": "relu", "init": "kaiming_normal", "norm": "none"}
    return MLP(12, 5, depth=depth, residual=True, branch_init=branch_init, **{**options, **kwargs})


@pytest.mark.parametrize("branch_init", IDENTITY_INITS)
def test_every_block_is_the_identity_at_init(branch_init):
    torch.manual_seed(0)
    net = residual_mlp(6, branch_init).eval()
    x = torch.randn(7, 12)
    # Without the blocks: the input layer then the classifier, by hand.
    first = net.input_layer[0]
    expected = F.linear(torch.relu(F.linear(x, first.weight, first.bias)), *_wb(net.output_layer))
    torch.testing.assert_close(net(x), expected)
    h = torch.randn(7, 16)  # any input, negative values included: a clean identity
    for block in net.hidden_layers:
        torch.testing.assert_close(block(h), h)


def _wb(layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    return layer.weight, layer.bias


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_zero_init_with_a_norm_zeroes_the_last_norms_gamma(norm):
    torch.manual_seed(0)
    net = residual_mlp(3, "zero", norm=norm).train()
    for block in net.hidden_layers:
        assert torch.count_nonzero(block.norm2.weight) == 0
        assert torch.count_nonzero(block.linear2.weight) > 0  # the layer itself keeps its init
        h = torch.randn(9, 16)
        torch.testing.assert_close(block(h), h)


def test_rezero_alpha_is_a_learnable_zero_and_scales_the_branch():
    torch.manual_seed(0)
    block = residual_mlp(1, "rezero").hidden_layers[0]
    assert block.alpha.requires_grad and block.alpha.item() == 0.0
    with torch.no_grad():
        block.alpha.fill_(0.5)
    h = torch.randn(4, 16)
    l1, l2 = block.linear1, block.linear2
    branch = F.linear(torch.relu(F.linear(h, l1.weight, l1.bias)), l2.weight, l2.bias)
    torch.testing.assert_close(block(h), h + 0.5 * branch)  # no activation after the sum


@pytest.mark.parametrize("depth", [4, 64])
def test_fixup_scales_the_first_layer_by_depth_and_zeroes_the_last(depth):
    torch.manual_seed(0)
    net = residual_mlp(depth, "fixup", width=256)
    for block in net.hidden_layers:
        assert block.linear1.bias is None and block.linear2.bias is None  # scalar biases instead
        assert torch.count_nonzero(block.linear2.weight) == 0
        assert [block.bias1a.item(), block.bias1b.item(), block.bias2a.item()] == [0, 0, 0]
        assert block.bias2b.item() == 0 and block.scale.item() == 1
    # He init (std sqrt(2 / fan_in)) times L^(-1/(2m-2)) with m = 2 layers per branch.
    expected = math.sqrt(2 / 256) * depth ** (-1 / 2)
    stds = torch.stack([b.linear1.weight.std() for b in net.hidden_layers])
    assert stds.mean().item() == pytest.approx(expected, rel=0.02)


def test_fixup_forward_follows_the_paper_once_weights_move():
    torch.manual_seed(0)
    block = residual_mlp(2, "fixup").hidden_layers[0]
    with torch.no_grad():
        for p, value in zip(
            (block.bias1a, block.bias1b, block.bias2a, block.bias2b, block.scale),
            (0.1, -0.2, 0.3, -0.4, 1.5),
        ):
            p.fill_(value)
        block.linear2.weight.normal_()
    h = torch.randn(5, 16)
    inner = torch.relu(F.linear(h + 0.1, block.linear1.weight) - 0.2)
    expected = h + 1.5 * F.linear(inner + 0.3, block.linear2.weight) - 0.4
    torch.testing.assert_close(block(h), expected)


@pytest.mark.parametrize("branch_init", IDENTITY_INITS)
def test_cnn_blocks_are_the_identity_at_init(branch_init):
    torch.manual_seed(0)
    net = CNN((1, 8, 8), 10, depth=4, width=4, stages=2, norm="none", branch_init=branch_init)
    x = torch.randn(3, 4, 8, 8)
    block = net.stages[0][0]
    assert isinstance(block, ResidualBlock)
    torch.testing.assert_close(block(x), x)
    if branch_init == "fixup":
        assert block.conv1.bias is None
        std = block.conv1.weight.std().item()
        assert std == pytest.approx(math.sqrt(2 / (4 * 9)) / 2, rel=0.25)  # L = 4 blocks


def test_standard_branch_init_keeps_the_article_block():
    net = MLP(12, 5, depth=2, width=8, activation="relu", residual=True)
    assert all(isinstance(b, nn.Sequential) for b in net.hidden_layers)
    block = CNN((1, 8, 8), 10, depth=1, width=4, stages=1).stages[0][0]
    names = [name for name, _ in block.named_children()]
    assert names == ["conv1", "bn1", "conv2", "bn2", "act"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"branch_init": "skip"}, "Unknown branch_init 'skip'. Valid choices: fixup, rezero, "),
        ({"branch_init": "zero", "residual": False}, "branch_init='zero' needs residual blocks"),
        ({"branch_init": "fixup", "norm": "batch"}, "needs model.net.norm=none, got norm='batch'"),
    ],
)
def test_bad_branch_init_names_the_value_and_the_choices(kwargs, message):
    options = {"residual": True, **kwargs}
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        MLP(12, 5, depth=2, width=8, **options)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        CNN((1, 8, 8), 10, depth=2, width=4, **options)


def _build_seconds(depth: int) -> float:
    best = math.inf
    for _ in range(2):
        start = time.perf_counter()
        residual_mlp(depth, "fixup", width=32)
        best = min(best, time.perf_counter() - start)
    return best


def test_building_grows_linearly_with_depth():
    """Four times the blocks take about four times as long, not sixteen (no O(L^2) work)."""
    small, large = _build_seconds(200), _build_seconds(800)
    assert large < 8 * small, (small, large)


def _grad_ratio(csv_path: Path, step: str = "0") -> float:
    rows = [r for r in csv.DictReader(csv_path.open()) if r["step"] == step]
    rows.sort(key=lambda r: int(r["depth"]))
    return float(rows[0]["grad_norm"]) / float(rows[-1]["grad_norm"])


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["deep_zero", "deep_rezero", "deep_fixup"])
def test_a_thousand_blocks_without_norm_train_on_digits(make_cfg, experiment):
    cfg = make_cfg(
        f"experiment={experiment}",
        "model.net.depth=1000",
        "debug=fast",
        "logger=none",
        "torch_threads=1",
        "callbacks.activation_stats=null",
    )
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 3
    run = Path(cfg.paths.output_dir)
    ratio = _grad_ratio(run / "grad_norms.csv")  # input layer / classifier, from the file
    assert math.isfinite(ratio) and 1e-2 < ratio < 1e2, ratio
    assert summary["initial_first_last_ratio"] == pytest.approx(ratio)
    rows = list(csv.DictReader((run / "grad_norms.csv").open()))
    assert all(math.isfinite(float(r["grad_norm"])) for r in rows if r["grad_norm"])
