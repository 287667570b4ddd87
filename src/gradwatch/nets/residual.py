"""Residual blocks and the branch initializations that train them without normalization.

A residual block computes ``x + F(x)``, where the *branch* ``F`` is two weight layers
(Linear or Conv) with an activation between them. How ``F`` starts decides whether a
very deep stack trains without BatchNorm: with a standard (He) init every block adds a
branch as large as its input, so the signal's variance doubles per block (``2^L`` for L
blocks: 1,000 blocks overflow float32). The cures start each branch at (or near) zero, so
that the whole network is the identity (or close to it) at initialization and the
gradient reaches every block unchanged, whatever the depth:

=============  ==================================================================================
branch_init    what it does
=============  ==================================================================================
``standard``   the article's block ``act(F(x) + x)``, every layer initialized by ``init``.
``zero``       the same block with the branch's last layer at zero: the last norm's scale
               (gamma) when there is a norm (Goyal et al. 2017, "Accurate, Large Minibatch SGD",
               zero-gamma), else the last weight layer's weight and bias. At init every block is
               ``act(x)``: the identity on the non-negative output of a ReLU layer.
``rezero``     ``x + alpha * F(x)`` with one learnable scalar ``alpha`` per block starting at 0
               and no activation after the sum (Bachlechner et al. 2020, "ReZero is All You
               Need: Fast Convergence at Large Depth"; the same scalar is De & Smith 2020's
               SkipInit, "Batch Normalization Biases Residual Blocks Towards the Identity
               Function in Deep Networks"). Every block is exactly the identity at init.
``fixup``      Zhang, Dauphin & Ma 2019, "Fixup Initialization: Residual Learning Without
               Normalization": the branch's first layer initialized by ``init`` (He) and then
               multiplied by ``L^(-1/(2m-2))`` (L blocks, m = 2 weight layers per branch:
               ``L^(-1/2)``), its last layer at zero, no biases in the branch's weight layers
               but a scalar bias (0) before each weight layer and each activation and a
               scalar multiplier (1) at the branch's end. Needs ``norm=none`` (it replaces
               normalization). The paper also zeroes the classifier; here it keeps the
               ``init`` scheme, so that step 0 already has a gradient in every layer (with
               the classifier at zero every other gradient is 0 at step 0).
=============  ==================================================================================

``zero``, ``rezero`` and ``fixup`` all make the network at init equal to its input layer
followed by its classifier; they differ in how the branches grow once training starts.
With Adam every weight moves by about the learning rate per step whatever its gradient,
and through the identity path every block sees the same output gradient: the steps of
thousands of zero-initialized last layers all push the output the same way and add up, so
``zero`` with Adam (lr 1e-3) stops learning at 1,000 blocks and overflows at 10,000, while
``rezero`` (one scalar per block) and ``fixup`` (branches scaled by ``L^(-1/2)``) keep
learning at 10,000 (val acc 0.92 and 0.86 after 50 steps on digits: ``make sweep
SWEEP=deep``, README).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gradwatch.registry import choose

#: branch_init name -> one line for error messages and docs.
BRANCH_INITS: dict[str, str] = {
    "standard": "the article's block act(F(x) + x), every layer by `init`",
    "zero": "the branch's last layer (or its norm's gamma) at zero (Goyal et al. 2017)",
    "rezero": "x + alpha * F(x), alpha a learnable scalar starting at 0 (Bachlechner et al. 2020)",
    "fixup": "branch scaled by L^(-1/2), last layer zero, scalar biases (Zhang et al. 2019)",
}

#: The Fixup paper's m: weight layers per residual branch.
FIXUP_BRANCH_LAYERS = 2


def check_branch_init(branch_init: str, norm: str, residual: bool) -> None:
    """Raise a ValueError naming the value for a branch_init that cannot apply."""
    choose("branch_init", branch_init, BRANCH_INITS)
    if branch_init != "standard" and not residual:
        raise ValueError(
            f"model.net.branch_init={branch_init!r} needs residual blocks "
            "(model.net.residual=true); a plain network has no branch to initialize. "
            "Use branch_init=standard for plain networks."
        )
    if branch_init == "fixup" and norm != "none":
        raise ValueError(
            f"model.net.branch_init='fixup' replaces normalization: it needs "
            f"model.net.norm=none, got norm={norm!r}. Use branch_init=zero or rezero with a norm."
        )


def fixup_scale(num_blocks: int, branch_layers: int = FIXUP_BRANCH_LAYERS) -> float:
    """Fixup's factor on the branch's weights: ``L^(-1/(2m-2))``."""
    return float(num_blocks) ** (-1.0 / (2 * branch_layers - 2))


def _scalar(value: float) -> nn.Parameter:
    return nn.Parameter(torch.full((), float(value)))


class BranchBlock(nn.Module):
    """A residual block ``x -> x + F(x)`` whose branch ``F`` is ``w1, n1, act, w2, n2``.

    Subclasses name the parts (``NAMES``: first weight layer, first norm, second weight
    layer, second norm) and build the weight layers (``make_layer(bias)``); the forward
    pass and the branch initializations are shared. See the module docstring for
    ``branch_init``.

    Args:
        make_layer: ``bias -> weight layer`` (a Linear or Conv of the block's width).
        make_norm: ``() -> norm module`` (``nn.Identity`` for no norm).
        activation: the activation module, used inside the branch and after the sum.
        residual: add the identity skip (``False``: the plain two-layer block).
        branch_init: ``standard``, ``zero``, ``rezero`` or ``fixup``.
    """

    NAMES = ("layer1", "norm1", "layer2", "norm2")

    def __init__(
        self,
        make_layer: Callable[[bool], nn.Module],
        make_norm: Callable[[], nn.Module],
        activation: nn.Module,
        residual: bool = True,
        branch_init: str = "standard",
    ) -> None:
        super().__init__()
        self.branch_init = branch_init
        self.residual = bool(residual)
        bias = branch_init != "fixup"  # Fixup: scalar biases instead
        w1, n1, w2, n2 = self.NAMES
        setattr(self, w1, make_layer(bias))
        setattr(self, n1, make_norm())
        setattr(self, w2, make_layer(bias))
        setattr(self, n2, make_norm())
        self.act = activation
        if branch_init == "rezero":
            self.alpha = _scalar(0.0)
        elif branch_init == "fixup":
            self.bias1a, self.bias1b, self.bias2a, self.bias2b = (_scalar(0.0) for _ in range(4))
            self.scale = _scalar(1.0)

    def _parts(self) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        return tuple(getattr(self, name) for name in self.NAMES)  # type: ignore[return-value]

    @torch.no_grad()
    def init_branch(self, num_blocks: int) -> None:
        """Apply the branch initialization (after the network's ``init`` scheme)."""
        w1, _, w2, n2 = self._parts()
        if self.branch_init == "zero":
            last = n2 if getattr(n2, "weight", None) is not None else w2
            last.weight.zero_()
            if getattr(last, "bias", None) is not None:
                last.bias.zero_()
        elif self.branch_init == "fixup":
            w1.weight.mul_(fixup_scale(num_blocks))
            w2.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w1, n1, w2, n2 = self._parts()
        if self.branch_init == "fixup":
            out = self.act(w1(x + self.bias1a) + self.bias1b)
            out = w2(out + self.bias2a) * self.scale + self.bias2b
        else:
            out = n2(w2(self.act(n1(w1(x)))))
        if self.branch_init == "rezero":
            out = self.alpha * out
        if self.branch_init != "standard":
            return x + out  # a clean skip: no activation after the sum (identity at init)
        if self.residual:
            out = out + x  # the skip: gradients flow straight through
        return self.act(out)


def init_branches(net: nn.Module, num_blocks: int) -> None:
    """Apply every block's branch initialization; O(number of modules)."""
    for module in net.modules():
        if isinstance(module, BranchBlock):
            module.init_branch(num_blocks)
