"""The article's networks, built from one configurable MLP (and a CNN, see cnn.py)."""

from gradwatch.nets.activations import ACTIVATIONS, make_activation
from gradwatch.nets.cnn import CNN, CONV_NORMS, ResidualBlock
from gradwatch.nets.init import INITS, init_weights
from gradwatch.nets.mlp import MLP, NORMS, ResidualMLPBlock
from gradwatch.nets.residual import BRANCH_INITS, BranchBlock

__all__ = [
    "ACTIVATIONS",
    "BRANCH_INITS",
    "CNN",
    "CONV_NORMS",
    "INITS",
    "MLP",
    "NORMS",
    "BranchBlock",
    "ResidualBlock",
    "ResidualMLPBlock",
    "init_weights",
    "make_activation",
]
