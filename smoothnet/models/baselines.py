"""The paper's baselines: ResNet-9/18/34, DenseNet-121, EfficientNet-B0, BatchNorm -> GroupNorm.

torchvision's definitions (``weights=None``: never downloads) with a new ``num_classes`` head and
every BatchNorm replaced by ``GroupNorm(gcd(8, C), C)``, as in the paper's baselines. The
GroupNorm has the same affine parameters as the BatchNorm it replaces, so parameter counts equal
torchvision's: ResNet-18 11,173,962 (CIFAR stem) / 11,181,642 (ImageNet stem), ResNet-34
21,289,802, DenseNet-121 6,964,106, EfficientNet-B0 4,020,358 for 10 classes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision import models as tv
from torchvision.models import efficientnet as tv_efficientnet
from torchvision.models import resnet as tv_resnet

from smoothnet.models.layers import group_norm, replace_batchnorm
from smoothnet.models.registry import register_model


def dp_ready(model: nn.Module) -> nn.Module:
    """BatchNorm -> GroupNorm(gcd(8, C)) and every in-place activation made out-of-place.

    Opacus' hooks mode wraps each parameterised layer's output in a backward-hook function;
    torchvision's in-place ReLU/SiLU on such an output (e.g. GroupNorm -> ReLU(inplace=True))
    is rejected by autograd, so in-place is switched off (same values, a little more memory).
    """
    replace_batchnorm(model)
    for module in model.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
        # Same reason: residual blocks add their skip in place onto a GroupNorm output.
        # The subclasses only override forward (no new state), so swapping the class is safe.
        if type(module) is tv_resnet.BasicBlock:
            module.__class__ = BasicBlock
        elif type(module) is tv_efficientnet.MBConv:
            module.__class__ = MBConv
    return model


class BasicBlock(tv_resnet.BasicBlock):
    """torchvision's ResNet BasicBlock with an out-of-place skip addition."""

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class MBConv(tv_efficientnet.MBConv):
    """torchvision's EfficientNet MBConv with an out-of-place skip addition."""

    def forward(self, x: Tensor) -> Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result = self.stochastic_depth(result) + x
        return result


class DenseNet(tv.DenseNet):
    """torchvision's DenseNet with its final in-place ReLU made out-of-place (see :func:`dp_ready`)."""

    def forward(self, x: Tensor) -> Tensor:
        out = nn.functional.relu(self.features(x))
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)


def _conv_norm_relu(in_channels: int, out_channels: int, pool: bool = False) -> nn.Sequential:
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        group_norm(out_channels),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """``x + body(x)``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNet9(nn.Sequential):
    """ResNet-9, the DP-SGD literature's CIFAR-10 ResNet-9 (Page's DAWNBench net), with GroupNorm.

    conv64, conv128+pool, residual(conv128, conv128), conv256+pool, conv256+pool,
    residual(conv256, conv256), AdaptiveMaxPool 2x2, Linear 1024 -> classes. Each conv is 3x3 without
    bias -> GroupNorm(8) -> ReLU, pooling after the activation. 2,447,946 parameters for 10 classes.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__(
            _conv_norm_relu(in_channels, 64),
            _conv_norm_relu(64, 128, pool=True),
            Residual(nn.Sequential(_conv_norm_relu(128, 128), _conv_norm_relu(128, 128))),
            _conv_norm_relu(128, 256, pool=True),
            _conv_norm_relu(256, 256, pool=True),
            Residual(nn.Sequential(_conv_norm_relu(256, 256), _conv_norm_relu(256, 256))),
            nn.AdaptiveMaxPool2d(2),
            nn.Flatten(),
            nn.Linear(256 * 4, num_classes),
        )


def _cifar_stem(model: tv.ResNet) -> tv.ResNet:
    # 32x32 inputs: 3x3 stride-1 stem and no max-pool, as the authors' code for CIFAR-10.
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@register_model("resnet9", "ResNet-9 (DAWNBench), GroupNorm(8); CIFAR-10 only", image_sizes=(32,))
def resnet9(num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """ResNet-9 for CIFAR-10 (see :class:`ResNet9`)."""
    return ResNet9(num_classes)


@register_model("resnet18", "torchvision ResNet-18, GroupNorm(8); 3x3 stride-1 stem, no max-pool at 32x32")
def resnet18(num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """ResNet-18: CIFAR stem at 32x32, the standard ImageNet stem at 224x224."""
    model = tv.resnet18(weights=None, num_classes=num_classes)
    if image_size == 32:
        model = _cifar_stem(model)
    return dp_ready(model)


@register_model("resnet34", "torchvision ResNet-34 (standard stem), GroupNorm(8)")
def resnet34(num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """ResNet-34 with the standard stem at every resolution (21,289,802 parameters for 10 classes)."""
    return dp_ready(tv.resnet34(weights=None, num_classes=num_classes))


@register_model("densenet121", "torchvision DenseNet-121, GroupNorm(8)")
def densenet121(num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """DenseNet-121 (standard stem: growth 32, blocks 6-12-24-16, 64 initial features), new head."""
    return dp_ready(DenseNet(32, (6, 12, 24, 16), 64, num_classes=num_classes))


@register_model("efficientnet_b0", "torchvision EfficientNet-B0, GroupNorm(8); stochastic depth 0.2 kept")
def efficientnet_b0(num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """EfficientNet-B0 with a new head; dropout 0.2 and row-wise stochastic depth as torchvision.

    Both are per-example random masks, so each example's gradient still depends on that example
    alone and per-sample clipping bounds its contribution.
    """
    return dp_ready(tv.efficientnet_b0(weights=None, num_classes=num_classes))
