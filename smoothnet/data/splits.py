"""Content-addressed fingerprints and the seeded train/validation split.

Both depend only on the images' content, never on the order in which files were read: the same images
get the same split (and the same order inside it) whether they came from the official archive or from a
mirror listed in another order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np


def image_digests(images: np.ndarray) -> list[str]:
    """sha256 of each image's ``(H, W, 3)`` uint8 bytes, for images given as ``(N, 3, H, W)``."""
    hwc = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    return [hashlib.sha256(img.tobytes()).hexdigest() for img in hwc]


def fingerprint(digests: Iterable[str]) -> str:
    """sha256 of the concatenated sorted hex digests (order-independent: the same set of images gives the same value)."""
    return hashlib.sha256("".join(sorted(digests)).encode("ascii")).hexdigest()


def split_key(seed: int, digest: str) -> str:
    """The rank of an image in the validation draw: a hash of the seed and the image's content."""
    return hashlib.sha256(f"{seed}:{digest}".encode("ascii")).hexdigest()


def train_val_split(
    digests: Sequence[str], labels: np.ndarray, *, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of (train, validation): per class, the ``round(n_c * val_fraction)`` lowest-ranked images.

    Ranking by ``sha256(seed:digest)`` makes the draw a seeded random permutation that is a function of
    the set of images only. Identical images (same digest and class) are kept together, so no image can
    be in both splits; the class's validation count then exceeds the target by at most the duplicates.
    Both index arrays are returned in canonical order (see :func:`canonical_order`).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    val: list[int] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        groups: dict[str, list[int]] = {}
        for i in members:
            groups.setdefault(digests[i], []).append(int(i))
        target = round(len(members) * val_fraction)
        taken = 0
        for digest in sorted(groups, key=lambda d: split_key(seed, d)):
            if taken >= target:
                break
            val.extend(groups[digest])
            taken += len(groups[digest])
    val_mask = np.zeros(len(labels), dtype=bool)
    val_mask[val] = True
    train_idx = np.flatnonzero(~val_mask)
    val_idx = np.flatnonzero(val_mask)
    return canonical_order(train_idx, digests, labels), canonical_order(val_idx, digests, labels)


def canonical_order(indices: np.ndarray, digests: Sequence[str], labels: np.ndarray) -> np.ndarray:
    """``indices`` sorted by (image digest, label): an order that does not depend on the read order."""
    return np.asarray(sorted(indices.tolist(), key=lambda i: (digests[i], int(labels[i]))), dtype=np.int64)
