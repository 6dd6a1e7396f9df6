"""Small networks for the DP-step tests: a tiny conv net (Conv2d, GroupNorm, SELU, Linear) and a layer
without a built-in clipping rule."""

from __future__ import annotations

import torch
from torch import nn


def tiny_net(seed: int = 0) -> nn.Module:
    """Deterministically initialised 3-class conv net on 3-channel images."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.SELU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    )


class Scale(nn.Module):
    """y = x * s (one scale per feature): a layer type the clipping module has no built-in rule for
    (it falls back to torch.func)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, features))

    def forward(self, x):
        return x * self.scale
