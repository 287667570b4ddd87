"""Each of the article's networks is built exactly: layer types, sizes, parameters, init."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradwatch.nets import ACTIVATIONS, INITS, MLP


def layer_types(net: nn.Module) -> list[type]:
    return [type(m) for m in net.network]


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_deep_sigmoid_net_matches_article():
    net = MLP(input_shape=784, num_classes=10, depth=10, width=128, activation="sigmoid")
    assert layer_types(net) == [nn.Linear, nn.Sigmoid] * 10 + [nn.Linear]
    assert n_params(net) == (784 * 128 + 128) + 9 * (128 * 128 + 128) + (128 * 10 + 10)
    # PyTorch's default init: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1 / math.sqrt(784)
    assert net.network[0].weight.abs().max() <= bound
    assert net.network[0].weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_deep_relu_net_has_he_init():
    torch.manual_seed(0)
    net = MLP(784, 10, depth=10, width=128, activation="relu", init="kaiming_normal")
    assert layer_types(net) == [nn.Linear, nn.ReLU] * 10 + [nn.Linear]
    for layer in (m for m in net.network if isinstance(m, nn.Linear)):
        fan_in = layer.weight.shape[1]
        assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)


def test_batchnorm_net_puts_norm_after_every_hidden_linear():
    net = MLP(64, 10, depth=3, width=32, activation="relu", init="kaiming_normal", norm="batch")
    expected = [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 3 + [nn.Linear]
    assert layer_types(net) == expected


def test_residual_net_matches_modern_deep_network():
    net = MLP(
        784,
        10,
        depth=20,
        width=256,
        activation="relu",
        init="kaiming_normal",
        norm="batch",
        residual=True,
        bias_init="zeros",
    )
    assert [type(m) for m in net.input_layer] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert len(net.hidden_layers) == 20
    block = [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert all([type(m) for m in b] == block for b in net.hidden_layers)
    linear, bn = 256 * 256 + 256, 2 * 256
    assert n_params(net) == (784 * 256 + 256 + bn) + 20 * 2 * (linear + bn) + (256 * 10 + 10)
    assert all(m.bias.abs().sum() == 0 for m in net.modules() if isinstance(m, nn.Linear))
    out = net(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10)


def test_residual_forward_adds_the_skip():
    net = MLP(8, 3, depth=1, width=8, activation="relu", norm="none", residual=True).eval()
    x = torch.randn(5, 8)
    h = net.input_layer(x)
    expected = net.output_layer(torch.relu(net.hidden_layers[0](h) + h))
    torch.testing.assert_close(net(x), expected)


def test_input_size_comes_from_the_shape():
    net = MLP(input_shape=(3, 32, 32), num_classes=7, depth=2, width=16)
    assert net.network[0].in_features == 3 * 32 * 32
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_article_normal_init_and_scale():
    torch.manual_seed(0)
    net = MLP(256, 10, depth=2, width=256, init="normal", init_scale=3.0)
    assert net.network[0].weight.std().item() == pytest.approx(0.03, rel=0.05)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("init", sorted(INITS))
def test_every_registered_option_builds_and_runs(activation, init):
    net = MLP(16, 4, depth=2, width=8, activation=activation, init=init, norm="layer")
    assert torch.isfinite(net(torch.randn(3, 16))).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activation": "swishy"}, "Unknown activation 'swishy'. Valid choices: elu, gelu"),
        ({"init": "magic"}, "Unknown init 'magic'. Valid choices: default, kaiming_normal"),
        ({"norm": "group"}, "Unknown norm 'group'. Valid choices: batch, layer, none"),
        ({"depth": 0}, "model.net.depth must be a positive integer, got 0"),
        ({"width": -3}, "model.net.width must be a positive integer, got -3"),
        ({"depth": 2.5}, "model.net.depth must be a positive integer, got 2.5"),
        ({"depth": 10.0}, "model.net.depth must be a positive integer, got 10.0"),
        ({"width": float("inf")}, "model.net.width must be a positive integer, got inf"),
        ({"init_scale": float("nan")}, "init_scale must be a positive number, got nan"),
    ],
)
def test_bad_options_name_the_value_and_the_choices(kwargs, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        MLP(16, 4, **kwargs)
