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


def tensor_norms(
    tensors: list[torch.Tensor], norm_type: float, device: torch.device
) -> torch.Tensor:
    """The p-norm of every tensor, as one float32 vector on ``device``: one fused
    multi-tensor kernel, no per-tensor kernels and no host sync."""
    if not tensors:
        return torch.zeros(0, device=device)
    norms = torch._foreach_norm(tensors, norm_type)
    try:
        return torch.stack(norms).float().to(device)
    except RuntimeError:  # tensors on several devices
        return torch.stack([n.float().to(device) for n in norms])


def group_norms(
    norms: torch.Tensor, index: torch.Tensor, n_groups: int, norm_type: float, root: bool = True
) -> torch.Tensor:
    """Combine per-tensor norms into per-group norms (group ``index[i]`` gets ``norms[i]``)
    with one index add; groups that get nothing are 0. ``root=False`` leaves the sums of
    p-th powers (the max for the inf-norm), for a caller that takes the root on the host."""
    if norm_type == float("inf"):
        out = torch.zeros(n_groups, device=norms.device)
        return out.scatter_reduce(0, index, norms, reduce="amax")
    out = torch.zeros(n_groups, device=norms.device).index_add_(0, index, norms.pow(norm_type))
    return out.pow_(1.0 / norm_type) if root else out
