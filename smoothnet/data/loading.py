"""Loading a prepared dataset for training: uint8 arrays in memory (or memory-mapped), normalised per batch.

No image file is decoded after preparation; a batch is normalised on the fly as float32 with the
published constants recorded in the manifest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothnet.io import loads_json, sha256_file

SPLITS = ("train", "val", "test")


class PreparedDataError(ValueError):
    """A prepared dataset folder is missing, incomplete, or disagrees with its manifest."""


def normalize_batch(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` (or ``(3, H, W)``) -> float32 ``(x / 255 - mean) / std`` per channel."""
    shape = (3, 1, 1)
    return (images.to(torch.float32) / 255.0 - mean.view(shape)) / std.view(shape)


@dataclass
class PreparedData:
    """A prepared dataset: its manifest and its three splits."""

    path: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    mmap: bool = False
    _cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """Dataset name ("cifar10", "imagenette")."""
        return self.manifest["dataset"]

    @property
    def classes(self) -> list[str]:
        """Class names in label order."""
        return list(self.manifest["classes"])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.manifest["classes"])

    @property
    def image_size(self) -> int:
        """Height = width of the stored images."""
        return int(self.manifest["image_size"])

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel normalisation mean on the [0, 1] scale (published constants)."""
        return tuple(self.manifest["normalisation"]["mean"])

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel normalisation std on the [0, 1] scale (published constants)."""
        return tuple(self.manifest["normalisation"]["std"])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images uint8 (N, 3, H, W), labels int64 (N,))`` of "train", "val" or "test"."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; splits: {', '.join(SPLITS)}")
        if name not in self._cache:
            mode = (
                "c" if self.mmap else None
            )  # copy-on-write map: writable, so torch shares it without a copy
            images = np.load(self.path / f"{name}_images.npy", mmap_mode=mode, allow_pickle=False)
            labels = np.load(self.path / f"{name}_labels.npy", allow_pickle=False)
            self._check(name, images, labels)
            self._cache[name] = (torch.from_numpy(images), torch.from_numpy(labels))
        return self._cache[name]

    def count(self, name: str) -> int:
        """Number of examples in a split (the manifest's count, which loading checks the arrays against)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; splits: {', '.join(SPLITS)}")
        return int(self.manifest["counts"][name]["total"])

    def release_images(self) -> None:
        """Forget the loaded splits: a model trained on precomputed features needs the images only until the
        features are computed (the trainer keeps the labels it uses). A later :meth:`split` loads again."""
        self._cache.clear()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise a uint8 batch to float32 with this dataset's mean/std."""
        mean, std = self._stats()
        return normalize_batch(images, mean, std)

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(self.mean, dtype=torch.float32), torch.tensor(self.std, dtype=torch.float32)

    def _check(self, name: str, images: np.ndarray, labels: np.ndarray) -> None:
        expected = self.manifest["counts"][name]["total"]
        size = self.image_size
        if images.dtype != np.uint8 or images.shape != (expected, 3, size, size):
            raise PreparedDataError(
                f"{self.path}/{name}_images.npy: {images.dtype} {images.shape}, manifest says uint8 "
                f"({expected}, 3, {size}, {size}); prepare the dataset again"
            )
        if labels.dtype != np.int64 or labels.shape != (expected,):
            raise PreparedDataError(
                f"{self.path}/{name}_labels.npy: {labels.dtype} {labels.shape}, expected int64"
            )
        if expected and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise PreparedDataError(
                f"{self.path}/{name}_labels.npy: labels outside 0..{self.num_classes - 1}"
            )


def load_prepared(path: str | os.PathLike, *, mmap: bool = False, verify: bool = True) -> PreparedData:
    """Open the output of ``prepare_dataset``; ``verify`` (default) checks every array's sha256 against the
    manifest, so arrays edited after preparation are never trained on (about a second for CIFAR-10).

    ``mmap=True`` maps the image arrays instead of reading them into memory (ImageNette at 224 is 1.4 GB).
    """
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise PreparedDataError(
            f"{path}: no manifest.json; prepare it first (smoothnet prepare --dataset <name> --out {path})"
        )
    try:
        manifest = loads_json(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PreparedDataError(f"{manifest_path}: unreadable ({exc}); prepare the dataset again") from exc
    if not isinstance(manifest, dict):
        raise PreparedDataError(f"{manifest_path}: not a JSON object; prepare the dataset again")
    for key in ("dataset", "classes", "counts", "normalisation", "image_size", "files"):
        if key not in manifest:
            raise PreparedDataError(f"{manifest_path}: missing key {key!r}; prepare the dataset again")
    for filename, meta in manifest["files"].items():
        file = path / filename
        if not file.is_file():
            raise PreparedDataError(f"{file}: missing; prepare the dataset again")
        if verify and sha256_file(file) != meta["sha256"]:
            raise PreparedDataError(
                f"{file}: sha256 differs from the manifest: edited after preparation; prepare the dataset "
                f"again (dvc repro prepare@{manifest['dataset']})"
            )
    return PreparedData(path=path, manifest=manifest, manifest_sha256=sha256_file(manifest_path), mmap=mmap)
