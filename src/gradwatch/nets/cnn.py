"""A CNN built from the article's ``ResidualBlock``, with or without its identity skips.

The network is a stem (Conv3x3-Norm-Act), then ``stages`` stages of blocks, each stage after
the first opened by a downsampling transition (Conv3x3 stride 2 doubling the channels, Norm,
Act), then global average pooling and a Linear head. ``depth`` blocks are spread over the
stages. With ``residual=False`` each block is the same two convolutions without the skip:
the plain twin for comparing gradient flow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from gradwatch.nets.activations import make_activation
from gradwatch.nets.init import init_weights
from gradwatch.nets.residual import BranchBlock, check_branch_init, init_branches
from gradwatch.registry import choose, require_positive

CONV_NORMS: dict[str, Callable[[int], nn.Module] | None] = {
    "none": None,
    "batch": nn.BatchNorm2d,
    "layer": lambda channels: nn.GroupNorm(1, channels),  # LayerNorm over (C, H, W)
}


def _norm(name: str, channels: int) -> nn.Module:
    factory = choose("norm", name, CONV_NORMS)
    return nn.Identity() if factory is None else factory(channels)


class ResidualBlock(BranchBlock):
    """The article's block: ``act(bn2(conv2(act(bn1(conv1(x))))) + x)``.

    Args:
        channels: input and output channels (the skip is an identity).
        activation: a name from :data:`gradwatch.nets.ACTIVATIONS` (the article: relu).
        norm: ``batch`` (the article), ``layer`` or ``none``.
        residual: add the identity skip; ``False`` gives the plain two-conv block.
        branch_init: ``standard`` (the article), ``zero``, ``rezero`` or ``fixup``: see
            :mod:`gradwatch.nets.residual`. The network applies it after its ``init``.
    """

    NAMES = ("conv1", "bn1", "conv2", "bn2")

    def __init__(
        self,
        channels: int,
        activation: str = "relu",
        norm: str = "batch",
        residual: bool = True,
        branch_init: str = "standard",
    ) -> None:
        check_branch_init(branch_init, norm, residual)
        super().__init__(
            lambda bias: nn.Conv2d(channels, channels, 3, padding=1, bias=bias),
            lambda: _norm(norm, channels),
            make_activation(activation),
            residual,
            branch_init,
        )


class ConvNormAct(nn.Sequential):
    """Conv3x3 (stride 1 or 2), Norm, Act: the stem and the downsampling transitions."""

    def __init__(self, c_in: int, c_out: int, stride: int, activation: str, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.norm = _norm(norm, c_out)
        self.act = make_activation(activation)


class CNN(nn.Module):
    """Residual (the article's ``ResidualBlock``) or plain CNN classifier.

    Args:
        input_shape: ``(channels, height, width)`` of one example (1 or 3 channels).
        num_classes: number of output logits.
        depth: number of blocks, spread over the stages (earlier stages get the extra ones).
        width: channels of the first stage; each later stage doubles them.
        stages: resolution levels; each after the first halves height and width.
        activation: a name from :data:`gradwatch.nets.ACTIVATIONS`.
        init: a name from :data:`gradwatch.nets.INITS` (He init, ``kaiming_normal``, by default).
        norm: ``batch``, ``layer`` (GroupNorm with one group) or ``none``.
        residual: identity skips in every block.
        init_scale, bias_init: as for :class:`gradwatch.nets.MLP`.
        branch_init: how each block's branch starts (``standard``, ``zero``, ``rezero``,
            ``fixup``; see :mod:`gradwatch.nets.residual`); with ``zero``, ``rezero`` or
            ``fixup`` the blocks train without normalization at thousands of blocks.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        depth: int = 6,
        width: int = 32,
        stages: int = 3,
        activation: str = "relu",
        init: str = "kaiming_normal",
        norm: str = "batch",
        residual: bool = True,
        init_scale: float = 1.0,
        bias_init: str = "default",
        branch_init: str = "standard",
    ) -> None:
        super().__init__()
        require_positive("model.net.depth", depth)
        require_positive("model.net.width", width)
        require_positive("model.net.stages", stages)
        require_positive("num_classes", num_classes)
        make_activation(activation)  # validate names before building anything
        choose("norm", norm, CONV_NORMS)
        check_branch_init(branch_init, norm, residual)
        shape = tuple(input_shape)
        if len(shape) != 3:
            raise ValueError(
                f"CNN needs image inputs shaped (channels, height, width), got {shape}. "
                "Use model=mlp for flat features."
            )
        self.residual = bool(residual)
        self.stem = ConvNormAct(shape[0], width, 1, activation, norm)
        self.stages = nn.ModuleList()
        channels = width
        for i in range(stages):
            blocks: list[nn.Module] = []
            if i > 0:
                blocks.append(ConvNormAct(channels, channels * 2, 2, activation, norm))
                channels *= 2
            n_blocks = depth // stages + (1 if i < depth % stages else 0)
            blocks += [
                ResidualBlock(channels, activation, norm, residual, branch_init)
                for _ in range(n_blocks)
            ]
            self.stages.append(nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)
        init_weights(self, init, scale=init_scale, bias=bias_init)
        init_branches(self, depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(self.pool(x).flatten(1))
