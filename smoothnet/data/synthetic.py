"""Tiny datasets in the official formats, for tests of the download and preparation code.

They exercise the real readers: a CIFAR-10 python archive (``cifar-10-batches-py/data_batch_1..5``,
``test_batch`` pickles in a .tar.gz), an imagenette2-style tarball (``imagenette2/<split>/<wnid>/*.JPEG``)
and image-folder mirrors. The images are random; nothing here is used to produce results.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from smoothnet.data.catalog import CIFAR10, IMAGENETTE


def random_images(per_class: int, num_classes: int = 10, size: int = 32, seed: int = 0):
    """Distinct random uint8 images ``(N, 3, size, size)`` with labels 0..num_classes-1, class-major."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(per_class * num_classes, 3, size, size), dtype=np.uint8)
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    return images, labels


def write_tar(path: str | os.PathLike, members: dict[str, bytes]) -> Path:
    """A gzip tarball with the given member names and contents (names are written verbatim)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def write_cifar_archive(path, train_images, train_labels, test_images, test_labels) -> Path:
    """A ``cifar-10-python.tar.gz`` in the official layout: five training batches and a test batch."""
    members = {}
    batches = zip(np.array_split(train_images, 5), np.array_split(train_labels, 5), strict=True)
    for i, (x, y) in enumerate(batches, start=1):
        members[f"cifar-10-batches-py/data_batch_{i}"] = _cifar_pickle(x, y, f"training batch {i} of 5")
    members["cifar-10-batches-py/test_batch"] = _cifar_pickle(
        test_images, test_labels, "testing batch 1 of 1"
    )
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps(
        {b"label_names": [c.encode() for c in CIFAR10.classes], b"num_cases_per_batch": len(test_images)}
    )
    return write_tar(path, members)


def _cifar_pickle(images: np.ndarray, labels: np.ndarray, batch_label: str) -> bytes:
    batch = {
        b"batch_label": batch_label.encode(),
        b"labels": [int(v) for v in labels],
        b"data": np.ascontiguousarray(images).reshape(len(images), -1),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }
    return pickle.dumps(batch, protocol=2)


def png_bytes(chw: np.ndarray) -> bytes:
    """Lossless PNG of a ``(3, H, W)`` uint8 image."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(width: int, height: int, seed: int, mode: str = "RGB") -> bytes:
    """A JPEG of smooth random content (mode "RGB" or "L")."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.BILINEAR).convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_cifar_mirror(
    root, splits: dict[str, tuple[np.ndarray, np.ndarray]], order_seed: int | None = None
) -> Path:
    """An image-folder mirror ``root/<split>/<class>/<name>.png``.

    File names are a seeded permutation of the image indices when ``order_seed`` is given, so the sorted
    read order differs from the array order (and from other seeds).
    """
    root = Path(root)
    for split, (images, labels) in splits.items():
        names = np.arange(len(images))
        if order_seed is not None:
            names = np.random.default_rng(order_seed).permutation(len(images))
        for image, label, name in zip(images, labels, names, strict=True):
            folder = root / split / CIFAR10.classes[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{int(name):06d}.png").write_bytes(png_bytes(image))
    return root


def imagenette_members(
    train_per_class: int, val_per_class: int, prefix: str = "imagenette2/"
) -> dict[str, bytes]:
    """Members of a tiny imagenette2-style tarball: JPEGs of assorted sizes, one grayscale per split and class."""
    members = {}
    seed = 0
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for wnid in IMAGENETTE.classes:
            for i in range(count):
                seed += 1
                width, height = (48 + 7 * (i % 3), 40 + 5 * (i % 4))
                mode = "L" if i == 0 else "RGB"
                members[f"{prefix}{split}/{wnid}/{wnid}_{i:04d}.JPEG"] = jpeg_bytes(width, height, seed, mode)
    members[f"{prefix}noisy_imagenette.csv"] = b"path,noisy_labels_0\n"
    return members
