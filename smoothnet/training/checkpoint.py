"""Atomic per-epoch checkpoints: a killed run resumes from the last complete epoch.

What a checkpoint holds (:func:`checkpoint_state`, :func:`restore`) and which code and configuration it
belongs to (:func:`config_fingerprint`).

Checkpoints are DVC outputs (anyone who can write the DVC remote can replace them), so they are loaded with
``torch.load(weights_only=True)``: only tensors and plain containers, never code. Every random state is
therefore stored as tensors, lists and numbers (numpy's state array as a list of ints).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothnet.closure import REPO_ROOT, import_closure
from smoothnet.io import atomic_write_bytes
from smoothnet.training.config import ConfigError, TrainConfig

CHECKPOINT_NAME = "last.pt"


class CheckpointUnreadable(RuntimeError):
    """``last.pt`` is truncated, corrupt or holds more than tensors and plain containers."""


@dataclass
class RunState:
    """Everything the loop mutates; what a checkpoint stores besides module/optimizer states."""

    epoch: int = 0  # epochs completed
    steps: int = 0  # optimizer steps taken (logical batches)
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    examples_seen: int = 0


# What determines training: the trainer's import closure (smoothnet.closure), not the whole package, so a
# fix to a report caption or a help string does not make a half-trained run start over.
TRAINING_CODE = "smoothnet.training.trainer"
CODE_ROOT = REPO_ROOT  # tests point it at a copy of the package


def code_digests() -> dict[str, str]:
    """SHA-256 of each file of the training code (the import closure of the trainer), by repo path."""
    return {
        path: hashlib.sha256((CODE_ROOT / path).read_bytes()).hexdigest()
        for path in import_closure(TRAINING_CODE, root=CODE_ROOT)
    }


def config_fingerprint(config: TrainConfig, code: dict[str, str] | None = None) -> str:
    """Hash of the run's configuration and of the training code (:func:`code_digests`): a checkpoint only
    resumes the run, and the code version, that wrote it (a fixed bug must not be resumed past)."""
    digest = hashlib.sha256(json.dumps(config.to_params(), sort_keys=True).encode())
    for path, file_digest in sorted((code_digests() if code is None else code).items()):
        digest.update(f"{path}\0{file_digest}\0".encode())
    return digest.hexdigest()


def stale_reason(checkpoint: dict[str, Any]) -> str:
    """Why a checkpoint cannot be resumed: the training files that changed, else the parameters."""
    old = checkpoint.get("code_digests")
    if not isinstance(old, dict):
        return "it predates the current checkpoint format"
    now = code_digests()
    changed = sorted(path for path in set(old) | set(now) if old.get(path) != now.get(path))
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        return f"the training code changed since it was written ({shown})"
    return "the run's parameters changed since it was written"


def checkpoint_state(config: TrainConfig, run, state: RunState, context) -> dict[str, Any]:
    """What a resumed ``run`` (a trainer's PreparedRun) needs; under torchrun every rank's RNG state is
    gathered (a collective call)."""
    optimizer = getattr(run.optimizer, "original_optimizer", run.optimizer)
    own = rng_state()
    if run.streams is not None and run.streams.source == "seeded":
        # An os_entropy generator's state begins with its secret seed: stored, it would let anyone holding
        # the checkpoint (the file a trained model is released from) regenerate every noise draw. A resumed
        # secure run draws fresh OS entropy instead, which is the mechanism that was accounted.
        own["streams"] = run.streams.state()
    rng_by_rank = [own]
    if context.enabled:
        rng_by_rank = [None] * context.world_size
        torch.distributed.all_gather_object(rng_by_rank, own)
    return {
        "config_fingerprint": config_fingerprint(config),
        "code_digests": code_digests(),
        "full_model": run.full_model.state_dict(),  # the trainable module's weights are part of it
        "optimizer": optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        **run.training.state_dict(),  # the accountant and its noise multiplier
        "state": state.__dict__,
        "rng_by_rank": rng_by_rank,
    }


def restore(checkpoint: dict[str, Any], config: TrainConfig, run, context) -> RunState:
    """Load a checkpoint of this run's fingerprint (checked by the caller) into ``run``; its loop state."""
    run.full_model.load_state_dict(checkpoint["full_model"])
    getattr(run.optimizer, "original_optimizer", run.optimizer).load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    if run.ema is not None:
        run.ema.load_state_dict(checkpoint["ema"])
    run.training.load_state_dict(checkpoint, config.run_id)
    if len(checkpoint["rng_by_rank"]) != context.world_size:
        raise ConfigError(
            f"run {config.run_id!r}: the checkpoint was written by {len(checkpoint['rng_by_rank'])} process(es); "
            f"resume it with the same number of processes (now {context.world_size})"
        )
    set_rng_state(checkpoint["rng_by_rank"][context.rank])
    if run.streams is not None and run.streams.source == "seeded":
        run.streams.load_state(checkpoint["rng_by_rank"][context.rank]["streams"])
    return RunState(**checkpoint["state"])


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
