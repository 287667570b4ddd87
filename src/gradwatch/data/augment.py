"""Batched image augmentation as tensor ops: every example gets its own random draw, applied
on the batch's device, in any dtype (uint8 batches stay uint8).

The draws come from ``generator`` (a CPU ``torch.Generator``; torch's global one when None)
and are moved to the batch's device: the same seed gives the same crops and flips on any
device, and a datamodule can save and restore the generator's state for an exact resume."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _draw(
    fn, *args, generator: torch.Generator | None, device: torch.device, **kwargs
) -> torch.Tensor:
    return fn(*args, generator=generator, **kwargs).to(device, non_blocking=True)


def random_crop(
    x: torch.Tensor, padding: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero-pad ``(N, C, H, W)`` by ``padding`` on every side and crop a random ``H x W``
    window per example (torchvision's ``RandomCrop(size, padding=padding)``)."""
    if padding == 0 or len(x) == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = _draw(torch.randint, 0, 2 * padding + 1, (n, 1), generator=generator, device=x.device)
    dx = _draw(torch.randint, 0, 2 * padding + 1, (n, 1), generator=generator, device=x.device)
    rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, channel, rows, cols]


def random_hflip(
    x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mirror each example left-right with probability ``p``."""
    flip = _draw(torch.rand, len(x), generator=generator, device=x.device) < p
    return torch.where(flip.view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)
