"""Datasets: official download (checksums, safe extraction), mirrors, preparation, splits, loading.

``prepare_dataset(name, source, out_dir, ...)`` writes ``data/prepared/<name>/`` once;
``load_prepared(path)`` opens it for training. Attributes are imported on first use, so importing this
package pulls in neither torch nor PIL.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "prepare_dataset": "smoothnet.data.prepare",
    "PrepareError": "smoothnet.data.prepare",
    "FingerprintWarning": "smoothnet.data.prepare",
    "load_prepared": "smoothnet.data.loading",
    "PreparedData": "smoothnet.data.loading",
    "PreparedDataError": "smoothnet.data.loading",
    "normalize_batch": "smoothnet.data.loading",
    "DATASETS": "smoothnet.data.catalog",
    "ArchiveSpec": "smoothnet.data.catalog",
    "dataset_spec": "smoothnet.data.catalog",
    "DownloadError": "smoothnet.data.download",
    "ChecksumError": "smoothnet.data.download",
    "fetch_archive": "smoothnet.data.download",
    "UnsafeArchiveError": "smoothnet.data.archives",
    "safe_extract": "smoothnet.data.archives",
    "CorruptImageError": "smoothnet.data.images",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'smoothnet.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
