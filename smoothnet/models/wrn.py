"""Wide-ResNet for DP-SGD as in De et al. 2022 ("Unlocking High-Accuracy Differentially Private
Image Classification through Scale"), ported from google-deepmind/jax_privacy
(``experiments/image_classification/models/cifar.py``, ``WideResNet``; ``common.py``, ``WSConv2D``).

Pre-activation blocks in their order: activation -> GroupNorm(16) -> conv, twice, plus a skip
(activation -> norm -> 1x1 conv on the first block of each group, identity after). Stem conv 3x3 to
16 channels; groups of width 16k, 32k, 64k with strides 1, 2, 2 and (depth-4)/6 blocks each;
final activation -> norm -> global average -> Linear. Every conv has a bias (haiku's default);
weight standardisation (their default, ``which_conv='WSConv2D'``) is an option. No BatchNorm.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from smoothnet.models.layers import conv2d, group_norm
from smoothnet.models.registry import register_model


class _PreAct(nn.Sequential):
    """activation -> GroupNorm -> conv."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, groups: int, ws: bool) -> None:
        super().__init__(
            nn.ReLU(),
            group_norm(in_ch, groups),
            conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, weight_standardization=ws),
        )


class WideResNetBlock(nn.Module):
    """Two pre-activation 3x3 convs; projected skip when ``project`` (first block of a group)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, project: bool, groups: int, ws: bool) -> None:
        super().__init__()
        self.skip = _PreAct(in_ch, out_ch, 1, stride, groups, ws) if project else nn.Identity()
        self.residual = nn.Sequential(
            _PreAct(in_ch, out_ch, 3, stride, groups, ws),
            _PreAct(out_ch, out_ch, 3, 1, groups, ws),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.skip(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``width`` with GroupNorm (``groups``) and optional weight standardisation."""

    def __init__(
        self,
        num_classes: int = 10,
        depth: int = 16,
        width: int = 4,
        groups: int = 16,
        weight_standardization: bool = True,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        blocks_per_group = (depth - 4) // 6
        ws = weight_standardization
        self.stem = conv2d(in_channels, 16, 3, padding=1, weight_standardization=ws)
        layers, channels = [], 16
        for group_width, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
            for i in range(blocks_per_group):
                layers.append(
                    WideResNetBlock(channels, group_width, stride if i == 0 else 1, i == 0, groups, ws)
                )
                channels = group_width
        self.blocks = nn.Sequential(*layers)
        self.final = nn.Sequential(nn.ReLU(), group_norm(channels, groups))
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.final(self.blocks(self.stem(x)))
        return self.classifier(torch.mean(x, dim=(2, 3)))


@register_model("wrn16_4", "Wide-ResNet-16-4 of De et al. 2022: GroupNorm(16), weight standardisation")
def wrn16_4(num_classes: int = 10, image_size: int = 32, weight_standardization: bool = True) -> nn.Module:
    """WRN-16-4, De et al.'s CIFAR-10 reference architecture (jax_privacy defaults)."""
    return WideResNet(
        num_classes, depth=16, width=4, groups=16, weight_standardization=weight_standardization
    )
