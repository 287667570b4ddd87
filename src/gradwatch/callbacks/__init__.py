"""Callbacks that watch gradients and activations; they work with any LightningModule."""

from gradwatch.callbacks.activation_stats import ActivationStatsCallback
from gradwatch.callbacks.grad_norm import GradientNormCallback
from gradwatch.verdict import Diagnosis, diagnose

__all__ = ["ActivationStatsCallback", "Diagnosis", "GradientNormCallback", "diagnose"]
