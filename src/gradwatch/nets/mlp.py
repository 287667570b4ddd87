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
activation, and an ``output_layer``. With ``branch_init`` other than ``standard`` the blocks
are :class:`ResidualMLPBlock` (``linear1, norm1, linear2, norm2, act``), whose branches start
at or near zero so that thousands of blocks train without normalization (see
:mod:`gradwatch.nets.residual`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from gradwatch.nets.activations import make_activation
from gradwatch.nets.init import init_weights
from gradwatch.nets.residual import BranchBlock, check_branch_init, init_branches
from gradwatch.registry import choose, require_positive

NORMS: dict[str, type[nn.Module] | None] = {
    "none": None,
    "batch": nn.BatchNorm1d,
    "layer": nn.LayerNorm,
}


class ResidualMLPBlock(BranchBlock):
    """``x + F(x)`` with ``F`` = Linear-Norm-Act-Linear-Norm, for a non-standard branch_init.

    Args:
        width: input and output features.
        activation: a name from :data:`gradwatch.nets.ACTIVATIONS`.
        norm_cls: a norm class taking the width (``None``: no norm).
        branch_init: ``zero``, ``rezero`` or ``fixup`` (see :mod:`gradwatch.nets.residual`).
    """

    NAMES = ("linear1", "norm1", "linear2", "norm2")

    def __init__(
        self, width: int, activation: str, norm_cls: type[nn.Module] | None, branch_init: str
    ) -> None:
        super().__init__(
            lambda bias: nn.Linear(width, width, bias=bias),
            lambda: nn.Identity() if norm_cls is None else norm_cls(width),
            make_activation(activation),
            True,
            branch_init,
        )


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
        branch_init: how each residual branch starts: ``standard`` (the article),
            ``zero``, ``rezero`` or ``fixup`` (see :mod:`gradwatch.nets.residual`; the last
            three train thousands of blocks with ``norm="none"``).
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
        branch_init: str = "standard",
    ) -> None:
        super().__init__()
        require_positive("model.net.depth", depth)
        require_positive("model.net.width", width)
        require_positive("num_classes", num_classes)
        make_activation(activation)  # validate the name before building anything
        norm_cls = choose("norm", norm, NORMS)
        check_branch_init(branch_init, norm, residual)
        shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
        in_features = math.prod(shape)
        self.residual = bool(residual)

        def hidden(n_in: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Linear(n_in, width)]
            if norm_cls is not None:
                layers.append(norm_cls(width))
            return layers

        # The article's blocks are Sequentials whose sum and activation live in forward().
        self.article_blocks = self.residual and branch_init == "standard"
        if self.residual:
            self.input_layer = nn.Sequential(*hidden(in_features), make_activation(activation))
            if self.article_blocks:
                blocks = (
                    nn.Sequential(*hidden(width), make_activation(activation), *hidden(width))
                    for _ in range(depth)
                )
            else:
                blocks = (
                    ResidualMLPBlock(width, activation, norm_cls, branch_init) for _ in range(depth)
                )
            self.hidden_layers = nn.ModuleList(blocks)
            if self.article_blocks:
                self.block_activation = make_activation(activation)
            self.output_layer = nn.Linear(width, num_classes)
        else:
            layers: list[nn.Module] = []
            for i in range(depth):
                layers += [*hidden(in_features if i == 0 else width), make_activation(activation)]
            layers.append(nn.Linear(width, num_classes))
            self.network = nn.Sequential(*layers)
        init_weights(self, init, scale=init_scale, bias=bias_init)
        init_branches(self, depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if not self.residual:
            return self.network(x)
        x = self.input_layer(x)
        if self.article_blocks:
            for block in self.hidden_layers:
                x = self.block_activation(block(x) + x)
        else:
            for block in self.hidden_layers:
                x = block(x)
        return self.output_layer(x)
