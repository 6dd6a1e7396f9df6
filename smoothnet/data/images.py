"""Decoding image files of an image-folder mirror into uint8 arrays, optionally in worker processes.

The resize + centre crop reproduces torchvision's ``Resize(r)`` + ``CenterCrop(s)`` on PIL images
(the paper's ImageNette transform, r = 256, s = 224) without importing torch, so decoding workers stay
light. tests/test_data_prepare.py checks the equality against torchvision.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm


class CorruptImageError(ValueError):
    """An image file cannot be decoded (or has the wrong size); the message names the file."""


def resize_center_crop(img: Image.Image, resize: int, crop: int) -> Image.Image:
    """torchvision ``CenterCrop(crop)(Resize(resize)(img))`` for a PIL image (bilinear, antialiased)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    if new_w < crop or new_h < crop:
        raise ValueError(f"resize {resize} is smaller than the crop {crop}")
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


def decode_image(path: str, resize: int | None, crop: int) -> tuple[np.ndarray, str]:
    """Decode one file to RGB uint8 ``(3, crop, crop)`` plus the sha256 of its ``(H, W, 3)`` bytes.

    ``resize=None`` keeps the image as it is and requires it to be ``crop`` x ``crop`` (CIFAR-10);
    otherwise the shorter side is resized to ``resize`` and the centre ``crop`` x ``crop`` kept.
    Grayscale, palette and RGBA images become RGB.
    """
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(
            f"{path}: cannot decode this image ({exc}); replace or remove the file"
        ) from exc
    if resize is None:
        if rgb.size != (crop, crop):
            raise CorruptImageError(f"{path}: image is {rgb.size[0]}x{rgb.size[1]}, expected {crop}x{crop}")
    else:
        rgb = resize_center_crop(rgb, resize, crop)
    hwc = np.asarray(rgb, dtype=np.uint8)
    return np.ascontiguousarray(hwc.transpose(2, 0, 1)), hashlib.sha256(hwc.tobytes()).hexdigest()


def _decode_chunk(paths: list[str], resize: int | None, crop: int) -> tuple[np.ndarray, list[str]]:
    decoded = [decode_image(p, resize, crop) for p in paths]
    return np.stack([chw for chw, _ in decoded]), [digest for _, digest in decoded]


def decode_files(
    paths: Sequence[str],
    resize: int | None,
    crop: int,
    *,
    workers: int = 1,
    progress: bool = True,
    desc: str = "decode",
) -> tuple[np.ndarray, list[str]]:
    """Decode ``paths`` in order into one uint8 ``(N, 3, crop, crop)`` array plus per-image digests.

    With ``workers > 1`` the files are decoded in chunks by worker processes, at most ``2 * workers``
    chunks in flight, so finished results never pile up in memory.
    """
    images = np.empty((len(paths), 3, crop, crop), dtype=np.uint8)
    digests: list[str] = []
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress)
    if workers > 1 and len(paths) > 256:
        chunk = max(16, min(512, len(paths) // (workers * 8)))
        starts = list(range(0, len(paths), chunk))
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            pending: deque = deque()
            for start in starts:
                pending.append(
                    (start, pool.submit(_decode_chunk, list(paths[start : start + chunk]), resize, crop))
                )
                if len(pending) >= 2 * workers:
                    _collect(pending.popleft(), images, digests, bar)
            while pending:
                _collect(pending.popleft(), images, digests, bar)
    else:
        for i, path in enumerate(paths):
            images[i], digest = decode_image(path, resize, crop)
            digests.append(digest)
            bar.update()
    bar.close()
    return images, digests


def _collect(item: tuple[int, Future], images: np.ndarray, digests: list[str], bar: tqdm) -> None:
    start, future = item
    chunk, chunk_digests = future.result()
    images[start : start + len(chunk)] = chunk
    digests.extend(chunk_digests)
    bar.update(len(chunk))


def default_workers() -> int:
    """Decoding processes: 2 at most (the machines this package is developed on are shared)."""
    return max(1, min(2, os.cpu_count() or 1))
