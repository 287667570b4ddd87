"""The layers of a model (modules that own parameters), their stable names, and which of
them go to the loggers."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

#: Name segments added by wrappers that do not change what a layer is: torch.compile,
#: activation checkpointing, FSDP1. A compiled and an eager run of one model log the same keys.
WRAPPER_SEGMENTS = frozenset({"_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module"})


@dataclass
class Layer:
    name: str
    module: nn.Module
    params: list[nn.Parameter] = field(default_factory=list)


def stable_name(path: str) -> str:
    """A module path without wrapper segments (``model._orig_mod.net.0`` -> ``model.net.0``)."""
    return ".".join(part for part in path.split(".") if part not in WRAPPER_SEGMENTS)


def find_layers(model: nn.Module) -> list[Layer]:
    """Every module that owns parameters, frozen ones included (they may be unfrozen later),
    in registration order. A parameter shared by several modules (tied weights) belongs to
    the first one only, so that no parameter is counted twice."""
    modules = dict(model.named_modules())
    layers: dict[str, Layer] = {}
    for path, param in model.named_parameters():  # deduplicates shared parameters
        owner = path.rpartition(".")[0]
        if owner not in layers:
            name = stable_name(owner) or type(model).__name__
            layers[owner] = Layer(name, modules[owner])
        layers[owner].params.append(param)
    return list(layers.values())


def select_layers(
    names: Sequence[str],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    max_layers: int | None = None,
) -> list[int]:
    """Indices of the layers (``names`` in depth order) whose per-layer keys are logged.

    ``include`` / ``exclude`` are shell patterns on the layer name (``net.blocks.*.conv1``);
    ``max_layers`` then keeps the first and the last and evenly spaced ones between them,
    so a 10,000-layer profile stays a readable, cheap set of curves.
    """
    chosen = [
        i
        for i, name in enumerate(names)
        if (not include or any(fnmatch.fnmatchcase(name, p) for p in include))
        and not any(fnmatch.fnmatchcase(name, p) for p in exclude or ())
    ]
    if max_layers is None or len(chosen) <= max_layers:
        return chosen
    if max_layers == 1:
        return chosen[:1]
    last = len(chosen) - 1
    return [chosen[round(k * last / (max_layers - 1))] for k in range(max_layers)]
