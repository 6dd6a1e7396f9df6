"""Differentially private per-channel feature statistics for frozen-feature models.

Tramer & Boneh 2021 (github.com/ftramer/Handcrafted-DP, ``dp_utils.py: scatter_normalization``,
``input_norm=BN``) standardise the ScatterNet features with a mean and variance computed privately over
the whole training set before DP-SGD starts. Per example, the spatial mean of every channel (a K-vector)
and the spatial mean of every channel's square are each clipped to an L2 norm, summed, and released with
Gaussian noise of std ``noise_multiplier * clip``, then divided by the (public) training-set size N;
``var = max(E[x^2] - E[x]^2, 0)``. Under add/remove-one adjacency each sum has L2 sensitivity ``clip``,
so each release is one Gaussian mechanism with that noise multiplier; both together cost what two
Poisson-subsampled Gaussian steps at sampling rate 1 cost, which is how they enter the accountant
(:data:`StatisticsRelease.history`, composed with DP-SGD's history by
:func:`smoothnet.privacy.accounting.compute_epsilon`).

One difference from their code, on purpose: they set each clip norm to the *median* of the examples'
norms (a data-dependent choice their comment calls "a small privacy leak"). Here the clip norms are
fixed parameters (``bn_mean_clip``, ``bn_sq_mean_clip``), so the accounted epsilon is the whole cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

RELEASES = 2  # the clipped mean and the clipped mean of squares
STANDARDIZE_EPS = 1e-5  # Tramer & Boneh's ``standardize``: (x - mean) / sqrt(var + 1e-5)


class StatisticsError(ValueError):
    """Invalid settings for the private statistics (noise multiplier, clip norms)."""


@dataclass(frozen=True)
class StatisticsRelease:
    """The released statistics and what they cost."""

    mean: Tensor  # (K,)
    var: Tensor  # (K,)
    noise_multiplier: float
    mean_clip: float
    sq_mean_clip: float
    n: int

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """The two Gaussian releases as accountant segments ``(sigma, sample_rate=1, steps=1)``."""
        return [(float(self.noise_multiplier), 1.0, 1)] * RELEASES

    def to_record(self) -> dict:
        """What a run record stores about the release (not the statistics themselves)."""
        return {
            "mechanism": "gaussian",
            "statistic": "per-channel mean and mean of squares of the frozen features",
            "releases": RELEASES,
            "noise_multiplier": float(self.noise_multiplier),
            "mean_clip": float(self.mean_clip),
            "sq_mean_clip": float(self.sq_mean_clip),
            "n": int(self.n),
            "history": [list(segment) for segment in self.history],
        }


def _clipped_sum(rows: Tensor, clip: float) -> Tensor:
    norms = rows.norm(dim=1, keepdim=True)
    return (rows * (clip / norms.clamp_min(1e-12)).clamp(max=1.0)).sum(0)


def private_channel_statistics(
    features: Tensor,
    *,
    noise_multiplier: float,
    mean_clip: float,
    sq_mean_clip: float,
    generator: torch.Generator | None = None,
    chunk_size: int = 512,
) -> StatisticsRelease:
    """Per-channel mean and variance of ``features`` (N, K, ...) under the Gaussian mechanism.

    ``noise_multiplier == 0`` releases the exact clipped statistics (for non-private runs; infinite epsilon).
    Works through ``features`` in chunks of ``chunk_size`` rows, so it needs no copy of the features.
    """
    if not (noise_multiplier >= 0 and noise_multiplier < float("inf")):
        raise StatisticsError(f"bn_noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    for name, clip in (("bn_mean_clip", mean_clip), ("bn_sq_mean_clip", sq_mean_clip)):
        if clip is None or not clip > 0:
            raise StatisticsError(
                f"{name} must be a positive clip norm fixed before seeing the data, got {clip!r} "
                "(set it in the run's model_options)"
            )
    n, channels = features.shape[0], features.shape[1]
    if n == 0:
        raise StatisticsError("no training examples to compute statistics from")
    sums = torch.zeros(channels, dtype=torch.float64, device=features.device)
    sq_sums = torch.zeros_like(sums)
    for start in range(0, n, chunk_size):
        x = features[start : start + chunk_size].reshape(-1, channels, features[0, 0].numel()).double()
        sums += _clipped_sum(x.mean(-1), mean_clip)
        sq_sums += _clipped_sum(x.square().mean(-1), sq_mean_clip)
    if noise_multiplier > 0:
        sums += noise_multiplier * mean_clip * _normal(channels, generator, sums.device)
        sq_sums += noise_multiplier * sq_mean_clip * _normal(channels, generator, sums.device)
    mean, sq_mean = sums / n, sq_sums / n
    var = (sq_mean - mean.square()).clamp_min(0.0)
    dtype = features.dtype
    return StatisticsRelease(
        mean.to(dtype), var.to(dtype), float(noise_multiplier), float(mean_clip), float(sq_mean_clip), n
    )


def _normal(size: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.randn(size, generator=generator, dtype=torch.float64).to(device)


class FrozenStandardize(nn.Module):
    """``(x - mean) / sqrt(var + 1e-5)`` per channel, zero where the variance is 0 (Tramer & Boneh's
    ``standardize``), with statistics set once by :meth:`set_statistics`; no trainable parameters.

    Calling it before the statistics are set raises, so a model can never train on unset statistics.
    """

    def __init__(
        self,
        channels: int,
        *,
        noise_multiplier: float = 8.0,
        mean_clip: float | None = None,
        sq_mean_clip: float | None = None,
    ) -> None:
        super().__init__()
        self.noise_multiplier, self.mean_clip, self.sq_mean_clip = noise_multiplier, mean_clip, sq_mean_clip
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))

    def set_statistics(self, mean: Tensor, var: Tensor) -> None:
        """Install released statistics."""
        if mean.shape != self.mean.shape or var.shape != self.var.shape:
            raise StatisticsError(
                f"statistics of shape {tuple(mean.shape)}; this layer has {tuple(self.mean.shape)}"
            )
        self.mean.copy_(mean)
        self.var.copy_(var)
        self.ready.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.ready):
            raise RuntimeError("FrozenStandardize used before its statistics were set (fit_statistics)")
        view = (1, -1) + (1,) * (x.dim() - 2)
        mean, var = self.mean.view(view), self.var.view(view)
        return (x - mean) / torch.sqrt(var + STANDARDIZE_EPS) * (var != 0).to(x.dtype)


def find_standardize(module: nn.Module) -> FrozenStandardize | None:
    """The model's :class:`FrozenStandardize` layer, if it has one (at most one is supported)."""
    layers = [m for m in module.modules() if isinstance(m, FrozenStandardize)]
    if len(layers) > 1:
        raise StatisticsError("a model with more than one FrozenStandardize layer is not supported")
    return layers[0] if layers else None


def fit_statistics(
    module: nn.Module, features: Tensor, *, private: bool, generator: torch.Generator | None
) -> StatisticsRelease | None:
    """Compute and install the statistics of ``module``'s :class:`FrozenStandardize` layer from the training
    ``features``; ``None`` when the module has no such layer.

    ``generator`` is the run's private statistics stream (:func:`smoothnet.training.dp.random_streams`),
    never one seeded with the public seed: noise anyone can regenerate protects nothing. A private run with
    noise multiplier 0, or without a generator, is refused. On resume the checkpoint's buffers replace what
    this computes, so a run releases one set of statistics whatever the noise source.
    """
    layer = find_standardize(module)
    if layer is None:
        return None
    sigma = layer.noise_multiplier if private else 0.0
    if private and not sigma > 0:
        raise StatisticsError(
            f"bn_noise_multiplier must be > 0 in a DP run (got {sigma!r}): the statistics would not be private"
        )
    if private and generator is None:
        raise StatisticsError("private statistics need the run's private noise stream (generator=None)")
    release = private_channel_statistics(
        features,
        noise_multiplier=sigma,
        mean_clip=layer.mean_clip,
        sq_mean_clip=layer.sq_mean_clip,
        generator=generator,
    )
    layer.set_statistics(release.mean.to(layer.mean.device), release.var.to(layer.var.device))
    return release


def composed_privacy_record(release: StatisticsRelease, privacy: dict, config) -> dict:
    """The record's ``privacy.dp_statistics`` and ``privacy.composition`` for a run that released
    ``release`` before DP-SGD: each component's epsilon alone and their composition (the run's claim, equal
    to ``privacy.epsilon``), all under the run's accountant at its delta."""
    from smoothnet.privacy.accounting import compute_epsilon

    sgd = [tuple(segment) for segment in privacy["accountant_history"]]

    def eps(history: list) -> float:
        return compute_epsilon(delta=config.delta, accountant=config.accountant, history=history)

    return {
        "dp_statistics": release.to_record(),
        "composition": {
            "accountant": config.accountant,
            "delta": config.delta,
            "components": {"dp_statistics": eps(release.history), "dp_sgd": eps(sgd)},
            "total_epsilon": eps([*release.history, *sgd]),
            "rule": "the statistics' Gaussian releases composed with DP-SGD's steps in one accountant",
        },
    }
