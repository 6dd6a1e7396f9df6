"""Record sections that fixture records need to be valid but that no audit or report test is about."""

from __future__ import annotations

from typing import Any


def performance() -> dict[str, Any]:
    """A fixture run's ``performance`` section (a fresh dict: tests may edit their record)."""
    return {"wall_time_s": 12.5, "images_per_second": 900.0, "peak_memory_bytes": 1 << 28, "device": "cpu"}


def environment(git_revision: str = "0" * 40) -> dict[str, Any]:
    """A fixture run's ``environment`` section: the pinned versions, a clean tree at ``git_revision``."""
    return {
        "python": "3.11",
        "torch": "2.14.1",
        "opacus": "1.6.0",
        "cuda": None,
        "cudnn": None,
        "git_revision": git_revision,
        "git_dirty": False,
    }
