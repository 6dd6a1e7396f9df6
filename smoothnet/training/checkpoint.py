"""Atomic per-epoch checkpoints: a killed run resumes from the last complete epoch.

Checkpoints are DVC outputs (anyone who can write the DVC remote can replace them), so they are loaded with
``torch.load(weights_only=True)``: only tensors and plain containers, never code. Every random state is
therefore stored as tensors, lists and numbers (numpy's state array as a list of ints).
"""

from __future__ import annotations

import io
import os
import pickle
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothnet.io import atomic_write_bytes

CHECKPOINT_NAME = "last.pt"


class CheckpointUnreadable(RuntimeError):
    """``last.pt`` is truncated, corrupt or holds more than tensors and plain containers."""


def rng_state() -> dict[str, Any]:
    """Every random state the training loop draws from (sampling, noise, augmentation, dropout), as
    tensors, lists and numbers only (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
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
    """The last checkpoint in ``directory``, or None when there is none.

    Raises :class:`CheckpointUnreadable` (naming the file) for a truncated or corrupt file or one that
    would need code to unpickle; nothing in it is executed.
    """
    path = Path(directory) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's weights-only unpickler refused a global
        raise CheckpointUnreadable(
            f"{path}: unreadable checkpoint: it holds objects other than tensors and plain containers, "
            "which this trainer never writes (refused without running any of it)"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise CheckpointUnreadable(
            f"{path}: unreadable checkpoint: truncated or corrupt ({type(exc).__name__})"
        ) from exc
    if not isinstance(checkpoint, dict) or "config_fingerprint" not in checkpoint:
        raise CheckpointUnreadable(f"{path}: not a checkpoint written by this trainer")
    return checkpoint


def set_aside_checkpoint(directory: str | os.PathLike, suffix: str = ".stale") -> Path:
    """Rename ``last.pt`` to ``last.pt<suffix>`` (nothing is deleted; an older one of that name is kept too,
    with a time stamp)."""
    path = Path(directory) / CHECKPOINT_NAME
    aside = path.with_name(path.name + suffix)
    if aside.exists():
        aside = path.with_name(f"{path.name}{suffix}.{time.strftime('%Y%m%dT%H%M%S')}")
    os.replace(path, aside)
    return aside


def remove_orphaned_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files a killed atomic writer left in ``directory`` (half-written
    checkpoints or records, never a complete file); call only while holding the run's lock."""
    removed = []
    folder = Path(directory)
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
