"""A tiny conv net (Conv2d, GroupNorm, SELU, Linear) for DP-step tests."""

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
