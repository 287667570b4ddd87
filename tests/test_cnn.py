"""The article's ResidualBlock, the residual and plain CNNs, their experiments on CIFAR files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from gradwatch.callbacks.layers import find_layers
from gradwatch.nets import CNN, ResidualBlock
from gradwatch.recipe import train
from tests.fake_vision import write_cifar10


def _zero_second_conv(block: ResidualBlock) -> None:
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()


def test_residual_block_adds_the_identity_and_the_plain_one_does_not():
    x = torch.randn(2, 4, 6, 6)
    residual = ResidualBlock(4, norm="none", residual=True)
    plain = ResidualBlock(4, norm="none", residual=False)
    for block in (residual, plain):
        _zero_second_conv(block)
    torch.testing.assert_close(residual(x), torch.relu(x))  # the skip carries x through
    torch.testing.assert_close(plain(x), torch.zeros_like(x))


def test_residual_block_matches_the_article_layout():
    block = ResidualBlock(8)
    assert [name for name, _ in block.named_children()] == ["conv1", "bn1", "conv2", "bn2", "act"]
    assert isinstance(block.bn1, torch.nn.BatchNorm2d) and isinstance(block.act, torch.nn.ReLU)
    assert block.conv1.kernel_size == (3, 3) and block.conv1.padding == (1, 1)


@pytest.mark.parametrize(("shape", "stages"), [((1, 28, 28), 3), ((3, 32, 32), 2), ((1, 8, 8), 1)])
def test_cnn_takes_one_or_three_channels(shape, stages):
    net = CNN(shape, num_classes=10, depth=3, width=4, stages=stages)
    assert net(torch.randn(2, *shape)).shape == (2, 10)
    blocks = [m for m in net.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 3
    assert net.head.in_features == 4 * 2 ** (stages - 1)


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_norm_options(norm):
    net = CNN((3, 8, 8), 10, depth=1, width=4, stages=1, norm=norm, activation="tanh")
    expected = {
        "batch": torch.nn.BatchNorm2d,
        "layer": torch.nn.GroupNorm,
        "none": torch.nn.Identity,
    }
    assert isinstance(net.stages[0][0].bn1, expected[norm])
    assert isinstance(net.stages[0][0].act, torch.nn.Tanh)


def test_skips_keep_the_first_layers_gradient_in_a_deep_sigmoid_cnn():
    torch.manual_seed(0)
    ratios = {}
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for residual in (True, False):
        net = CNN((1, 8, 8), 10, depth=12, width=8, stages=1, activation="sigmoid",
                  norm="none", residual=residual, init="default")  # fmt: skip
        torch.nn.functional.cross_entropy(net(x), y).backward()
        ratios[residual] = (net.stem.conv.weight.grad.norm() / net.head.weight.grad.norm()).item()
    assert ratios[True] > 100 * ratios[False], ratios


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm": "group"}, "Unknown norm 'group'. Valid choices: batch, layer, none"),
        ({"activation": "swish"}, "Unknown activation 'swish'"),
        ({"depth": 0}, "model.net.depth must be a positive integer, got 0"),
        ({"stages": 0}, "model.net.stages must be a positive integer, got 0"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CNN((3, 32, 32), 10, **kwargs)


def test_flat_inputs_are_refused_with_a_pointer_to_the_mlp():
    with pytest.raises(ValueError, match="Use model=mlp"):
        CNN((64,), 10)


def test_conv_layers_are_layers_for_the_gradient_callback():
    names = [layer.name for layer in find_layers(CNN((3, 8, 8), 10, depth=2, width=4))]
    assert "stem.conv" in names and "stages.0.0.conv1" in names and "stages.1.0.conv" in names
    assert names[-1] == "head"


@pytest.mark.parametrize("experiment", ["resnet_cnn", "plain_cnn"])
def test_cnn_experiments_train_on_cifar_files_and_log_conv_norms(
    make_cfg, tmp_path, monkeypatch, experiment
):
    write_cifar10(tmp_path / "data", monkeypatch)
    cfg = make_cfg(
        f"experiment={experiment}",
        "data=cifar10",
        f"data.data_dir={tmp_path / 'data'}",
        "data.batch_size=16",
        "model.net.depth=3",
        "model.net.width=4",
        "debug=fast",
        "logger=csv",
    )
    assert cfg.model.net.residual == (experiment == "resnet_cnn")
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 3
    rows = list(csv.DictReader((Path(cfg.paths.output_dir) / "grad_norms.csv").open()))
    depth_of = {r["layer"]: int(r["depth"]) for r in rows}
    assert depth_of["net.stem.conv"] == 1
    assert depth_of["net.head"] == max(depth_of.values())
    convs = [r for r in rows if r["layer"].endswith(("conv", "conv1", "conv2"))]
    assert {r["step"] for r in convs} == {"0", "1", "2"}
    assert all(float(r["grad_norm"]) > 0 for r in convs)
    assert summary["initial_first_last_ratio"] > 0
