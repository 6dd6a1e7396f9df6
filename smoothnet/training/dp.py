"""Attach DP-SGD to a model, optimizer and dataset, through Opacus.

Two paths share Opacus' sampler, optimizer and accountant; the method is a
:class:`smoothnet.privacy.per_sample_method.PerSampleMethod` (or its string form):

- Opacus' own per-sample gradient modes (hooks, functorch, ew, ghost) go through
  ``PrivacyEngine.make_private_with_epsilon`` / ``make_private``, exactly as the paper's code did.
- ``fast:<clipping>[+<conv>]`` wraps the model in :class:`smoothnet.privacy.fast_clipping.ClippedGradientModule`,
  which leaves the clipped per-sample gradient sum in ``p.grad``; Opacus' ``DPOptimizerFastGradientClipping``
  then adds N(0, (sigma*C)^2) and divides by the expected batch size, as in Opacus' ghost mode.

Pitfalls handled here: q = 1/len(loader) (Opacus' convention, not batch/N), read back from the sampler
(Opacus' Poisson loader yields int(1/q) batches, which float rounding makes len(loader) - 1 for many
sizes, e.g. 390 at N = 50,000 and batch 128, so q is not 1/len(Poisson loader)); the expected batch size
Opacus divides by is int(N*q) (per rank under torchrun); noise is calibrated for the *planned* epochs;
only Poisson sampling is covered by the accountant.

Randomness: the Poisson masks, the noise and the augmentation come from :class:`RandomStreams`, apart
from the public model-initialisation seed. ``seeded`` streams are derived from (seed, run id, rank), so no
two runs share noise, and are reproducible by anyone who knows the seed: such a model is not for release.
``os_entropy`` streams are seeded from the OS (``secrets``) and the seeds are never recorded or logged.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.accountants import create_accountant
from opacus.data_loader import DPDataLoader
from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
from opacus.optimizers import DistributedDPOptimizerFastGradientClipping, DPOptimizerFastGradientClipping
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from smoothnet.privacy.accounting import noise_for_target
from smoothnet.privacy.per_sample_method import OPACUS_MODES, PerSampleMethod  # noqa: F401 (re-exported)

NOISE_SOURCES = ("seeded", "os_entropy")


@dataclass
class RandomStreams:
    """The private randomness of a DP run, one generator per use, apart from the model-initialisation seed.

    ``source`` is ``seeded`` (derived from public values: reproducible, so not for release) or
    ``os_entropy`` (seeded from the OS CSPRNG, never recorded).
    """

    source: str
    sampling: torch.Generator  # Poisson masks (CPU)
    noise: torch.Generator  # Gaussian noise (on the parameters' device)
    augmentation: torch.Generator  # crop offsets and flips (CPU)
    statistics: torch.Generator  # noise of private feature statistics released before training (CPU)

    def state(self) -> dict[str, Tensor]:
        """The generators' states, for a checkpoint (resuming continues the same streams)."""
        return {
            name: getattr(self, name).get_state()
            for name in ("sampling", "noise", "augmentation", "statistics")
        }

    def load_state(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`state` saved."""
        for name, value in state.items():
            getattr(self, name).set_state(value)


def random_streams(
    seed: int, run_id: str, *, secure: bool, device: torch.device | str = "cpu", rank: int = 0
) -> RandomStreams:
    """The sampling, noise and augmentation generators of one run (one rank under torchrun).

    ``secure``: each generator is seeded with 63 bits from ``secrets`` (OS entropy), never stored.
    Otherwise each seed is a hash of (seed, run id, rank, stream): reproducible, distinct across runs
    that share a seed (an epsilon sweep at seeds 0-2 would otherwise reuse every noise draw, and two
    released models would give away the clipped gradient sum as 2*u1 - u2).
    """

    def generator(stream: str, where: torch.device | str) -> torch.Generator:
        if secure:
            value = secrets.randbits(63)
        else:
            digest = hashlib.sha256(f"smoothnet|{seed}|{run_id}|{rank}|{stream}".encode()).digest()
            value = int.from_bytes(digest[:8], "big") >> 1
        return torch.Generator(device=where).manual_seed(value)

    return RandomStreams(
        source="os_entropy" if secure else "seeded",
        sampling=generator("sampling", "cpu"),
        noise=generator("noise", device),
        augmentation=generator("augmentation", "cpu"),
        statistics=generator("statistics", "cpu"),
    )


@dataclass
class PrivateSetup:
    """What a DP training loop needs; ``backward(logits, targets, group_size)`` does the mode's backward
    (with ``row_weight``, a padded batch's loss weights: the package's clipping module only)."""

    model: nn.Module  # the wrapped module (call it for training forward passes)
    module: nn.Module  # the plain model underneath (for evaluation and checkpoints)
    optimizer: torch.optim.Optimizer  # an Opacus DPOptimizer
    loader: DataLoader  # Poisson-sampled logical batches
    accountant: object  # an Opacus accountant with .history and .get_epsilon(delta)
    noise_multiplier: float
    sample_rate: float  # the q the sampler draws with (and the accountant accounts)
    expected_batch_size: float
    method: str  # str(per_sample): the form run records keep
    # backward(logits, targets, group_size, row_weight=None); row_weight: padded batches (fixed_shape.py)
    backward: Callable[..., Tensor]
    steps_per_epoch: int = 0  # logical batches the loader yields per epoch
    noise_source: str = "seeded"  # of RandomStreams; "global" when make_private drew from torch's global RNG
    per_sample: PerSampleMethod | None = None  # the method as a value (``method`` is its string form)

    def fixed_shape_batches(self, physical: int, device: torch.device | str | None = None):
        """The loader's Poisson batches as physical batches to pad to ``physical`` rows
        (:class:`smoothnet.training.fixed_shape.FixedShapePoissonBatches`, the data moved to ``device``):
        a drop-in for ``BatchMemoryManager``. Only the package's clipping module takes padded rows."""
        if self.per_sample is None or self.per_sample.is_opacus:
            raise ValueError(
                f"fixed-shape batches need the package's clipping module (grad_sample_mode fast), not {self.method!r}"
            )
        from smoothnet.training.fixed_shape import FixedShapePoissonBatches

        return FixedShapePoissonBatches.from_loader(self.loader, physical, self.optimizer, device)


def calibrate_noise(
    target_epsilon: float, delta: float, sample_rate: float, epochs: int, accountant: str
) -> float:
    """Noise multiplier for (target_epsilon, delta) after ``epochs`` epochs at ``sample_rate``.

    The same call ``PrivacyEngine.make_private_with_epsilon`` makes (Opacus' default tolerance, epochs rather
    than steps), so both paths calibrate identically; a test checks it.
    """
    return noise_for_target(target_epsilon, delta, sample_rate, epochs=epochs, accountant=accountant)


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: Dataset,
    *,
    method: str | PerSampleMethod,
    logical_batch_size: int,
    max_grad_norm: float,
    epochs: int,
    accountant: str,
    delta: float,
    target_epsilon: float | None,
    noise_multiplier: float | None,
    poisson_sampling: bool = True,
    distributed: bool = False,
    streams: RandomStreams | None = None,
) -> PrivateSetup:
    """Wrap model, optimizer and a loader over ``dataset`` for DP-SGD with the given per-sample method.

    ``distributed``: this process is one rank of a torchrun job (torch.distributed initialised); the
    model is wrapped in Opacus' DPDDP, each rank samples its shard, rank 0 adds the noise.
    ``streams``: where the Poisson masks and the noise come from (:func:`random_streams`); ``None`` draws
    from torch's global generator (tests only: the trainer always passes its run's streams).
    """
    sampling = streams.sampling if streams is not None else None
    loader = DataLoader(dataset, batch_size=logical_batch_size, shuffle=True, generator=sampling)
    calibration = dict(
        streams=streams,
        epochs=epochs,
        accountant=accountant,
        delta=delta,
        target_epsilon=target_epsilon,
        noise_multiplier=noise_multiplier,
        poisson_sampling=poisson_sampling,
        max_grad_norm=max_grad_norm,
    )
    per_sample = PerSampleMethod.parse(method)
    if per_sample.is_opacus:
        return _make_private_opacus(model, optimizer, loader, per_sample, distributed, **calibration)
    return _make_private_fast(model, optimizer, loader, per_sample, distributed, **calibration)


def _make_private_opacus(
    model,
    optimizer,
    loader,
    per_sample: PerSampleMethod,
    distributed,
    *,
    streams,
    epochs,
    accountant,
    delta,
    target_epsilon,
    noise_multiplier,
    poisson_sampling,
    max_grad_norm,
) -> PrivateSetup:
    method = per_sample.mode
    engine = PrivacyEngine(accountant=accountant)
    common = dict(
        module=DPDDP(model) if distributed else model,
        optimizer=optimizer,
        data_loader=loader,  # Opacus' Poisson loader keeps this loader's (sampling) generator
        max_grad_norm=max_grad_norm,
        poisson_sampling=poisson_sampling,
        grad_sample_mode=method,
        noise_generator=streams.noise if streams is not None else None,
    )
    if method == "ghost":
        common["criterion"] = nn.CrossEntropyLoss()
    if target_epsilon is not None:
        out = engine.make_private_with_epsilon(
            target_epsilon=target_epsilon, target_delta=delta, epochs=epochs, **common
        )
    else:
        out = engine.make_private(noise_multiplier=noise_multiplier, **common)
    if method == "ghost":
        wrapped, dp_optimizer, criterion, dp_loader = out
    else:
        (wrapped, dp_optimizer, dp_loader), criterion = out, nn.CrossEntropyLoss()
    # Opacus' own secure_mode needs torchcsprng (no build for torch 2.x); with OS-entropy streams turn on
    # the optimizer's part of it: each noise tensor as a sum of draws, robust to floating-point attacks.
    dp_optimizer.secure_mode = streams is not None and streams.source == "os_entropy"
    sample_rate = _sampled_rate(dp_loader, loader)
    # Opacus accounts 1/len(its Poisson loader), which is 1/(L-1) where int(1/q) rounds down (conservative,
    # but not the mechanism run): account the rate the sampler draws with.
    dp_optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))

    def backward(
        logits: Tensor, targets: Tensor, group_size: int, row_weight: Tensor | None = None
    ) -> Tensor:
        if row_weight is not None:
            # Opacus' mean reduction rescales every captured output gradient by the rows of the batch
            # (GradSampleModule: backprops * n): padded rows would change each per-sample gradient's rounding.
            raise ValueError(
                f"fixed-shape (padded) batches need the package's clipping module; grad_sample_mode {method!r} "
                "rescales per-sample gradients by the padded batch's row count; use grad_sample_mode: fast"
            )
        if group_size != 1:
            raise ValueError(
                "augmentation_multiplicity > 1 needs per-example clipping of the views' mean gradient, which "
                f"grad_sample_mode {method!r} cannot do; use grad_sample_mode: fast (or auto)"
            )
        loss = criterion(logits, targets)
        loss.backward()
        return loss.detach()

    return PrivateSetup(
        model=wrapped,
        module=model,
        optimizer=dp_optimizer,
        loader=dp_loader,
        accountant=engine.accountant,
        noise_multiplier=dp_optimizer.noise_multiplier,
        sample_rate=sample_rate,
        expected_batch_size=dp_optimizer.expected_batch_size,
        method=str(per_sample),
        backward=backward,
        steps_per_epoch=len(dp_loader),
        noise_source=streams.source if streams is not None else "global",
        per_sample=per_sample,
    )


def _sampled_rate(dp_loader: DataLoader, loader: DataLoader) -> float:
    """The q the Poisson sampler draws with (Opacus: 1/len(original loader)); 1/len(loader) otherwise."""
    return float(dp_loader.sample_rate) if isinstance(dp_loader, DPDataLoader) else 1 / len(loader)


def _make_private_fast(
    model,
    optimizer,
    loader,
    per_sample: PerSampleMethod,
    distributed,
    *,
    streams,
    epochs,
    accountant,
    delta,
    target_epsilon,
    noise_multiplier,
    poisson_sampling,
    max_grad_norm,
) -> PrivateSetup:
    from smoothnet.privacy.fast_clipping import ClippedGradientModule

    dp_loader = DPDataLoader.from_data_loader(loader, distributed=distributed) if poisson_sampling else loader
    sample_rate = _sampled_rate(dp_loader, loader)
    expected_batch_size = int(len(dp_loader.dataset) * sample_rate)  # as PrivacyEngine.make_private
    optimizer_class = DPOptimizerFastGradientClipping
    if distributed:
        DPDDP(model)  # broadcasts rank 0's parameters, as Opacus' path does
        expected_batch_size /= torch.distributed.get_world_size()
        optimizer_class = DistributedDPOptimizerFastGradientClipping
    if target_epsilon is not None:
        noise_multiplier = calibrate_noise(target_epsilon, delta, sample_rate, epochs, accountant)
    wrapped = ClippedGradientModule(
        model,
        max_grad_norm=max_grad_norm,
        method=per_sample.clipping,
        conv_per_example=per_sample.conv_per_example,
    )
    dp_optimizer = optimizer_class(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        loss_reduction="mean",
        generator=streams.noise if streams is not None else None,
        secure_mode=streams is not None and streams.source == "os_entropy",
    )
    privacy_accountant = create_accountant(accountant)
    dp_optimizer.attach_step_hook(privacy_accountant.get_optimizer_hook_fn(sample_rate=sample_rate))

    def backward(
        logits: Tensor, targets: Tensor, group_size: int, row_weight: Tensor | None = None
    ) -> Tensor:
        per_sample = F.cross_entropy(logits, targets, reduction="none")
        if row_weight is None:
            wrapped.clipped_backward(per_sample, group_size=group_size)
            return per_sample.detach().mean()
        # Padding rows (weight exactly 0) get an exactly zero gradient: they add nothing to the clipped sum.
        weight = row_weight.to(per_sample.dtype)
        wrapped.clipped_backward(per_sample * weight, group_size=group_size)
        return (per_sample.detach() * weight).sum() / weight.sum().clamp(min=1)

    return PrivateSetup(
        model=wrapped,
        module=model,
        optimizer=dp_optimizer,
        loader=dp_loader,
        accountant=privacy_accountant,
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        expected_batch_size=expected_batch_size,
        method=str(per_sample),
        backward=backward,
        steps_per_epoch=len(dp_loader),
        noise_source=streams.source if streams is not None else "global",
        per_sample=per_sample,
    )
