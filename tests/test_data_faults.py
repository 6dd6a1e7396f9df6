"""Preparation and loading under hostile or clumsy input: duplicate images, an extracted folder edited
after extraction, prepared arrays edited after preparation."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest

from smoothnet.data.catalog import ArchiveSpec
from smoothnet.data.loading import PreparedDataError, load_prepared
from smoothnet.data.prepare import PrepareError, prepare_dataset
from smoothnet.data.synthetic import imagenette_members, random_images, write_cifar_mirror, write_tar


def _prepare(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_dataset(*args, progress=False, workers=1, **kwargs)


def _mirror(root: Path, edit=None) -> Path:
    train, test = random_images(5, seed=1), random_images(2, seed=2)  # 50 / 20 images
    train, test = (train[0].copy(), train[1].copy()), (test[0].copy(), test[1].copy())
    if edit:
        edit(train, test)
    return write_cifar_mirror(root, {"train": train, "test": test})


def test_test_image_in_the_training_split_is_refused_unless_allowed(tmp_path):
    def leak(train, test):
        test[0][0] = train[0][0]
        test[1][0] = train[1][0]

    mirror = _mirror(tmp_path / "m", leak)
    with pytest.raises(
        PrepareError, match=r"both the training and the test split.*data.cifar10.allow_duplicates"
    ):
        _prepare("cifar10", str(mirror), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    manifest = _prepare("cifar10", str(mirror), tmp_path / "out", allow_duplicates=True)
    assert len(manifest["duplicates"]["train_test_shared"]) == 1 and manifest["duplicates"]["allowed"]


def test_one_image_under_two_labels_is_refused(tmp_path):
    def conflict(train, test):
        other = int(np.flatnonzero(train[1] != train[1][0])[0])
        train[0][other] = train[0][0]

    with pytest.raises(PrepareError, match="two different labels"):
        _prepare("cifar10", str(_mirror(tmp_path / "m", conflict)), tmp_path / "out")


def test_repeated_image_within_a_class_is_recorded(tmp_path):
    def repeat(train, test):
        same = int(np.flatnonzero(train[1] == train[1][0])[1])
        train[0][same] = train[0][0]

    manifest = _prepare("cifar10", str(_mirror(tmp_path / "m", repeat)), tmp_path / "out")
    assert len(manifest["duplicates"]["repeated_within_a_split"]) == 1
    assert manifest["duplicates"]["label_conflicts"] == manifest["duplicates"]["train_test_shared"] == []


def test_arrays_edited_after_preparation_are_refused_at_load(tmp_path):
    _prepare("cifar10", str(_mirror(tmp_path / "m")), tmp_path / "out")
    arr = np.load(tmp_path / "out" / "train_images.npy")
    arr[0, 0, 0, 0] ^= 1
    np.save(tmp_path / "out" / "train_images.npy", arr)
    with pytest.raises(
        PreparedDataError, match=r"train_images.npy: sha256 differs.*edited after preparation"
    ):
        load_prepared(tmp_path / "out")


def test_extracted_folder_edited_after_extraction_is_extracted_again(tmp_path):
    archive = write_tar(tmp_path / "imagenette2.tgz", imagenette_members(2, 1))
    spec = ArchiveSpec("http://example.invalid/imagenette2.tgz", hashlib.md5(archive.read_bytes()).hexdigest(),
                       "imagenette2.tgz")  # fmt: skip
    options = dict(image_size=32, raw_dir=tmp_path / "raw", archive=spec)
    first = _prepare("imagenette", str(archive), tmp_path / "out", **options)
    extracted = tmp_path / "raw" / "imagenette2.tgz.extracted"
    victim = sorted(p for p in extracted.rglob("*.JPEG") if "/train/" in p.as_posix())[0]
    victim.write_bytes(sorted(p for p in extracted.rglob("*.JPEG") if p != victim)[-1].read_bytes())
    again = _prepare("imagenette", str(archive), tmp_path / "out2", **options)
    assert again["fingerprint"] == first["fingerprint"]  # the edit was not trusted: extracted afresh


def test_orphaned_preparing_folders_are_removed(tmp_path):
    orphan = tmp_path / ".out.abc123.preparing"
    orphan.mkdir()
    (orphan / "train_images.npy").write_bytes(b"half")
    _prepare("cifar10", str(_mirror(tmp_path / "m")), tmp_path / "out")
    assert not orphan.exists() and (tmp_path / "out" / "manifest.json").exists()


def test_planted_cifar_folder_source_runs_nothing(tmp_path):
    import os
    import pickle

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Exploit(), b"labels": [0]}, protocol=2))
    with pytest.raises(Exception, match="refused global"):
        _prepare("cifar10", str(folder), tmp_path / "out")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()
