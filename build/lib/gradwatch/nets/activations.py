"""Activation registry: name -> module factory."""

from __future__ import annotations

from torch import nn

from gradwatch.registry import choose

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "selu": nn.SELU,
    "silu": nn.SiLU,
}


def make_activation(name: str) -> nn.Module:
    return choose("activation", name, ACTIVATIONS)()
