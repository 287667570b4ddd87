"""Batched image augmentation as tensor ops: every example gets its own random draw, on the
batch's device, in any dtype (uint8 batches stay uint8). Randomness comes from torch's global
generator, which ``seed_everything`` seeds."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad ``(N, C, H, W)`` by ``padding`` on every side and crop a random ``H x W``
    window per example (torchvision's ``RandomCrop(size, padding=padding)``)."""
    if padding == 0 or len(x) == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, channel, rows, cols]


def random_hflip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Mirror each example left-right with probability ``p``."""
    flip = torch.rand(len(x), device=x.device) < p
    return torch.where(flip.view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)
