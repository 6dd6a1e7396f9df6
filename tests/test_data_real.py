"""Preparation of the real mirrors in ../shared/data: fingerprints and published statistics reproduced.

Skipped when the mirrors are absent. The values below are the ones ../shared/data/README.md states
(measured on that copy, equal to the published statistics of the official CIFAR-10).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smoothnet.data.catalog import CIFAR10, IMAGENETTE
from smoothnet.data.loading import load_prepared
from smoothnet.data.prepare import FingerprintWarning, prepare_dataset

MIRRORS = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR_MIRROR = MIRRORS / "cifar10-png"
NETTE_MIRROR = MIRRORS / "imagenette-224-subset"

pytestmark = pytest.mark.real_data


def _stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std on the [0, 1] scale, over all pixels of uint8 (N, 3, H, W) images."""
    pixels = images.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64) / 255.0
    return pixels.mean(axis=1), pixels.std(axis=1)


@pytest.mark.skipif(not CIFAR_MIRROR.is_dir(), reason=f"CIFAR-10 mirror {CIFAR_MIRROR} absent")
def test_cifar10_mirror_reproduces_fingerprints_and_statistics(tmp_path):
    manifest = prepare_dataset("cifar10", str(CIFAR_MIRROR), tmp_path / "cifar10", workers=1, progress=False)
    assert manifest["fingerprint"] == {
        "train": "21235a67dfcc4cc7669afb7875dac92b7923639b463a38fc8b26e7014ef4afec",
        "test": "d2c9e872cbf079d859736586a67337e1ad9ab325b2e6b268e8ca11fb6a686987",
    }
    assert manifest["fingerprint_matches_official"] is True and manifest["official_counts_match"] is True
    assert {s: manifest["counts"][s]["total"] for s in ("train", "val", "test")} == {
        "train": 40000,
        "val": 10000,
        "test": 10000,
    }
    assert set(manifest["counts"]["val"]["per_class"].values()) == {1000}
    data = load_prepared(tmp_path / "cifar10", verify=True)
    official_train = np.concatenate([data.split("train")[0].numpy(), data.split("val")[0].numpy()])
    mean, std = _stats(official_train)
    np.testing.assert_allclose(mean, [0.4914, 0.4822, 0.4465], atol=6e-5)
    np.testing.assert_allclose(std, [0.2470, 0.2435, 0.2616], atol=6e-5)
    # The normalisation constants the paper's code uses are these statistics, rounded, x255.
    np.testing.assert_allclose(np.array(CIFAR10.mean) * 255, mean * 255, atol=0.05)
    np.testing.assert_allclose(np.array(CIFAR10.std) * 255, std * 255, atol=0.05)
    mean, std = _stats(data.split("test")[0].numpy())
    np.testing.assert_allclose(mean, [0.4942, 0.4851, 0.4504], atol=6e-5)
    np.testing.assert_allclose(std, [0.2467, 0.2429, 0.2616], atol=6e-5)


@pytest.mark.slow  # about 30 s on the shared 2-core dev machine: 4,000 JPEGs resized to 256, cropped to 224
@pytest.mark.skipif(not NETTE_MIRROR.is_dir(), reason=f"Imagenette subset mirror {NETTE_MIRROR} absent")
def test_imagenette_subset_prepares_at_224(tmp_path):
    with pytest.warns(FingerprintWarning, match="split sizes"):  # a subset, not the full imagenette2
        manifest = prepare_dataset(
            "imagenette", str(NETTE_MIRROR), tmp_path / "nette", workers=1, progress=False
        )
    assert manifest["official_counts_match"] is False and manifest["fingerprint_matches_official"] is None
    assert {s: manifest["counts"][s]["total"] for s in ("train", "val", "test")} == {
        "train": 2400,
        "val": 600,
        "test": 1000,
    }
    assert manifest["transform"] == "RGB, Resize(256) bilinear antialiased, CenterCrop(224)"
    data = load_prepared(tmp_path / "nette", mmap=True)
    images, labels = data.split("test")
    assert tuple(images.shape) == (1000, 3, 224, 224)
    assert np.bincount(labels.numpy()).tolist() == [100] * 10
    assert data.mean == IMAGENETTE.mean and data.std == IMAGENETTE.std
