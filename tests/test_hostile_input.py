"""Files the package reads cannot run code: planted checkpoints and CIFAR batches are refused unexecuted."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from smoothnet.data.archives import ArchiveFormatError, read_cifar_archive, read_cifar_folder
from smoothnet.data.synthetic import random_images, write_cifar_archive
from smoothnet.training.checkpoint import CheckpointUnreadable, load_checkpoint, rng_state, set_rng_state


class _Exploit:
    """Pickles to a call of ``os.system`` that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps({b"data": _Exploit(marker), b"labels": [0]}, protocol=2)


def test_planted_checkpoint_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save({"config_fingerprint": "x", "payload": _Exploit(marker)}, folder / "last.pt")
    with pytest.raises(CheckpointUnreadable, match="last.pt"):
        load_checkpoint(folder)
    assert not marker.exists()


def test_truncated_checkpoint_is_named(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save({"config_fingerprint": "x", "w": torch.zeros(1000)}, folder / "last.pt")
    data = (folder / "last.pt").read_bytes()
    (folder / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointUnreadable, match="last.pt"):
        load_checkpoint(folder)


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    torch.save({"config_fingerprint": "x", "rng": rng_state()}, tmp_path / "last.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(tmp_path)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def _cifar_folder(root: Path) -> Path:
    train, test = random_images(2, seed=1), random_images(1, seed=2)
    archive = write_cifar_archive(root / "cifar.tar.gz", *train, *test)
    import tarfile

    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root / "cifar-10-batches-py"


def test_planted_cifar_batch_runs_nothing(tmp_path):
    folder = _cifar_folder(tmp_path)
    assert len(read_cifar_folder(folder)["train"][1]) == 20  # the genuine batches still load
    marker = tmp_path / "pwned"
    (folder / "data_batch_3").write_bytes(_malicious_pickle(marker))
    with pytest.raises(ArchiveFormatError, match="data_batch_3.*refused global"):
        read_cifar_folder(folder)
    assert not marker.exists()


def test_planted_cifar_archive_runs_nothing(tmp_path):
    from smoothnet.data.synthetic import write_tar

    marker = tmp_path / "pwned"
    members = {f"cifar-10-batches-py/data_batch_{i}": _malicious_pickle(marker) for i in range(1, 6)}
    archive = write_tar(tmp_path / "evil.tar.gz", members)
    with warnings.catch_warnings(), pytest.raises(ArchiveFormatError, match="refused global"):
        read_cifar_archive(archive)
    assert not marker.exists()
