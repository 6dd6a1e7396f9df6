"""Reading ``dvc.lock`` and hashing files the way DVC 3 does, without importing DVC.

``dvc.lock`` (schema 2.0) lists per stage its ``deps`` and ``outs`` (each with ``path`` and ``md5``) and
its ``params`` (``{params_file: {key: value}}``, keys as declared in dvc.yaml, e.g. ``train`` or
``runs.<run_id>``). DVC 3 (``hash: md5``) hashes a file as the md5 of its bytes and a directory as
the md5 of ``json.dumps(sorted [{"md5": ..., "relpath": ...}], sort_keys=True)`` followed by ``.dir``,
over the files DVC does not ignore (``.dvcignore``; DVC's own filter decides).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from smoothnet.yamlio import load_yaml


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


def md5_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """md5 of a file's bytes (DVC 3's file hash)."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


IgnoreFn = Callable[[Path, bool], bool]


def dvcignore_filter(root: str | os.PathLike) -> IgnoreFn:
    """``ignored(path, is_dir)`` as DVC decides it for the repository at ``root`` (``.dvcignore``, ``.git``...)."""
    from dvc.fs import LocalFileSystem
    from dvc.ignore import DvcIgnoreFilter

    fs = LocalFileSystem()
    dvc_filter = DvcIgnoreFilter(fs, fs.abspath(os.fspath(Path(root).resolve())))

    def ignored(path: Path, is_dir: bool) -> bool:
        full = os.fspath(path.resolve())
        return dvc_filter.is_ignored_dir(full) if is_dir else dvc_filter.is_ignored_file(full)

    return ignored


def md5_dir(path: str | os.PathLike, ignored: IgnoreFn | None = None) -> str:
    """DVC 3's directory hash: md5 of the sorted JSON listing of the files' md5s, plus ``.dir``.

    ``ignored(path, is_dir)`` leaves out what DVC leaves out (see :func:`dvcignore_filter`).
    """
    root = Path(path)
    found = []
    for folder, dirnames, filenames in os.walk(root):
        here = Path(folder)
        if ignored is not None:
            dirnames[:] = [d for d in dirnames if not ignored(here / d, True)]
            filenames = [f for f in filenames if not ignored(here / f, False)]
        found += [here / f for f in filenames]
    entries = sorted(
        ({"md5": md5_file(file), "relpath": file.relative_to(root).as_posix()} for file in found),
        key=lambda e: e["relpath"],
    )
    listing = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(listing).hexdigest() + ".dir"


def dvc_md5(path: str | os.PathLike, ignored: IgnoreFn | None = None) -> str | None:
    """DVC's md5 of a file or directory; ``None`` if it does not exist."""
    path = Path(path)
    if path.is_dir():
        return md5_dir(path, ignored)
    if path.is_file():
        return md5_file(path)
    return None


def entries(stage: dict[str, Any], section: str) -> list[dict[str, Any]]:
    """The ``deps`` or ``outs`` list of a lock stage (empty when absent)."""
    value = stage.get(section) or []
    if not isinstance(value, list):
        raise LockError(f"dvc.lock: stage section {section!r} is not a list")
    return [e for e in value if isinstance(e, dict) and "path" in e]
