"""Atomic per-epoch checkpoints: a killed run resumes from the last complete epoch."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothnet.io import atomic_write_bytes

CHECKPOINT_NAME = "last.pt"


def rng_state() -> dict[str, Any]:
    """Every random state the training loop draws from (sampling, noise, augmentation, dropout)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/last.pt`` atomically (a crash leaves the previous checkpoint)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(directory) / CHECKPOINT_NAME
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The last checkpoint in ``directory``, or None when there is none."""
    path = Path(directory) / CHECKPOINT_NAME
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def set_aside_checkpoint(directory: str | os.PathLike) -> Path:
    """Rename a checkpoint written by another configuration to ``last.pt.stale`` (nothing is deleted)."""
    path = Path(directory) / CHECKPOINT_NAME
    stale = path.with_suffix(".pt.stale")
    os.replace(path, stale)
    return stale
