"""Literature baselines for CIFAR-10: Tramer & Boneh 2021 CNNs, ScatterNets, Papernot et al. 2021.

Definitions follow Tramer & Boneh's code (github.com/ftramer/Handcrafted-DP, ``models.py``):

- ``CIFAR10_CNN`` on images: conv 32-32-M-64-64-M-128-128-M (3x3, padding 1, bias, Tanh;
  M = max-pool 2x2), Linear 2048 -> 128, Tanh, Linear 128 -> classes. 550,570 parameters.
- ScatterNet: kymatio ``Scattering2D(J=2, L=8)`` on 32x32 gives 3 x 81 coefficients at 8x8,
  viewed as 243 channels and normalised with ``GroupNorm(groups, 243, affine=False)``. Their
  scripts search groups in {9, 27, 81}; we default to 27 (option ``norm_groups``).
  With ``input_norm="dp_bn"`` (their ``input_norm=BN``) the features are instead standardised per
  channel with a mean and variance computed privately over the training set before training
  (:mod:`smoothnet.privacy.dp_statistics`; ``models.py: standardize``).
  ``ScatterLinear``: one Linear 15552 -> classes. ``CIFAR10_CNN`` on scattering features:
  conv 64-M-64 (Tanh), Linear 1024 -> classes.
- Papernot et al. 2021 ("Tempered Sigmoid Activations for Deep Learning with Differential
  Privacy", arXiv 2007.14191) used the same CIFAR-10 CNN with tempered sigmoids
  ``s * sigmoid(T x) - o``; the defaults ``(s, T, o) = (2, 2, 1)`` are the paper's tanh triplet.

The ScatterNet models expose ``frozen_frontend`` (the parameter-free scattering transform) and
``head`` (everything trainable), with ``forward(x) == head(frozen_frontend(x))``, so a trainer can
compute the features once and train only the head.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from smoothnet.models.layers import TemperedSigmoid
from smoothnet.models.registry import register_model

SCATTER_CHANNELS = 3 * 81  # Scattering2D J=2, L=8: 1 + J*L + L^2*J*(J-1)/2 = 81 per colour channel
SCATTER_SIZE = 8  # 32 / 2**J


def _cnn_features(
    in_channels: int, config: list, activation: Callable[[], nn.Module]
) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    channels = in_channels
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, stride=1, padding=1), activation()]
            channels = v
    return nn.Sequential(*layers), channels


class TramerBonehCNN(nn.Sequential):
    """Tramer & Boneh's end-to-end CIFAR-10 CNN with a configurable bounded activation."""

    def __init__(self, num_classes: int = 10, activation: Callable[[], nn.Module] = nn.Tanh) -> None:
        features, channels = _cnn_features(3, [32, 32, "M", 64, 64, "M", 128, 128, "M"], activation)
        super().__init__(
            features,
            nn.Flatten(),
            nn.Linear(channels * 4 * 4, 128),
            activation(),
            nn.Linear(128, num_classes),
        )


class ScatteringFrontend(nn.Module):
    """Fixed kymatio Scattering2D(J=2, L=8) on 32x32 images -> (B, 243, 8, 8); no parameters."""

    def __init__(self, image_size: int = 32) -> None:
        super().__init__()
        # kymatio.torch imports scipy's removed sph_harm; the 2-D torch frontend alone imports fine.
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

        self.scattering = ScatteringTorch2D(J=2, shape=(image_size, image_size), L=8)

    def forward(self, x: Tensor) -> Tensor:
        features = self.scattering(x.contiguous())
        return features.reshape(x.shape[0], -1, *features.shape[-2:])


class FrozenFrontendModel(nn.Module):
    """``head(frozen_frontend(x))`` where ``frozen_frontend`` has no parameters."""

    def __init__(self, frozen_frontend: nn.Module, head: nn.Module) -> None:
        super().__init__()
        if any(True for _ in frozen_frontend.parameters()):
            raise ValueError("frozen_frontend must not hold parameters")
        self.frozen_frontend = frozen_frontend
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.frozen_frontend(x))


INPUT_NORMS = ("groupnorm", "dp_bn")


def _scatter_norm(
    norm_groups: int,
    input_norm: str = "groupnorm",
    bn_noise_multiplier: float = 8.0,
    bn_mean_clip: float | None = None,
    bn_sq_mean_clip: float | None = None,
) -> nn.Module:
    if input_norm == "dp_bn":
        from smoothnet.privacy.dp_statistics import FrozenStandardize

        return FrozenStandardize(
            SCATTER_CHANNELS,
            noise_multiplier=bn_noise_multiplier,
            mean_clip=bn_mean_clip,
            sq_mean_clip=bn_sq_mean_clip,
        )
    if input_norm != "groupnorm":
        raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
    if not isinstance(norm_groups, int) or norm_groups < 1 or SCATTER_CHANNELS % norm_groups:
        raise ValueError(f"norm_groups must divide {SCATTER_CHANNELS} (e.g. 9, 27, 81), got {norm_groups!r}")
    return nn.GroupNorm(norm_groups, SCATTER_CHANNELS, affine=False)


@register_model("tramer_boneh_cnn", "Tramer & Boneh 2021 end-to-end CNN, Tanh", image_sizes=(32,))
def tramer_boneh_cnn(num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """The end-to-end CNN of Tramer & Boneh 2021 (550,570 parameters for 10 classes)."""
    return TramerBonehCNN(num_classes, nn.Tanh)


@register_model(
    "papernot_tempered_sigmoid_cnn",
    "Papernot et al. 2021 CNN, tempered sigmoid s*sigmoid(T*x)-o (default 2, 2, 1)",
    image_sizes=(32,),
)
def papernot_tempered_sigmoid_cnn(
    num_classes: int = 10,
    image_size: int = 32,
    scale: float = 2.0,
    temperature: float = 2.0,
    offset: float = 1.0,
) -> nn.Module:
    """The same CNN with tempered sigmoid activations (Papernot et al. 2021)."""
    TemperedSigmoid(scale, temperature, offset)  # validate before building

    def activation() -> nn.Module:
        return TemperedSigmoid(scale, temperature, offset)

    return TramerBonehCNN(num_classes, activation)


@register_model(
    "scatternet_linear",
    "ScatterNet (J=2) + GroupNorm(27, affine=False) + Linear (Tramer & Boneh)",
    image_sizes=(32,),
)
def scatternet_linear(
    num_classes: int = 10,
    image_size: int = 32,
    norm_groups: int = 27,
    input_norm: str = "groupnorm",
    bn_noise_multiplier: float = 8.0,
    bn_mean_clip: float | None = None,
    bn_sq_mean_clip: float | None = None,
) -> nn.Module:
    """Fixed scattering features, normalised (GroupNorm, or ``input_norm="dp_bn"`` with
    ``bn_noise_multiplier``, ``bn_mean_clip``, ``bn_sq_mean_clip``), and one linear layer (155,530 parameters)."""
    norm = _scatter_norm(norm_groups, input_norm, bn_noise_multiplier, bn_mean_clip, bn_sq_mean_clip)
    classifier = nn.Linear(SCATTER_CHANNELS * SCATTER_SIZE**2, num_classes)
    return _on_scattering(image_size, norm, nn.Flatten(), classifier)


@register_model(
    "scatternet_cnn", "ScatterNet (J=2) + GroupNorm(27, affine=False) + CNN 64-M-64, Tanh", image_sizes=(32,)
)
def scatternet_cnn(
    num_classes: int = 10,
    image_size: int = 32,
    norm_groups: int = 27,
    input_norm: str = "groupnorm",
    bn_noise_multiplier: float = 8.0,
    bn_mean_clip: float | None = None,
    bn_sq_mean_clip: float | None = None,
) -> nn.Module:
    """Fixed scattering features, normalised as in :func:`scatternet_linear`, then Tramer & Boneh's small
    Tanh CNN (187,146 parameters)."""
    features, channels = _cnn_features(SCATTER_CHANNELS, [64, "M", 64], nn.Tanh)
    norm = _scatter_norm(norm_groups, input_norm, bn_noise_multiplier, bn_mean_clip, bn_sq_mean_clip)
    return _on_scattering(image_size, norm, features, nn.Flatten(), nn.Linear(channels * 4 * 4, num_classes))


def _on_scattering(image_size: int, *head: nn.Module) -> nn.Module:
    """The fixed scattering front end followed by the trainable ``head`` layers, in order."""
    return FrozenFrontendModel(ScatteringFrontend(image_size), nn.Sequential(*head))
