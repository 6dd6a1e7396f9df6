"""SmoothNet (Remerscheid et al. 2022): a wide DenseNet without bottlenecks, SELU, GroupNorm, max-pool.

Follows the paper and the authors' code. The three connection types reproduce
the three model families of the first author's thesis study, whose parameter counts
(Remerscheid's thesis study table, quoted in params.yaml) they match exactly:

- ``dense`` (SmoothNet proper): ``SmoothNet.py`` of TUM-AIMED/PrivateModelArchitectures, i.e.
  ``ENScalingResidualModel(dense=True)`` of NiWaRe/DPBenchmark ``models.py``. W80D50 with 10
  classes has 3,391,853 parameters at any resolution.
- ``residual``: ``ENScalingResidualModel(dense=False, halve_dim=True, skip_depth=2)`` of
  DPBenchmark ``models.py``: ResNet-style blocks of two convolutions with an identity skip; the
  first block of each stage halves the resolution with a 2x2 stride-2 conv and its skip is the
  input subsampled by 2 and zero-padded to the new channel count. W80D10 has 777,354 parameters
  (thesis: 777K for ``B_RM_MXP_GN_SELU_W80D10``).
- ``plain``: ``ENScalingBaseModel`` of DPBenchmark ``models.py`` (the thesis' "Base Model"):
  conv (with bias) -> pool -> [norm] -> activation per block, the last block of each stage
  halving with MaxPool 2x2. The thesis base model is ``norm="none", activation="relu"``.

The ablation options (activation, in-block pooling, normalisation, width, depth) apply to all
three. ``weight_standardization=True`` swaps every Conv2d for :class:`WSConv2d` (De et al. 2022).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from smoothnet.models.layers import conv2d, group_norm
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
    """DP-compatible normalisation: GroupNorm(gcd(groups, C), C), InstanceNorm or none.

    InstanceNorm is ``nn.InstanceNorm2d(C)`` without affine parameters and without running
    statistics, exactly as the authors' code (``getNormFunction(norm_groups=0)``).
    """
    if kind == "group":
        return group_norm(channels, groups)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
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
    """Conv (3x3 unless given) -> pool -> norm -> activation; pool and activation optional."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        activation: str | None,
        pool: str | nn.Module,
        norm: str,
        norm_groups: int,
        weight_standardization: bool,
        kernel_size: int = 3,
        stride: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(
            conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=(kernel_size - 1) // 2,
                bias=bias,
                weight_standardization=weight_standardization,
            ),
            pool if isinstance(pool, nn.Module) else make_block_pool(pool),
            make_norm(norm, out_channels, norm_groups),
            make_activation(activation) if activation else nn.Identity(),
        )


class DenseStack(nn.Module):
    """SmoothStack: block i sees ``in + i*growth`` channels; outputs are concatenated."""

    def __init__(self, in_channels: int, growth: int, depth: int, **block_kw) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SmoothBlock(in_channels + i * growth, growth, **block_kw) for i in range(depth)
        )
        self.out_channels = in_channels + depth * growth

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = torch.cat([x, block(x)], dim=1)
        return x


class ResidualBlock(nn.Module):
    """Two conv-pool-norm blocks with an identity skip added before the second activation.

    ``halve=True`` makes the first conv 2x2 stride 2 and the skip ``x[:, :, ::2, ::2]``; the skip
    is zero-padded along channels when the block widens (authors' ``ResidualBlock``, no projection).
    """

    def __init__(self, in_channels: int, out_channels: int, halve: bool, activation: str, **block_kw) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"identity skip cannot narrow {in_channels} -> {out_channels} channels")
        self.halve, self.pad = halve, out_channels - in_channels
        self.first = SmoothBlock(
            in_channels,
            out_channels,
            activation,
            kernel_size=2 if halve else 3,
            stride=2 if halve else 1,
            **block_kw,
        )
        self.second = SmoothBlock(out_channels, out_channels, None, **block_kw)
        self.activation = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        skip = x[:, :, ::2, ::2] if self.halve else x
        if self.pad:
            skip = nn.functional.pad(skip, (0, 0, 0, 0, 0, self.pad))
        return self.activation(self.second(self.first(x)) + skip)


def _dense_features(in_channels: int, growth0: int, growth1: int, depth: int, **block_kw) -> nn.Module:
    stage0 = DenseStack(in_channels, growth0, depth, **block_kw)
    transition_out = stage0.out_channels // 2
    stage1 = DenseStack(transition_out, growth1, depth, **block_kw)
    return nn.Sequential(
        stage0,
        # DenseNet transition: 1x1 conv halving channels (floor), then 2x2 average pool.
        conv2d(
            stage0.out_channels,
            transition_out,
            1,
            bias=False,
            weight_standardization=block_kw["weight_standardization"],
        ),
        nn.AvgPool2d(kernel_size=2, stride=2),
        stage1,
        nn.AvgPool2d(kernel_size=2, stride=2),
        LastChannels(growth1),
    )


def _residual_features(in_channels: int, growth0: int, growth1: int, depth: int, **block_kw) -> nn.Module:
    blocks = []
    for stage_in, growth in ((in_channels, growth0), (growth0, growth1)):
        blocks.append(ResidualBlock(stage_in, growth, halve=True, **block_kw))
        blocks.extend(ResidualBlock(growth, growth, halve=False, **block_kw) for _ in range(depth - 1))
    return nn.Sequential(*blocks)


def _plain_features(
    in_channels: int, growth0: int, growth1: int, depth: int, pool: str, **block_kw
) -> nn.Module:
    blocks = []
    for stage_in, growth in ((in_channels, growth0), (growth0, growth1)):
        for i in range(depth):
            # The last block of each stage halves the resolution (authors' ENScalingBaseModel).
            block_pool = nn.MaxPool2d(kernel_size=2, stride=2) if i == depth - 1 else pool
            blocks.append(
                SmoothBlock(stage_in if i == 0 else growth, growth, pool=block_pool, bias=True, **block_kw)
            )
    return nn.Sequential(*blocks)


class LastChannels(nn.Module):
    """Keep only the last ``n`` channels (the dense head reads the last block's output only)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: Tensor) -> Tensor:
        return x[:, -self.n :]


class SmoothNet(nn.Module):
    """Two stages of SmoothBlocks and an MLP head on a 4x4 adaptive average pool.

    Args:
        num_classes: outputs of the last Linear layer.
        width: width factor; stage growth is ``int(8*width)`` and ``int(16*width)``.
        depth: depth factor; each stage has ``int(depth)`` blocks (residual: two convs per block).
        activation: selu, relu or leaky_relu in the blocks; the head uses SELU for selu, else ReLU
            (as the authors' SmoothNet.py).
        pool: in-block size-preserving pooling (max, avg, none).
        norm: group (GroupNorm with ``norm_groups`` groups), instance, none.
        connection: dense (SmoothNet), residual, plain (see the module docstring).
        weight_standardization: use :class:`WSConv2d` for every convolution.
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
        weight_standardization: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if not width > 0 or not depth >= 1 or int(8 * width) < 1:
            raise ValueError(f"need width >= 0.125 and depth >= 1, got width={width}, depth={depth}")
        if connection not in CONNECTIONS:
            raise ValueError(f"connection must be one of {list(CONNECTIONS)}, got {connection!r}")
        if not isinstance(norm_groups, int) or norm_groups < 1:
            raise ValueError(f"norm_groups must be a positive integer, got {norm_groups!r}")
        make_activation(activation), make_norm(norm, 8), make_block_pool(pool)  # validate early
        block_kw = dict(
            activation=activation,
            norm=norm,
            norm_groups=norm_groups,
            weight_standardization=weight_standardization,
        )
        growth0, growth1 = int(8 * width), int(16 * width)
        if connection == "dense":
            self.features = _dense_features(in_channels, growth0, growth1, int(depth), pool=pool, **block_kw)
        elif connection == "residual":
            self.features = _residual_features(
                in_channels, growth0, growth1, int(depth), pool=pool, **block_kw
            )
        else:
            self.features = _plain_features(in_channels, growth0, growth1, int(depth), pool=pool, **block_kw)
        head_activation = "selu" if activation == "selu" else "relu"
        self.adaptive_pool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(
            nn.Linear(growth1 * 16, 256),
            make_activation(head_activation),
            nn.Linear(256, 128),
            make_activation(head_activation),
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
        x = self.adaptive_pool(self.features(x))
        return self.classifier(x.flatten(1))


@register_model(
    "smoothnet",
    "SmoothNet, default W80D50 (width 8.0, depth 5.0); ablation options",
    image_sizes=(32, 64, 224),
)
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
    weight_standardization: bool = False,
) -> nn.Module:
    """SmoothNet with the authors' ablation options; resolution-independent."""
    return SmoothNet(
        num_classes, width, depth, activation, pool, norm, norm_groups, connection, weight_standardization
    )


@register_model(
    "smoothnet_w80d50", "SmoothNet W80D50, the paper's standard network", image_sizes=(32, 64, 224)
)
def smoothnet_w80d50(num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """The paper's SmoothNet: width 8.0, depth 5.0, dense, SELU, max-pool, GroupNorm(8)."""
    return SmoothNet(num_classes, width=8.0, depth=5.0)
