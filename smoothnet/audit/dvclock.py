"""Reading ``dvc.lock``, and hashing paths with DVC's own hashing (``dvc_data``), as ``dvc status`` does.

``dvc.lock`` (schema 2.0) lists per stage its ``deps`` and ``outs`` (each with ``path`` and ``md5``) and
its ``params`` (``{params_file: {key: value}}``, keys as declared in dvc.yaml, e.g. ``train`` or
``runs.<run_id>``). The audit reads the lock file it is given (``--lock``), not the repository's, so it
compares hashes itself instead of asking ``dvc status``; the hashes come from the same ``dvc_data.build``
that DVC 3 runs for a dependency (md5, ``.dvcignore`` honoured), in memory, writing nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from smoothnet.yamlio import load_yaml

if TYPE_CHECKING:
    from dvc.ignore import DvcIgnoreFilter


class LockError(ValueError):
    """dvc.lock is missing or malformed."""


def load_lock(path: str | os.PathLike) -> dict[str, Any]:
    """The ``stages`` mapping of a dvc.lock file."""
    path = Path(path)
    if not path.exists():
        raise LockError(f"{path}: dvc.lock not found (run `dvc repro` first, or pass --lock)")
    try:
        lock = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise LockError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(lock, dict) or not isinstance(lock.get("stages"), dict):
        raise LockError(f"{path}: expected a mapping with a 'stages' section (DVC lock schema 2.0)")
    return lock["stages"]


def dvcignore_filter(root: str | os.PathLike) -> DvcIgnoreFilter:
    """DVC's ignore rules for the repository at ``root`` (``.dvcignore``, ``.git``...)."""
    from dvc.fs import LocalFileSystem
    from dvc.ignore import DvcIgnoreFilter

    fs = LocalFileSystem()
    return DvcIgnoreFilter(fs, fs.abspath(os.fspath(Path(root).resolve())))


def dvc_md5(path: str | os.PathLike, ignore: DvcIgnoreFilter | None = None) -> str | None:
    """DVC's md5 of a file (its bytes) or directory (``<md5 of the listing>.dir``); ``None`` if absent.

    ``ignore`` (:func:`dvcignore_filter`) leaves out of a directory what DVC leaves out.
    """
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs import LocalFileSystem, MemoryFileSystem

    fs = LocalFileSystem()
    full = os.fspath(Path(path).resolve())
    if not fs.exists(full):
        return None
    odb = HashFileDB(MemoryFileSystem(), "memory://smoothnet-audit")  # dry run: nothing is stored
    _, _, obj = build(odb, full, fs, "md5", ignore=ignore, dry_run=True)
    return obj.hash_info.value


def entries(stage: dict[str, Any], section: str) -> list[dict[str, Any]]:
    """The ``deps`` or ``outs`` list of a lock stage (empty when absent)."""
    value = stage.get(section) or []
    if not isinstance(value, list):
        raise LockError(f"dvc.lock: stage section {section!r} is not a list")
    return [e for e in value if isinstance(e, dict) and "path" in e]
