"""SmoothNet (Remerscheid et al. 2022): a wide DenseNet without bottlenecks, SELU, GroupNorm, max-pool.

Follows ../shared/SPEC.md section 1 and the authors' PrivateModelArchitectures code. The
ablation options (activation, in-block pooling, normalisation, connection type, width, depth)
reproduce the thesis study; the defaults give the standard W80D50 network with 3,391,853
parameters for 10 classes at any resolution.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from smoothnet.models.registry import register_model

ACTIVATIONS = {"selu": nn.SELU, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU}
POOLINGS = ("max", "avg", "none")
NORMS = ("group", "instance", "none")
CONNECTIONS = ("plain", "residual", "dense")


def make_activation(name: str) -> nn.Module:
    """Activation module by name (selu, relu, leaky_relu)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def make_norm(kind: str, channels: int, groups: int = 8) -> nn.Module:
    """DP-compatible normalisation: GroupNorm(min(groups, C), C), InstanceNorm or none."""
    if kind == "group":
        return nn.GroupNorm(math.gcd(min(groups, channels), channels), channels, affine=True)
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)  # InstanceNorm as GroupNorm(C, C)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {list(NORMS)}, got {kind!r}")


def make_block_pool(kind: str) -> nn.Module:
    """Size-preserving pooling inside a block: 3x3 stride 1 padding 1, or none."""
    if kind == "max":
        return nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
    if kind == "avg":
        return nn.AvgPool2d(kernel_size=3, stride=1, padding=1)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"pool must be one of {list(POOLINGS)}, got {kind!r}")


class SmoothBlock(nn.Sequential):
    """Conv3x3 (no bias) -> size-preserving pool -> norm -> activation."""

    def __init__(
        self, in_channels: int, out_channels: int, activation: str, pool: str, norm: str, norm_groups: int
    ) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
            make_block_pool(pool),
            make_norm(norm, out_channels, norm_groups),
            make_activation(activation),
        )


class SmoothStack(nn.Module):
    """``depth`` SmoothBlocks joined by plain, residual or dense connections.

    - dense: block i sees ``in + i*growth`` channels; its output is concatenated to its input.
    - residual: every block maps ``growth -> growth`` and adds an identity skip; a first
      block without skip lifts ``in -> growth``.
    - plain: blocks in sequence, ``in -> growth -> ... -> growth``.
    """

    def __init__(self, in_channels: int, growth: int, depth: int, connection: str, **block_kw) -> None:
        super().__init__()
        if connection not in CONNECTIONS:
            raise ValueError(f"connection must be one of {list(CONNECTIONS)}, got {connection!r}")
        self.connection = connection
        if connection == "dense":
            widths = [in_channels + i * growth for i in range(depth)]
            self.out_channels = in_channels + depth * growth
        else:
            widths = [in_channels] + [growth] * (depth - 1)
            self.out_channels = growth
        self.blocks = nn.ModuleList(SmoothBlock(w, growth, **block_kw) for w in widths)

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.blocks):
            if self.connection == "dense":
                x = _cat(x, block(x))
            elif self.connection == "residual" and i > 0:
                x = x + block(x)
            else:
                x = block(x)
        return x


def _cat(a: Tensor, b: Tensor) -> Tensor:
    import torch

    return torch.cat([a, b], dim=1)


class SmoothNet(nn.Module):
    """Two SmoothStacks, a 1x1 transition, and an MLP head on the last block's channels.

    Args:
        num_classes: outputs of the last Linear layer.
        width: width factor; stage growth is ``int(8*width)`` and ``int(16*width)``.
        depth: depth factor; each stage has ``int(depth)`` blocks.
        activation, pool, norm, norm_groups, connection: ablation options (see module docstring).
        in_channels: image channels.
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: float = 8.0,
        depth: float = 5.0,
        activation: str = "selu",
        pool: str = "max",
        norm: str = "group",
        norm_groups: int = 8,
        connection: str = "dense",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if width <= 0 or depth < 1:
            raise ValueError(f"width must be > 0 and depth >= 1, got width={width}, depth={depth}")
        block_kw = dict(activation=activation, pool=pool, norm=norm, norm_groups=norm_groups)
        growth0, growth1 = int(8 * width), int(16 * width)
        self.stage0 = SmoothStack(in_channels, growth0, int(depth), connection, **block_kw)
        transition_out = self.stage0.out_channels // 2
        self.transition = nn.Sequential(
            nn.Conv2d(self.stage0.out_channels, transition_out, kernel_size=1, bias=False),
            nn.AvgPool2d(kernel_size=2, stride=2),
        )
        self.stage1 = SmoothStack(transition_out, growth1, int(depth), connection, **block_kw)
        self.head_channels = growth1
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)
        self.adaptive_pool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(
            nn.Linear(growth1 * 16, 256),
            make_activation(activation),
            nn.Linear(256, 128),
            make_activation(activation),
            nn.Linear(128, num_classes),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform with the SELU gain on every Conv2d and Linear weight (authors' init)."""
        gain = nn.init.calculate_gain("selu")
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight, gain=gain)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage0(x)
        x = self.transition(x)
        x = self.stage1(x)
        x = self.pool(x)
        x = x[:, -self.head_channels :]  # only the last block's output feeds the head
        x = self.adaptive_pool(x)
        return self.classifier(x.flatten(1))


@register_model("smoothnet", "SmoothNet, default W80D50 (width 8.0, depth 5.0); ablation options")
def smoothnet(
    num_classes: int = 10,
    image_size: int = 32,
    width: float = 8.0,
    depth: float = 5.0,
    activation: str = "selu",
    pool: str = "max",
    norm: str = "group",
    norm_groups: int = 8,
    connection: str = "dense",
) -> nn.Module:
    """SmoothNet with the authors' ablation options; resolution-independent."""
    return SmoothNet(num_classes, width, depth, activation, pool, norm, norm_groups, connection)


@register_model("smoothnet_w80d50", "SmoothNet W80D50, the paper's standard network")
def smoothnet_w80d50(num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """The paper's SmoothNet: width 8.0, depth 5.0, dense, SELU, max-pool, GroupNorm(8)."""
    return SmoothNet(num_classes, width=8.0, depth=5.0)
