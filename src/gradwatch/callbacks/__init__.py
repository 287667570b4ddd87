"""Callbacks that watch gradients; they work with any LightningModule."""

from gradwatch.callbacks.diagnosis import Diagnosis, diagnose
from gradwatch.callbacks.grad_norm import GradientNormCallback

__all__ = ["Diagnosis", "GradientNormCallback", "diagnose"]
