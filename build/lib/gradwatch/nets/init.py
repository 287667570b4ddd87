"""Weight-initialization registry, applied to every Linear and Conv layer of a network."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from gradwatch.registry import choose, require_positive

#: The article's DeepSigmoidNet demo draws weights from normal(0, 0.01).
ARTICLE_NORMAL_STD = 0.01

INITS: dict[str, Callable[[torch.Tensor], object] | None] = {
    "default": None,  # PyTorch's own (kaiming_uniform with a=sqrt(5)): the article's DeepSigmoidNet
    "normal": partial(nn.init.normal_, mean=0.0, std=ARTICLE_NORMAL_STD),
    "xavier_normal": nn.init.xavier_normal_,
    "xavier_uniform": nn.init.xavier_uniform_,
    # He init as in the article: fan_in, gain for ReLU.
    "kaiming_normal": partial(nn.init.kaiming_normal_, mode="fan_in", nonlinearity="relu"),
    "kaiming_uniform": partial(nn.init.kaiming_uniform_, mode="fan_in", nonlinearity="relu"),
    "orthogonal": nn.init.orthogonal_,
}

BIAS_INITS = ("default", "zeros")
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@torch.no_grad()
def init_weights(
    net: nn.Module, init: str = "default", scale: float = 1.0, bias: str = "default"
) -> None:
    """Initialize the weights of every Linear/Conv layer of ``net`` in place.

    ``scale`` multiplies the initialized weights (1.0 leaves them as the scheme made them);
    ``bias="zeros"`` zeroes the biases, as the article's ModernDeepNetwork does.
    """
    fill = choose("init", init, INITS)
    choose("bias init", bias, dict.fromkeys(BIAS_INITS))
    require_positive("init_scale", scale, float)
    for module in net.modules():
        if not isinstance(module, _WEIGHTED):
            continue
        if fill is not None:
            fill(module.weight)
        if scale != 1.0:
            module.weight.mul_(scale)
        if bias == "zeros" and module.bias is not None:
            module.bias.zero_()
