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
