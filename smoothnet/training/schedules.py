"""Learning-rate schedules: the rate as a pure function of the epoch (or optimizer step) it applies to.

``rate_factor`` is the definition; :class:`Schedule` applies it to an optimizer through torch's
``LambdaLR`` (or keeps the historical ``StepLR`` / ``ConstantLR``), stepped once per epoch or once per
optimizer step. Its only state is the counter, which the trainer checkpoints, so a resumed run continues
with exactly the rates an uninterrupted one would have used. A schedule scales the update only: clipping,
noise and accounting never read it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from smoothnet.training.config import TrainConfig

# lr_schedule -> the unit its counter advances by (see rate_factor for the formulas).
SCHEDULE_UNITS = {
    "step": "epoch",
    "constant": "epoch",
    "cosine_epoch": "epoch",
    "cosine_opacus": "epoch",
    "cosine_step": "step",
}


def rate_factor(
    schedule: str, index: int, total: int, warmup: int = 0, step_size: int = 1, gamma: float = 1.0
) -> float:
    """The multiple of the base rate ``lr`` used by unit ``index`` (0-based epoch or optimizer step).

    ``total`` units in all, the first ``warmup`` of them a linear warm-up ``(index + 1) / warmup`` (no unit
    trains at rate 0); the schedule proper then runs over the remaining ``n = total - warmup`` units with
    ``i = index - warmup``:

    - ``constant``: 1
    - ``step``: ``gamma ** (i // step_size)``
    - ``cosine_epoch``, ``cosine_step``: ``0.5 * (1 + cos(pi * i / n))`` (torch's CosineAnnealingLR to 0)
    - ``cosine_opacus``: ``0.5 * (1 + cos(pi * e / (n + 1)))`` with ``e = i + 1`` counted from 1, exactly
      Opacus' examples/cifar10.py ``--lr-schedule cos`` (it never reaches 0 nor starts at ``lr``)

    Units past ``total`` keep the last unit's factor.
    """
    index = min(index, total - 1)
    if index < warmup:
        return (index + 1) / warmup
    i, n = index - warmup, total - warmup
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return gamma ** (i // step_size)
    if schedule in ("cosine_epoch", "cosine_step"):
        return 0.5 * (1 + math.cos(math.pi * i / n))
    if schedule == "cosine_opacus":
        return 0.5 * (1 + math.cos(math.pi * (i + 1) / (n + 1)))
    raise ValueError(f"unknown lr_schedule {schedule!r}; valid: {sorted(SCHEDULE_UNITS)}")


class Schedule:
    """The run's learning-rate schedule on ``optimizer``; the trainer calls :meth:`after_step` after every
    optimizer step and :meth:`after_epoch` after every epoch, and only the schedule's own unit advances it."""

    def __init__(self, config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> None:
        self.name = config.lr_schedule
        self.unit = SCHEDULE_UNITS[self.name]
        self.warmup = config.lr_warmup_epochs * (steps_per_epoch if self.unit == "step" else 1)
        self.total = config.epochs * (steps_per_epoch if self.unit == "step" else 1)
        if self.name == "step" and not self.warmup:
            # The stored runs' schedule, kept bit for bit (StepLR multiplies the rate step by step).
            self.scheduler = torch.optim.lr_scheduler.StepLR(
                optimizer, step_size=config.lr_step_size, gamma=config.lr_gamma
            )
        elif self.name == "constant" and not self.warmup:
            self.scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        else:
            step_size, gamma = config.lr_step_size, config.lr_gamma
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda index: rate_factor(self.name, index, self.total, self.warmup, step_size, gamma),
            )

    def after_step(self) -> None:
        """One optimizer step (logical batch) was taken."""
        if self.unit == "step":
            self.scheduler.step()

    def after_epoch(self) -> None:
        """One epoch was completed."""
        if self.unit == "epoch":
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        """What the run record says about the schedule."""
        return {
            "name": self.name,
            "unit": self.unit,  # history's per-epoch "lr" is the rate of the epoch's first step
            "warmup_units": self.warmup,
            "total_units": self.total,
            "definition": "smoothnet.training.schedules.rate_factor",
        }
