"""Reading official archives: safe tar extraction and the CIFAR-10 python batches."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target folder (or is a device, a bad link...)."""


class ArchiveFormatError(ValueError):
    """An archive does not have the expected content."""


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a tar archive into ``dest`` with tarfile's ``data`` filter, all or nothing.

    The archive is extracted into a temporary folder next to ``dest`` which is renamed to ``dest`` only
    when every member passed the filter; a member that escapes the folder (``../x``, an absolute path,
    a link pointing outside) raises :class:`UnsafeArchiveError` naming it and leaves nothing behind.
    """
    archive, dest = Path(archive), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".extracting"))
    try:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except tarfile.FilterError as exc:
            member = getattr(exc, "tarinfo", None)
            name = member.name if member is not None else "?"
            raise UnsafeArchiveError(
                f"{archive}: refusing to extract member {name!r} ({exc}); the archive is not safe to "
                f"unpack. Nothing was extracted."
            ) from exc
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ArchiveFormatError(f"{archive}: not a readable tar archive ({exc})") from exc
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def read_cifar_archive(archive: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The official splits of a CIFAR-10 python archive, read in place (nothing extracted).

    Returns ``{"train": (images, labels), "test": (images, labels)}`` with images uint8 ``(N, 3, 32, 32)``
    and labels int64. The batch pickles are read with a
    restricted unpickler that refuses anything but arrays and plain containers (:func:`load_cifar_pickle`).
    """
    archive = Path(archive)
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                base = Path(member.name).name
                if member.isfile() and base in (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH):
                    handle = tar.extractfile(member)
                    assert handle is not None
                    found[base] = _cifar_batch(load_cifar_pickle(handle), f"{archive}:{member.name}")
    except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise ArchiveFormatError(f"{archive}: not a readable CIFAR-10 python archive ({exc})") from exc
    return _cifar_splits(found, str(archive))


def read_cifar_folder(folder: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """As :func:`read_cifar_archive`, from an extracted ``cifar-10-batches-py`` folder."""
    folder = Path(folder)
    found = {}
    for base in (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH):
        path = folder / base
        if path.exists():
            with open(path, "rb") as handle:
                try:
                    found[base] = _cifar_batch(load_cifar_pickle(handle), str(path))
                except (EOFError, pickle.UnpicklingError) as exc:
                    raise ArchiveFormatError(f"{path}: not a readable CIFAR-10 batch ({exc})") from exc
    return _cifar_splits(found, str(folder))


def is_cifar_folder(folder: str | os.PathLike) -> bool:
    """True for an extracted official CIFAR-10 python folder (it holds ``data_batch_1``)."""
    return (Path(folder) / CIFAR_TRAIN_BATCHES[0]).is_file()


# What a CIFAR-10 python batch pickle may reference: numpy arrays and their dtypes, nothing that runs code.
_CIFAR_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, numbers and numpy arrays only; any other global is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: a CIFAR-10 batch holds only arrays, lists and bytes"
            )
        return super().find_class(module, name)


def load_cifar_pickle(handle) -> dict:
    """Unpickle one CIFAR-10 batch with :class:`_CifarUnpickler` (a planted pickle cannot run code)."""
    return _CifarUnpickler(handle, encoding="bytes").load()


def _cifar_batch(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (KeyError, TypeError) as exc:
        raise ArchiveFormatError(f"{where}: not a CIFAR-10 batch (missing b'data'/b'labels')") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ArchiveFormatError(
            f"{where}: expected data (N, 3072) and N labels, got {data.shape}, {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ArchiveFormatError(f"{where}: labels outside 0..9")
    # Each row is the red plane, then green, then blue, row-major: exactly (3, 32, 32).
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_splits(found: dict, where: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    missing = [b for b in (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH) if b not in found]
    if missing:
        raise ArchiveFormatError(f"{where}: missing CIFAR-10 batches {', '.join(missing)}")
    train = [found[b] for b in CIFAR_TRAIN_BATCHES]
    return {
        "train": (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
        "test": found[CIFAR_TEST_BATCH],
    }
