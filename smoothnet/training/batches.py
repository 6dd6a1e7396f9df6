"""Turning stored uint8 batches into model inputs: normalisation and augmentation on the device."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 (B, C, H, W) -> float32, scaled to [0, 1] then standardised per channel."""
    x = images.float().div_(255.0)
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def random_crop_flip(x: Tensor, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Random crop after zero-padding by ``padding`` and random horizontal flip, per image, vectorised.

    Draws from ``generator`` (a CPU generator; a DP run passes its private augmentation stream), else from
    the global torch RNG.
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h) + dy.view(b, 1)  # (B, H)
    cols = torch.arange(w, device=x.device).view(1, w).expand(b, w)
    cols = torch.where(flip.view(b, 1), (w - 1) - cols, cols) + dx.view(b, 1)  # (B, W)
    batch_index = torch.arange(b, device=x.device).view(b, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch_index, rows.view(b, h, 1), cols.view(b, 1, w)]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def augmentation_views(x: Tensor, multiplicity: int, generator: torch.Generator | None = None) -> Tensor:
    """``multiplicity`` augmented views of every image, grouped per example: rows i*K..i*K+K-1 are example i."""
    repeated = x.repeat_interleave(multiplicity, dim=0)
    return random_crop_flip(repeated, generator=generator)
