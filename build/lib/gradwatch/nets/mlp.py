"""One configurable MLP that builds each of the article's fully connected networks exactly.

=====================  ===========================================================
article network        MLP arguments
=====================  ===========================================================
DeepSigmoidNet         depth=10, width=128, activation="sigmoid", init="default"
DeepReLUNet            depth=10, width=128, activation="relu", init="kaiming_normal"
ModernDeepNetwork      depth=20, width=256, activation="relu", init="kaiming_normal",
                       norm="batch", residual=True, bias_init="zeros"
=====================  ===========================================================

Plain networks are ``network = Sequential(Linear, [Norm], Act, ..., Linear)``, with the
module names of the article's ``DeepSigmoidNet``. Residual networks follow
``ModernDeepNetwork``: an ``input_layer`` (Linear-Norm-Act), ``depth`` ``hidden_layers``
blocks (Linear-Norm-Act-Linear-Norm) each added to its input and followed by the
activation, and an ``output_layer``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from gradwatch.nets.activations import make_activation
from gradwatch.nets.init import init_weights
from gradwatch.registry import choose, require_positive

NORMS: dict[str, type[nn.Module] | None] = {
    "none": None,
    "batch": nn.BatchNorm1d,
    "layer": nn.LayerNorm,
}


class MLP(nn.Module):
    """Fully connected classifier; flattens any input shape.

    Args:
        input_shape: shape of one example (e.g. ``(1, 8, 8)``) or its number of features.
        num_classes: number of output logits.
        depth: hidden layers (plain) or residual blocks (``residual=True``).
        width: units per hidden layer.
        activation: a name from :data:`gradwatch.nets.ACTIVATIONS`.
        init: a name from :data:`gradwatch.nets.INITS`.
        norm: ``none``, ``batch`` or ``layer``, after every hidden Linear.
        residual: build the article's ModernDeepNetwork blocks with identity skips.
        init_scale: multiplies every initialized weight (1.0: the scheme as is).
        bias_init: ``default`` (PyTorch's) or ``zeros``.
    """

    def __init__(
        self,
        input_shape: Sequence[int] | int,
        num_classes: int,
        depth: int = 10,
        width: int = 128,
        activation: str = "sigmoid",
        init: str = "default",
        norm: str = "none",
        residual: bool = False,
        init_scale: float = 1.0,
        bias_init: str = "default",
    ) -> None:
        super().__init__()
        require_positive("model.net.depth", depth)
        require_positive("model.net.width", width)
        require_positive("num_classes", num_classes)
        make_activation(activation)  # validate the name before building anything
        norm_cls = choose("norm", norm, NORMS)
        shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
        in_features = math.prod(shape)
        self.residual = bool(residual)

        def hidden(n_in: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Linear(n_in, width)]
            if norm_cls is not None:
                layers.append(norm_cls(width))
            return layers

        if self.residual:
            self.input_layer = nn.Sequential(*hidden(in_features), make_activation(activation))
            self.hidden_layers = nn.ModuleList(
                nn.Sequential(*hidden(width), make_activation(activation), *hidden(width))
                for _ in range(depth)
            )
            self.block_activation = make_activation(activation)
            self.output_layer = nn.Linear(width, num_classes)
        else:
            layers: list[nn.Module] = []
            for i in range(depth):
                layers += [*hidden(in_features if i == 0 else width), make_activation(activation)]
            layers.append(nn.Linear(width, num_classes))
            self.network = nn.Sequential(*layers)
        init_weights(self, init, scale=init_scale, bias=bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if not self.residual:
            return self.network(x)
        x = self.input_layer(x)
        for block in self.hidden_layers:
            x = self.block_activation(block(x) + x)
        return self.output_layer(x)
