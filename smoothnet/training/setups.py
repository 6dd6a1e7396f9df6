"""How the loop takes a step, with privacy or without, behind one interface: the loop never asks which.

:class:`PrivateTraining` drives a :class:`~smoothnet.training.dp.PrivateSetup` (Opacus' Poisson loader, DP
optimizer and accountant). :class:`NonPrivateTraining` is the same loop without privacy: shuffled logical
batches split into physical ones with gradient accumulation, no clipping, no noise, no accountant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import Tensor, nn
from torch.utils.data import DataLoader

from smoothnet.privacy.accounting import compute_epsilon
from smoothnet.privacy.dp_statistics import StatisticsRelease, composed_privacy_record
from smoothnet.privacy.per_sample_method import PerSampleMethod
from smoothnet.training.config import ConfigError, TrainConfig
from smoothnet.training.dp import PrivateSetup


class NonPrivateBatches:
    """Splits shuffled logical batches into physical ones (gradient accumulation), like BatchMemoryManager."""

    def __init__(self, loader: DataLoader, physical: int) -> None:
        self.loader, self.physical = loader, physical
        self.last_chunk, self.logical_size = True, 1

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __iter__(self):
        for x, y in self.loader:
            chunks = list(zip(x.split(self.physical), y.split(self.physical), strict=True))
            self.logical_size = len(y)
            for i, (cx, cy) in enumerate(chunks):
                self.last_chunk = i == len(chunks) - 1
                yield cx, cy

    def __len__(self) -> int:
        return len(self.loader)


@dataclass
class NonPrivateTraining:
    """Plain SGD on shuffled batches; the fields a record and a checkpoint read are None."""

    model: nn.Module  # what training calls: the module, or its DDP wrapper
    module: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    private = False
    method = None
    noise_multiplier = None

    def physical_batches(self, physical_batch_size: int) -> NonPrivateBatches:
        """The loader's logical batches as physical ones."""
        return NonPrivateBatches(self.loader, physical_batch_size)

    def step(
        self, logits: Tensor, targets: Tensor, n_examples: int, group_size: int, batches
    ) -> tuple[Tensor, bool]:
        """Backward of one physical batch; the optimizer steps after a logical batch's last one."""
        loss = F.cross_entropy(logits, targets)
        (loss * n_examples / batches.logical_size).backward()
        took_step = batches.last_chunk
        if took_step:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss, took_step

    def empty_step(self) -> None:
        """A shuffled loader yields no empty batch; nothing to release."""

    def released_examples(self, steps: int, n_train: int, examples: int, world_size: int) -> int:
        """Examples trained on, for the throughput."""
        return examples * world_size

    def released_train_metrics(self, loss: float, accuracy: float) -> dict[str, Any]:
        """Training loss and accuracy of an epoch, for the record and DVCLive."""
        return {"train_loss": loss, "train_accuracy": accuracy}

    def progress_postfix(self, mean_loss: float) -> dict[str, str]:
        """The running training loss, for the progress bar."""
        return {"loss": f"{mean_loss:.3f}"}

    def divergence(self, loss: Tensor, took_step: bool) -> str | None:
        """Why the run must stop: a non-finite loss."""
        return None if torch.isfinite(loss) else f"loss became {loss.item()}"

    def epsilon(self, config: TrainConfig) -> float | None:
        """No privacy claim."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Nothing beyond the optimizer's state."""
        return {"accountant": None, "noise_multiplier": None}

    def load_state_dict(self, state: dict[str, Any], run_id: str) -> None:
        """Nothing to restore."""

    def privacy_fields(self, config: TrainConfig) -> dict[str, Any]:
        """The record's privacy fields that only a DP run fills."""
        return {}


@dataclass
class PrivateTraining:
    """DP-SGD: Opacus' Poisson batches, per-example clipping, noise and the accountant's steps.

    ``statistics``: private feature statistics released before training (composed into epsilon)."""

    setup: PrivateSetup
    statistics: StatisticsRelease | None = None
    private = True

    @property
    def model(self) -> nn.Module:
        return self.setup.model

    @property
    def module(self) -> nn.Module:
        return self.setup.module

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.setup.optimizer

    @property
    def loader(self) -> DataLoader:
        return self.setup.loader

    @property
    def method(self) -> str:
        return self.setup.method

    @property
    def noise_multiplier(self) -> float:
        return self.setup.noise_multiplier

    def physical_batches(self, physical_batch_size: int) -> BatchMemoryManager:
        """Opacus' splitter: the optimizer steps once per logical (Poisson) batch."""
        return BatchMemoryManager(
            data_loader=self.loader, max_physical_batch_size=physical_batch_size, optimizer=self.optimizer
        )

    def step(
        self, logits: Tensor, targets: Tensor, n_examples: int, group_size: int, batches
    ) -> tuple[Tensor, bool]:
        """Clipped backward of one physical batch; the DP optimizer adds noise after a logical batch."""
        loss = self.setup.backward(logits, targets, group_size)
        self.optimizer.step()
        took_step = not self.optimizer._is_last_step_skipped
        self.optimizer.zero_grad(set_to_none=True)
        return loss, took_step

    def empty_step(self) -> None:
        """Take the DP step of an empty logical batch: zero clipped sum plus noise (never skip it: whether a
        Poisson batch is empty depends on the data, so a skipped step would leak)."""
        for p in self.optimizer.params:
            if PerSampleMethod.parse(self.method).clipped_sum_in_grad:
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def released_examples(self, steps: int, n_train: int, examples: int, world_size: int) -> int:
        """Steps times the expected batch size: the sampled count is a raw statistic of the private data (it
        moves with one example), so the throughput is computed from public values."""
        return round(steps * self.setup.sample_rate * n_train)

    def released_train_metrics(self, loss: float, accuracy: float) -> dict[str, Any]:
        """None: raw means over private examples (no clipping, no noise) stay out of the record and DVCLive,
        which are released; only held-out metrics are."""
        return {}

    def progress_postfix(self, mean_loss: float) -> dict[str, str]:
        """None: the raw training loss is private, not even shown on the console."""
        return {}

    def divergence(self, loss: Tensor, took_step: bool) -> str | None:
        """Why the run must stop, decided from the parameters after a noisy step only (post-processing of
        the release): the raw loss is a statistic of the private batch, and one example with an infinite
        loss (whose clipped contribution is zero anyway) must not decide whether the run stops."""
        if not took_step or all(bool(torch.isfinite(p).all()) for p in self.module.parameters()):
            return None
        return "a parameter became non-finite"

    def epsilon(self, config: TrainConfig) -> float:
        """Epsilon spent so far: DP-SGD's, composed with the feature statistics' releases where there are."""
        if self.statistics is not None:
            history = [*self.statistics.history, *self.setup.accountant.history]
            return compute_epsilon(delta=config.delta, accountant=config.accountant, history=history)
        if not self.setup.accountant.history:
            return 0.0
        return float(self.setup.accountant.get_epsilon(delta=config.delta))

    def state_dict(self) -> dict[str, Any]:
        """The accountant's steps and the noise multiplier they were taken with."""
        return {"accountant": self.setup.accountant.state_dict(), "noise_multiplier": self.noise_multiplier}

    def load_state_dict(self, state: dict[str, Any], run_id: str) -> None:
        """Restore the accountant; a checkpoint calibrated to another noise multiplier is refused."""
        if state["noise_multiplier"] != self.noise_multiplier:
            raise ConfigError(f"run {run_id!r}: checkpoint noise multiplier differs from this run's")
        self.setup.accountant.load_state_dict(state["accountant"])

    def privacy_fields(self, config: TrainConfig) -> dict[str, Any]:
        """The record's accounting fields: sigma, q, the spent epsilon under both accountants, and with
        feature statistics the composition of both releases."""
        setup = self.setup
        history = [list(map(float, h[:2])) + [int(h[2])] for h in setup.accountant.history]
        prior = self.statistics.history if self.statistics is not None else []
        fields: dict[str, Any] = {
            "noise_multiplier": float(setup.noise_multiplier),
            "sample_rate": float(setup.sample_rate),
            "expected_batch_size": setup.expected_batch_size,
            "noise_source": setup.noise_source,
            "epsilon": self.epsilon(config),
            "accountant_history": history,
            "epsilon_by_accountant": {
                name: compute_epsilon(delta=config.delta, accountant=name, history=[*prior, *history])
                for name in ("rdp", "prv")
            },
        }
        if self.statistics is not None:
            fields.update(composed_privacy_record(self.statistics, fields, config))
        return fields
