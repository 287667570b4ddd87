"""Per-tensor norms computed on the device in one fused kernel, summed into per-layer norms
on the host in float64; sharded tensors (FSDP2's DTensors) reduced with one collective."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

try:
    from torch.distributed.tensor import DTensor, Replicate
except ImportError:  # a torch build without distributed support
    DTensor = Replicate = None


def local_tensors(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[float] | None]:
    """Each tensor's local part, and (when some are sharded) how much each counts: 1 for a
    shard, and for a replicated tensor 1 on the first replica and 0 on the others."""
    if DTensor is None or not any(isinstance(t, DTensor) for t in tensors):
        return tensors, None
    parts, weights = [], []
    for t in tensors:
        if isinstance(t, DTensor):
            coordinate = t.device_mesh.get_coordinate() or []
            replica = any(
                isinstance(p, Replicate) and c != 0 for p, c in zip(t.placements, coordinate)
            )
            parts.append(t.to_local())
            weights.append(0.0 if replica else 1.0)
        else:  # a plain tensor beside sharded ones is the same on every rank
            parts.append(t)
            weights.append(1.0 if dist.get_rank() == 0 else 0.0)
    return parts, weights


def tensor_norms(tensors: list[torch.Tensor], p: float, device: torch.device) -> torch.Tensor:
    """The p-norm of every tensor as one float32 vector on ``device`` (low-precision
    tensors are accumulated in float32), with no host sync."""
    if not tensors:
        return torch.zeros(0, device=device)
    norms = torch._foreach_norm(tensors, p, dtype=torch.float32)
    try:
        return torch.stack(norms).to(device)
    except RuntimeError:  # tensors on several devices
        return torch.stack([n.to(device) for n in norms])


def to_host(norms: torch.Tensor, p: float, weights: list[float] | None) -> list[float]:
    """The p-th powers of ``norms`` (the norms themselves for p = inf) as Python floats
    (float64): the one device-to-host transfer of a logging step. With sharded tensors the
    local powers are first summed (max for p = inf) over all ranks in one collective."""
    if weights is None:
        host = norms.cpu().double()  # float32 -> float64 is exact
        return (host if p == math.inf else host.pow_(p)).tolist()  # inf where a power overflows
    powers = norms.double() if p == math.inf else norms.double().pow(p)
    powers *= torch.tensor(weights, dtype=powers.dtype, device=powers.device)
    dist.all_reduce(powers, op=dist.ReduceOp.MAX if p == math.inf else dist.ReduceOp.SUM)
    return powers.tolist()


def group(powers: list[float], index: list[int], n: int, p: float) -> list[float]:
    """Per-group norms from per-tensor powers (group ``index[i]`` gets ``powers[i]``), on
    the host: one addition a tensor (about 0.1 us; four tensor operations cost more to
    launch on a small net)."""
    out = [0.0] * n
    if p == math.inf:
        for i, v in zip(index, powers, strict=True):
            if v > out[i] or v != v:  # a NaN wins and stays
                out[i] = v
        return out
    for i, v in zip(index, powers, strict=True):
        out[i] += v
    return [v ** (1 / p) for v in out]


def elements_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element is finite (a norm can overflow where no element does)."""
    return all(bool(torch.isfinite(t).all()) for t in local_tensors(tensors)[0])
