"""Callbacks that watch gradients and activations; they work with any LightningModule."""

from gradwatch.callbacks.activation_stats import ActivationStatsCallback
from gradwatch.verdict import Diagnosis, diagnose
from gradwatch.callbacks.grad_norm import GradientNormCallback

__all__ = ["ActivationStatsCallback", "Diagnosis", "GradientNormCallback", "diagnose"]
