"""Find the layers of a model (modules that own parameters) and their forward order."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Layer:
    name: str
    module: nn.Module
    params: list[nn.Parameter] = field(default_factory=list)


def parameter_layers(model: nn.Module) -> list[Layer]:
    """Every module that owns trainable parameters itself, in registration order."""
    layers = []
    for name, module in model.named_modules():
        params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if params:
            layers.append(Layer(name or type(model).__name__, module, params))
    return layers


class ForwardOrder:
    """Records the order in which layers first run, with forward pre-hooks.

    Registration order is only a guess at forward order (a ModuleList can be called in
    any order); the hooks see the real one. Call :meth:`remove` once a forward has run.
    """

    def __init__(self, layers: list[Layer]) -> None:
        self.seen: list[str] = []
        self._handles = [
            layer.module.register_forward_pre_hook(self._hook(layer.name)) for layer in layers
        ]

    def _hook(self, name: str):
        def record(module: nn.Module, args: tuple) -> None:
            if name not in self.seen:
                self.seen.append(name)

        return record

    def sort(self, layers: list[Layer]) -> list[Layer]:
        """``layers`` in forward order; layers that never ran keep their place at the end."""
        rank = {name: i for i, name in enumerate(self.seen)}
        return sorted(layers, key=lambda layer: rank.get(layer.name, len(rank)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def grouped_norms(
    tensors: list[torch.Tensor | None],
    layer_of_tensor: torch.Tensor,
    n_layers: int,
    norm_type: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer norms of ``tensors`` (``None`` entries skipped) and a mask of the layers
    that had at least one tensor, both on the device of ``layer_of_tensor``.

    One fused multi-tensor norm over all tensors, then the per-tensor norms are combined
    into layers with an index add: no per-tensor host syncs, no per-tensor kernels.
    """
    device = layer_of_tensor.device
    present = [i for i, t in enumerate(tensors) if t is not None]
    has_any = torch.zeros(n_layers, dtype=torch.bool, device=device)
    if not present:
        return torch.zeros(n_layers, device=device), has_any
    if len(present) < len(tensors):
        tensors = [tensors[i] for i in present]
        index = layer_of_tensor[present]
    else:
        index = layer_of_tensor
    per_tensor = torch._foreach_norm(tensors, norm_type)
    try:
        norms = torch.stack(per_tensor).float().to(device)
    except RuntimeError:  # tensors on several devices or of several dtypes
        norms = torch.stack([n.float().to(device) for n in per_tensor])
    if norm_type == float("inf"):
        out = torch.full((n_layers,), float("-inf"), device=device)
        out = out.scatter_reduce(0, index, norms, reduce="amax")
    else:
        out = torch.zeros(n_layers, device=device).index_add(0, index, norms.pow(norm_type))
        out = out.pow(1.0 / norm_type)
    has_any[index] = True
    return out.masked_fill(~has_any, 0.0), has_any


def layer_grad_norms(
    params: list[nn.Parameter], layer_of_param: torch.Tensor, n_layers: int, norm_type: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer gradient norms and a mask of the layers that have a gradient, on the device."""
    return grouped_norms([p.grad for p in params], layer_of_param, n_layers, norm_type)


def total_norm(layer_norms: torch.Tensor, norm_type: float) -> torch.Tensor:
    """The norm of all layers together, from the per-layer norms (on the device)."""
    if norm_type == float("inf"):
        return layer_norms.max()
    return layer_norms.pow(norm_type).sum().pow(1.0 / norm_type)
