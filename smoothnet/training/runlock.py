"""One trainer per run: an exclusive lock on the run's checkpoint folder for the trainer's lifetime.

Two trainers of the same run (e.g. an orphan left by a killed ``dvc repro`` and the next ``dvc repro``)
would write ``last.pt`` alternately and interleave their metrics. The lock is ``flock`` on a file beside
the checkpoint folder (``checkpoints/.<run_id>.lock``, outside the DVC output); the kernel releases it
when the holder dies, so a ``kill -9`` never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path


class RunLocked(RuntimeError):
    """Another trainer holds the run's lock; the message names it (pid, host, start time)."""


def lock_path(checkpoint_dir: str | os.PathLike) -> Path:
    """The lock file of a checkpoint folder."""
    checkpoint_dir = Path(checkpoint_dir)
    return checkpoint_dir.parent / f".{checkpoint_dir.name}.lock"


@contextlib.contextmanager
def hold_run_lock(checkpoint_dir: str | os.PathLike, run_id: str) -> Iterator[Path]:
    """Hold the run's lock for the ``with`` block, or raise :class:`RunLocked` at once."""
    path = lock_path(checkpoint_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown process"
            raise RunLocked(
                f"run {run_id!r} is already being trained by {holder} (lock {path}); wait for it to finish "
                "or stop that process first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
