"""Building blocks shared by the model families: DP-compatible norms, weight-standardised conv.

Every layer here either has a grad sampler registered in Opacus (Conv2d, Linear, GroupNorm) or,
like :class:`WSConv2d`, holds its own parameters directly and no buffers, so Opacus' hooks mode
computes its per-sample gradients through its functorch fallback (``GradSampleModule`` calls
``prepare_layer`` for every trainable module whose exact type has no registered grad sampler).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int, groups: int = 8, affine: bool = True) -> nn.GroupNorm:
    """GroupNorm with ``gcd(groups, channels)`` groups, so any channel count is valid."""
    return nn.GroupNorm(math.gcd(groups, channels), channels, affine=affine)


def replace_batchnorm(module: nn.Module, groups: int = 8) -> nn.Module:
    """Replace every BatchNorm in ``module`` (in place) by ``GroupNorm(gcd(groups, C), C)``.

    BatchNorm mixes the examples of a batch, so per-example gradients (and DP-SGD) are
    undefined with it. Returns ``module`` for chaining.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, group_norm(child.num_features, groups))
        else:
            replace_batchnorm(child, groups)
    return module


class WSConv2d(nn.Conv2d):
    """Conv2d with scaled weight standardisation and a learnable per-channel gain.

    As in De et al. 2022 (jax_privacy ``WSConv2D``, after Brock et al.'s NFNets): each output
    filter is standardised over its fan-in, ``w_hat = gain * (w - mean) / sqrt(max(fan_in*var,
    eps))``, so the layer is invariant to the scale of its raw weights. No running statistics, no
    buffers: per-example gradients stay well defined.
    """

    def __init__(self, *args, eps: float = 1e-4, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

    def standardized_weight(self) -> Tensor:
        """The standardised, gain-scaled kernel used in the forward pass."""
        weight = self.weight
        fan_in = weight[0].numel()
        mean = weight.mean(dim=(1, 2, 3), keepdim=True)
        var = weight.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        scale = torch.rsqrt(torch.clamp(var * fan_in, min=self.eps)) * self.gain
        return (weight - mean) * scale

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(
            x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups
        )


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    bias: bool = True,
    weight_standardization: bool = False,
) -> nn.Conv2d:
    """A plain or weight-standardised Conv2d with the same signature."""
    cls = WSConv2d if weight_standardization else nn.Conv2d
    return cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)


class TemperedSigmoid(nn.Module):
    """``scale * sigmoid(temperature * x) - offset`` (Papernot et al. 2021, arXiv 2007.14191).

    ``(scale, temperature, offset) = (2, 2, 1)`` is exactly ``tanh`` (the paper's Figure 1).
    """

    def __init__(self, scale: float = 2.0, temperature: float = 2.0, offset: float = 1.0) -> None:
        super().__init__()
        if scale <= 0 or temperature <= 0:
            raise ValueError(
                f"scale and temperature must be > 0, got scale={scale}, temperature={temperature}"
            )
        self.scale, self.temperature, self.offset = float(scale), float(temperature), float(offset)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * torch.sigmoid(self.temperature * x) - self.offset

    def extra_repr(self) -> str:
        return f"scale={self.scale}, temperature={self.temperature}, offset={self.offset}"
