"""A small, learnable CIFAR-10-shaped dataset prepared through the real preparation code.

Each class is a colour with noise, written as PNGs in an image-folder mirror, so the trainer tests run
the same prepare -> load path as real data, in seconds, without the dataset mirrors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_learnable_mirror(
    root: Path, per_class_train: int = 40, per_class_test: int = 10, seed: int = 0
) -> Path:
    """Write ``root/{train,test}/<class>/*.png``: class-coloured 32x32 images with strong noise."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, size=(10, 3))
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        for label, name in enumerate(CIFAR10_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                noise = rng.normal(0, 30, size=(32, 32, 3))
                pixels = np.clip(colours[label] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}_{label}_{i:04d}.png")
    return root


def prepare_learnable(tmp: Path, **kwargs) -> Path:
    """Mirror + prepared dataset under ``tmp``; returns the prepared folder."""
    from smoothnet.data import prepare_dataset

    mirror = write_learnable_mirror(tmp / "mirror", **kwargs)
    out = tmp / "prepared" / "cifar10"
    prepare_dataset("cifar10", str(mirror), out, val_fraction=0.2, split_seed=0, progress=False, workers=1)
    return out


def small_dp_run(run_id: str, **overrides) -> dict:
    """Params of a DP run on the learnable data that trains in seconds: SmoothNet W5D10, eps 8, batch 64."""
    base = dict(
        run_id=run_id, dataset="cifar10", model="smoothnet", model_options={"width": 0.5, "depth": 1.0},
        target_epsilon=8.0, delta=1e-3, epochs=1, logical_batch_size=64, physical_batch_size=32,
        lr=1.0, momentum=0.0, weight_decay=0.0, lr_schedule="constant",
    )  # fmt: skip
    return {**base, **overrides}
