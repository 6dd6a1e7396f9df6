"""Poisson-sampled DP batches as physical batches of one fixed shape, for a step compiled or captured once.

A Poisson logical batch has a random size, so the physical batches Opacus' ``BatchMemoryManager`` cuts
from it have random sizes too. Here each physical batch is padded to ``physical`` rows with all-zero
examples of loss weight exactly 0 (:func:`pad_rows`): their gradient is exactly zero, so they contribute
exactly zero to the clipped sum; the noise and the normaliser (Opacus' expected batch size) are the
optimizer's and do not see the padding. The package's clipping module takes the weights
(``PrivateSetup.backward(..., row_weight=...)``); Opacus' modes cannot (see ``smoothnet.training.dp``).

:class:`FixedShapePoissonBatches` draws the same masks as Opacus' ``UniformWithReplacementSampler``
from the same generator (``torch.rand(N) < q`` per step, after the DataLoader's per-epoch seed draw) and cuts them as ``BatchMemoryManager`` does
(``np.array_split`` into ``ceil(n / physical)`` parts), so a run with padding takes the same examples in
the same physical batches as one without. The data are gathered on the tensors' device from a
device-side index order; the host reads one number per logical batch (its size, which fixes how many
physical batches follow), never one per physical batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PhysicalBatch:
    """One physical batch of real rows (``x``, ``y``: ``rows`` of them) and whether it ends its logical
    batch (then the optimizer steps). ``rows`` is 0 only for an empty logical batch (a noise-only step)."""

    x: Tensor
    y: Tensor
    rows: int
    last: bool

    def __iter__(self):
        """``x, y = batch``: a drop-in for the ``(x, y)`` pairs ``BatchMemoryManager`` yields."""
        return iter((self.x, self.y))


def split_sizes(n: int, physical: int) -> list[int]:
    """Sizes of the parts ``BatchMemoryManager`` cuts a logical batch of ``n`` into (``np.array_split``
    into ``ceil(n / physical)`` parts: the first ``n % parts`` one longer)."""
    if n == 0:
        return []
    parts = math.ceil(n / physical)
    base, extra = divmod(n, parts)
    return [base + 1 if i < extra else base for i in range(parts)]


def poisson_mask(num_samples: int, sample_rate: float, generator: torch.Generator) -> Tensor:
    """Each example in independently with probability ``sample_rate``: the draw of Opacus'
    ``UniformWithReplacementSampler`` (the same numbers from the same generator), on the generator's device."""
    return torch.rand(num_samples, generator=generator, device=generator.device) < sample_rate


def selected_first(mask: Tensor) -> Tensor:
    """Indices of the selected examples in ascending order, then the others: a device-side order whose
    first ``mask.sum()`` entries are ``mask.nonzero()`` (no host round trip)."""
    return torch.argsort((~mask).to(torch.uint8), stable=True)


class FixedShapePoissonBatches:
    """Iterate an epoch of Poisson logical batches as physical batches (see the module docstring).

    Args:
        tensors: the training set's tensors (e.g. images and labels), indexed along dim 0, on the device the
            batches should be built on.
        sample_rate: q, as the accountant accounts.
        steps: logical batches per epoch (Opacus' Poisson loader: ``int(1 / q)``).
        physical: rows per physical batch before padding.
        generator: the run's sampling stream (a CPU generator draws exactly Opacus' masks).
        optimizer: an Opacus DP optimizer; told to skip the step on all but a logical batch's last part,
            as ``BatchMemoryManager`` does.
    """

    def __init__(
        self,
        tensors: tuple[Tensor, ...],
        sample_rate: float,
        steps: int,
        physical: int,
        generator: torch.Generator,
        optimizer=None,
    ) -> None:
        if physical < 1:
            raise ValueError(f"physical must be >= 1, got {physical}")
        self.tensors, self.sample_rate, self.steps = tensors, sample_rate, steps
        self.physical, self.generator, self.optimizer = physical, generator, optimizer
        self.num_samples = len(tensors[0])

    @classmethod
    def from_loader(cls, loader, physical: int, optimizer=None, device=None) -> FixedShapePoissonBatches:
        """From an Opacus ``DPDataLoader`` over a ``TensorDataset`` (its sampler's q, steps and generator);
        the data are moved to ``device`` once."""
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        sampler = loader.batch_sampler
        if type(sampler) is not UniformWithReplacementSampler:  # the distributed sampler shards differently
            raise ValueError(
                f"fixed-shape batches need a single-process Poisson loader, got a {type(sampler).__name__}"
            )
        tensors = tuple(t.to(device) if device is not None else t for t in loader.dataset.tensors)
        return cls(tensors, sampler.sample_rate, sampler.steps, physical, sampler.generator, optimizer)

    def __len__(self) -> int:
        return self.steps

    def __enter__(self) -> FixedShapePoissonBatches:
        """A context manager like ``BatchMemoryManager``, so a training loop can take either."""
        return self

    def __exit__(self, *exc) -> None:
        return None

    def logical_batches(self) -> Iterator[tuple[Tensor, int]]:
        """Per step: the selected-first index order (on the data's device) and the batch size."""
        device = self.tensors[0].device
        # A DataLoader draws its workers' base seed from the sampling generator as each epoch's iteration
        # starts, before the sampler's first mask: the same draw here keeps the masks Opacus' loader draws.
        torch.empty((), dtype=torch.int64, device=self.generator.device).random_(generator=self.generator)
        for _ in range(self.steps):
            mask = poisson_mask(self.num_samples, self.sample_rate, self.generator).to(device)
            yield selected_first(mask), int(mask.sum())  # the one host read per logical batch

    def __iter__(self) -> Iterator[PhysicalBatch]:
        for order, n in self.logical_batches():
            if n == 0:
                self._signal(skip=False)
                yield PhysicalBatch(*(t[:0] for t in self.tensors[:2]), rows=0, last=True)
                continue
            sizes = split_sizes(n, self.physical)
            start = 0
            for i, size in enumerate(sizes):
                last = i == len(sizes) - 1
                self._signal(skip=not last)
                index = order[start : start + size]
                x, y = (t.index_select(0, index) for t in self.tensors[:2])
                yield PhysicalBatch(x, y, rows=size, last=last)
                start += size

    def _signal(self, skip: bool) -> None:
        if self.optimizer is not None:
            self.optimizer.signal_skip_step(do_skip=skip)


def pad_rows(t: Tensor, rows: int) -> Tensor:
    """``t`` with zero rows appended up to ``rows`` (dim 0), keeping its memory format."""
    missing = rows - t.shape[0]
    if missing < 0:
        raise ValueError(f"a batch of {t.shape[0]} rows does not fit in {rows}")
    if missing == 0:
        return t
    pad = torch.zeros((missing, *t.shape[1:]), dtype=t.dtype, device=t.device)
    out = torch.cat([t, pad])
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def row_weights(real_rows: int, rows: int, dtype: torch.dtype, device) -> Tensor:
    """Loss weights: 1 for the ``real_rows`` first rows, exactly 0 for the padding."""
    return (torch.arange(rows, device=device) < real_rows).to(dtype)


def pad_batch(inputs: Tensor, targets: Tensor, rows: int, views: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Model inputs and targets (``views`` rows per example, grouped) padded to ``rows`` examples, and the
    per-row loss weights for ``PrivateSetup.backward``."""
    real = inputs.shape[0]
    weight = row_weights(real, rows * views, torch.float32, inputs.device)
    return pad_rows(inputs, rows * views), pad_rows(targets, rows * views), weight
