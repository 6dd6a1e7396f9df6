"""Fixtures shared by several test modules."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def repo(pristine: Path, tmp_path: Path) -> Path:
    """A writable copy of the module's ``pristine`` repository, so that each test tampers with its own."""
    shutil.copytree(pristine, tmp_path / "repo")
    return tmp_path / "repo"


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """A small learnable CIFAR-10-shaped dataset, prepared as the pipeline prepares one (read-only for tests)."""
    import warnings

    from tests.support.learnable import prepare_learnable

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fingerprint warning: this is not the official CIFAR-10
        return prepare_learnable(tmp_path_factory.mktemp("data"))
