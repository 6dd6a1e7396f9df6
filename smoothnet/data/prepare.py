"""Prepare a dataset once: official splits -> fingerprints -> seeded split -> uint8 arrays + manifest.

Output (docs/design.md, "Prepared dataset"): ``{train,val,test}_images.npy`` uint8 ``(N, 3, H, W)``,
``{train,val,test}_labels.npy`` int64 and ``manifest.json``, written into a temporary folder that is
renamed to ``out_dir`` at the end, so an interrupted preparation leaves no half-written output.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smoothnet.data.archives import (
    is_cifar_folder,
    read_cifar_archive,
    read_cifar_folder,
    safe_extract,
)
from smoothnet.data.catalog import (
    FINGERPRINT_DEFINITION,
    ArchiveSpec,
    DatasetSpec,
    dataset_spec,
    resize_size,
)
from smoothnet.data.download import HostUnreachableError, fetch_archive, md5_file
from smoothnet.data.images import decode_files, default_workers
from smoothnet.data.splits import canonical_order, fingerprint, image_digests, train_val_split
from smoothnet.io import atomic_write_json, atomic_write_text, canonical_json, loads_json, sha256_file

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
SPLITS = ("train", "val", "test")


def mirror_env_var(name: str) -> str:
    """The environment variable that sets a local mirror of dataset ``name`` (``SMOOTHNET_CIFAR10_MIRROR``).

    It overrides ``data.<name>.mirror``; a mirror only stands in for an unreachable download and the
    prepared arrays are verified by their fingerprints, so it is machine-local and not a DVC parameter.
    """
    return f"SMOOTHNET_{name.upper()}_MIRROR"


class PrepareError(ValueError):
    """The dataset cannot be prepared from the given source or settings; the message says what to set."""


class FingerprintWarning(UserWarning):
    """The prepared data is not the official set (a subset, another version, or a damaged copy).

    CIFAR-10: its fingerprints differ from the known ones; ImageNette (no known fingerprint): its split
    sizes differ from imagenette2's 9,469 / 3,925.
    """


@dataclass
class _Official:
    """The two official splits of a dataset, decoded, with where they came from."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    digests: dict[str, list[str]]
    source: dict[str, Any]


def prepare_dataset(
    name: str,
    source: str,
    out_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    image_size: int | None = None,
    raw_dir: str | os.PathLike = "data/raw",
    mirror: str | None = None,
    archive: ArchiveSpec | None = None,
    workers: int | None = None,
    progress: bool = True,
    allow_duplicates: bool = False,
) -> dict[str, Any]:
    """Prepare ``name`` ("cifar10" or "imagenette") from ``source`` into ``out_dir``; return the manifest.

    ``source`` is ``"download"`` (the official archive, fetched into ``raw_dir`` and checksum-verified),
    a path to an image-folder mirror (``<split>/<class>/<file>``), to the downloaded archive, or (CIFAR-10)
    to an extracted ``cifar-10-batches-py`` folder. ``mirror`` (a local copy, as any of those paths) is
    a fallback, used only when ``source`` is "download" and the host cannot be reached; a mirror that is
    absent is then named in the error beside the download. ``archive`` replaces the
    official URL and checksum (tests serve their own archives). ``image_size``: CIFAR-10 stays 32;
    ImageNette defaults to 224 = Resize(256) + CenterCrop(224) as the paper, other sizes scale both the
    same way. Data that is not the official set (fingerprint or split sizes) gets one
    :class:`FingerprintWarning` and is marked so in the manifest. Identical images are recorded in the
    manifest (``duplicates``); one image under two labels, or in both the training and the test split,
    is an error unless ``allow_duplicates`` (the official CIFAR-10 has neither).
    """
    spec = dataset_spec(name)
    params_key = f"data.{name}.source"
    image_size = _check_image_size(spec, image_size)
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0 < val_fraction < 1
    ):
        raise PrepareError(f"data.{name}.val_fraction must be a number in (0, 1), got {val_fraction!r}")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise PrepareError(f"data.{name}.split_seed must be an integer, got {split_seed!r}")
    if not isinstance(allow_duplicates, bool):
        raise PrepareError(f"data.{name}.allow_duplicates must be true or false, got {allow_duplicates!r}")
    archive = archive or spec.archive
    workers = default_workers() if workers is None else max(1, int(workers))
    out_dir = Path(out_dir)

    official = _load_official(
        spec,
        str(source),
        image_size=image_size,
        raw_dir=Path(raw_dir),
        archive=archive,
        params_key=params_key,
        mirror=None if mirror is None else str(mirror),
        workers=workers,
        progress=progress,
    )
    duplicates = _duplicates(official, f"data.{name}", allow_duplicates)
    fingerprints = {split: fingerprint(official.digests[split]) for split in ("train", "test")}
    official_counts = {split: len(official.labels[split]) for split in ("train", "test")}
    matches, counts_match = _check_official(spec, fingerprints, official_counts, official.source)

    train_idx, val_idx = train_val_split(
        official.digests["train"], official.labels["train"], val_fraction=val_fraction, seed=split_seed
    )
    test_idx = canonical_order(
        np.arange(len(official.labels["test"])), official.digests["test"], official.labels["test"]
    )
    picks = {"train": ("train", train_idx), "val": ("train", val_idx), "test": ("test", test_idx)}

    manifest: dict[str, Any] = {
        "format_version": MANIFEST_VERSION,
        "dataset": name,
        "classes": list(spec.classes),
        "class_descriptions": list(spec.class_descriptions) or None,
        "num_classes": len(spec.classes),
        "source": official.source,
        "image_size": image_size,
        "transform": (
            "none (stored as in the source, 32x32)"
            if spec.fixed_image_size
            else f"RGB, Resize({resize_size(image_size)}) bilinear antialiased, CenterCrop({image_size})"
        ),
        "split": {
            "seed": split_seed,
            "val_fraction": val_fraction,
            "method": (
                "per class, the round(n * val_fraction) images of the official training split with the "
                "lowest sha256('<seed>:<image digest>'); arrays sorted by image digest"
            ),
            "test_is": f"the official {spec.test_split!r} split",
        },
        "counts": {},
        "fingerprint": fingerprints,
        "fingerprint_definition": FINGERPRINT_DEFINITION,
        "official_fingerprint": spec.official_fingerprint,
        "fingerprint_matches_official": matches,
        "official_counts": spec.official_counts,
        "official_counts_match": counts_match,
        "split_fingerprint": {},
        "duplicates": duplicates,
        "normalisation": {
            "mean": list(spec.mean),
            "std": list(spec.std),
            "source": spec.normalisation_source,
        },
        "files": {},
    }
    for split, (origin, idx) in picks.items():
        labels = official.labels[origin][idx]
        per_class = np.bincount(labels, minlength=len(spec.classes))
        manifest["counts"][split] = {
            "total": int(len(idx)),
            "per_class": {cls: int(n) for cls, n in zip(spec.classes, per_class, strict=True)},
        }
        manifest["split_fingerprint"][split] = fingerprint(official.digests[origin][i] for i in idx)
    _write_atomically(out_dir, _arrays(official, picks), manifest)
    log.info("prepared %s into %s: %s", name, out_dir, {s: manifest["counts"][s]["total"] for s in SPLITS})
    return manifest


def _duplicates(official: _Official, key: str, allow: bool) -> dict[str, Any]:
    """Identical images (equal sha256 of their pixels): within a split and class (recorded), under two
    labels or in both train and test (errors unless ``allow``: a test image seen in training, or one
    image taught as two classes, biases every result)."""
    where: dict[str, dict[str, set[int]]] = {}
    counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    for split in ("train", "test"):
        for digest, label in zip(official.digests[split], official.labels[split].tolist(), strict=True):
            where.setdefault(digest, {}).setdefault(split, set()).add(int(label))
            counts[split][digest] = counts[split].get(digest, 0) + 1
    repeated = sorted(d for split in counts for d, n in counts[split].items() if n > 1)
    conflicts = sorted(d for d, s in where.items() if len(set().union(*s.values())) > 1)
    shared = sorted(d for d, s in where.items() if len(s) == 2)
    summary = {
        "repeated_within_a_split": repeated,
        "label_conflicts": conflicts,
        "train_test_shared": shared,
        "allowed": allow,
    }
    problems = []
    if conflicts:
        problems.append(
            f"{len(conflicts)} image(s) carry two different labels (first digest {conflicts[0][:12]})"
        )
    if shared:
        problems.append(
            f"{len(shared)} image(s) are in both the training and the test split "
            f"(first digest {shared[0][:12]})"
        )
    if problems and not allow:
        raise PrepareError(
            f"{official.source.get('path') or official.source.get('url')}: {'; '.join(problems)}. Remove "
            f"them from the source, or set {key}.allow_duplicates: true to prepare anyway (recorded in the "
            "manifest)"
        )
    if repeated or problems:
        log.warning(
            "%s: duplicate images: %d repeated, %d label conflicts, %d train/test shared",
            key,
            len(repeated),
            len(conflicts),
            len(shared),
        )
    return summary


def _check_image_size(spec: DatasetSpec, image_size: int | None) -> int:
    key = f"data.{spec.name}.image_size"
    if image_size is None:
        return spec.default_image_size
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise PrepareError(f"{key} must be an integer, got {image_size!r}")
    if spec.fixed_image_size and image_size != spec.default_image_size:
        raise PrepareError(
            f"{key} = {image_size}: {spec.name} is kept at its native {spec.default_image_size}x"
            f"{spec.default_image_size} (as the paper); set it to {spec.default_image_size} or leave it out"
        )
    if image_size < 8:
        raise PrepareError(f"{key} = {image_size}: too small (at least 8)")
    return image_size


def _load_official(
    spec: DatasetSpec,
    source: str,
    *,
    image_size: int,
    raw_dir: Path,
    archive: ArchiveSpec,
    params_key: str,
    mirror: str | None,
    workers: int,
    progress: bool,
) -> _Official:
    common = dict(image_size=image_size, raw_dir=raw_dir, archive=archive, workers=workers, progress=progress)
    if source == "download":
        mirror_key = f"data.{spec.name}.mirror"
        try:
            path = fetch_archive(
                archive, raw_dir, params_key=f"{mirror_key} (or {params_key})", progress=progress
            )
        except HostUnreachableError as exc:
            if mirror is None or not Path(mirror).expanduser().exists():
                absent = (
                    "" if mirror is None else f", and the mirror {mirror_key} = {mirror!r} does not exist"
                )
                reason = getattr(exc.__cause__, "reason", exc.__cause__)
                raise HostUnreachableError(
                    f"cannot download {spec.name} from {archive.url} ({reason}){absent}. Connect to the "
                    f"network, or point the mirror at a local copy (an image-folder mirror "
                    f"<split>/<class>/<file>, or the downloaded {archive.filename}): set {mirror_key} "
                    f"(or {params_key}) in params.yaml, or the environment variable "
                    f"{mirror_env_var(spec.name)}"
                ) from exc
            log.warning(
                "cannot reach %s; using the local copy %s = %s instead", archive.url, mirror_key, mirror
            )
            official = _load_official(spec, mirror, params_key=mirror_key, mirror=None, **common)
            official.source["download_unreachable"] = archive.url
            return official
        info = {"kind": "download", "path": str(path), "url": archive.url}
        return _from_archive(spec, path, info, archive, image_size, raw_dir, workers, progress)
    path = Path(source).expanduser()
    if not path.exists():
        raise PrepareError(
            f"{params_key} = {source!r}: no such file or folder. Set it to 'download' (official archive), "
            f"to an image-folder mirror (<split>/<class>/<file>) or to the downloaded {archive.filename}."
        )
    if path.is_file():
        actual = md5_file(path)
        if actual != archive.md5:
            raise PrepareError(
                f"{params_key} = {source!r}: md5 {actual} is not the published {archive.md5} of "
                f"{archive.filename}; this is not the official archive (point {params_key} at a verified "
                f"copy, at an image-folder mirror, or set it to 'download'). The file was left in place."
            )
        info = {"kind": "archive", "path": source, "url": archive.url}
        return _from_archive(spec, path, info, archive, image_size, raw_dir, workers, progress)
    if spec.name == "cifar10" and is_cifar_folder(path):
        splits = read_cifar_folder(path)
        return _from_arrays(splits, {"kind": "extracted", "path": source, "url": None})
    root = _split_root(path, spec)
    if root is None:
        raise PrepareError(
            f"{params_key} = {source!r}: expected an image-folder mirror with the folders "
            f"{spec.train_split}/ and {spec.test_split}/ (each <class>/<file>); it holds: "
            f"{', '.join(sorted(p.name + '/' for p in path.iterdir() if p.is_dir())) or 'no folders'}"
        )
    info = {"kind": "mirror", "path": source, "url": None}
    return _from_mirror(spec, root, info, image_size, workers, progress)


def _from_archive(
    spec: DatasetSpec,
    path: Path,
    info: dict[str, Any],
    archive: ArchiveSpec,
    image_size: int,
    raw_dir: Path,
    workers: int,
    progress: bool,
) -> _Official:
    info = {**info, "archive_md5": archive.md5, "archive_sha256": sha256_file(path)}
    if spec.name == "cifar10":
        return _from_arrays(read_cifar_archive(path), info)
    dest = raw_dir / f"{archive.filename}.extracted"
    marker = dest / ".extracted-from-md5"
    if not _extraction_intact(dest, marker, archive.md5):
        log.info("extracting %s into %s", path, dest)
        safe_extract(path, dest)
        atomic_write_text(marker, canonical_json({"archive_md5": archive.md5, "files": _file_digests(dest)}))
    root = _split_root(dest, spec)
    if root is None:
        raise PrepareError(f"{path}: the archive holds no {spec.train_split}/ and {spec.test_split}/ folders")
    return _from_mirror(spec, root, info, image_size, workers, progress)


def _file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (the extraction marker itself excluded)."""
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".extracted-from-md5"
    }


def _extraction_intact(dest: Path, marker: Path, archive_md5: str) -> bool:
    """A reused extracted folder must hold exactly the files extracted from this archive, unchanged
    (an image edited, added or removed after extraction means extracting again)."""
    if not marker.is_file():
        return False
    try:
        recorded = loads_json(marker.read_text(encoding="utf-8"))
    except ValueError:
        recorded = None  # an old plain-text marker (md5 only): not verifiable, extract again
    if not isinstance(recorded, dict) or recorded.get("archive_md5") != archive_md5:
        return False
    if recorded.get("files") != _file_digests(dest):
        log.warning("%s: files changed since extraction; extracting the archive again", dest)
        return False
    return True


def _from_arrays(splits: dict[str, tuple[np.ndarray, np.ndarray]], info: dict[str, Any]) -> _Official:
    return _Official(
        images={s: x for s, (x, _) in splits.items()},
        labels={s: y for s, (_, y) in splits.items()},
        digests={s: image_digests(x) for s, (x, _) in splits.items()},
        source=info,
    )


def _split_root(path: Path, spec: DatasetSpec) -> Path | None:
    """``path`` or its only sub-folder, whichever holds the train and test split folders."""
    if (path / spec.train_split).is_dir() and (path / spec.test_split).is_dir():
        return path
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if (
        len(subdirs) == 1
        and (subdirs[0] / spec.train_split).is_dir()
        and (subdirs[0] / spec.test_split).is_dir()
    ):
        return subdirs[0]
    return None


def _list_split(folder: Path, spec: DatasetSpec) -> tuple[list[str], np.ndarray]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    missing = sorted(set(spec.classes) - set(classes))
    extra = sorted(set(classes) - set(spec.classes))
    if missing or extra:
        raise PrepareError(
            f"{folder}: class folders must be exactly the {len(spec.classes)} classes of {spec.name} "
            f"({', '.join(spec.classes)}); missing: {', '.join(missing) or 'none'}, "
            f"unexpected: {', '.join(extra) or 'none'}"
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(spec.classes):
        files = sorted(f for f in (folder / cls).iterdir() if f.is_file() and not f.name.startswith("."))
        if not files:
            raise PrepareError(f"{folder / cls}: no image files")
        paths.extend(str(f) for f in files)
        labels.extend([label] * len(files))
    return paths, np.asarray(labels, dtype=np.int64)


def _from_mirror(
    spec: DatasetSpec, root: Path, info: dict[str, Any], image_size: int, workers: int, progress: bool
) -> _Official:
    listed = {
        "train": _list_split(root / spec.train_split, spec),
        "test": _list_split(root / spec.test_split, spec),
    }
    resize = None if spec.fixed_image_size else resize_size(image_size)
    images, digests = {}, {}
    for split, (paths, _) in listed.items():
        images[split], digests[split] = decode_files(
            paths, resize, image_size, workers=workers, progress=progress, desc=f"decode {spec.name} {split}"
        )
    return _Official(
        images=images, labels={s: y for s, (_, y) in listed.items()}, digests=digests, source=info
    )


def _check_official(
    spec: DatasetSpec, fingerprints: dict[str, str], counts: dict[str, int], source: dict[str, Any]
) -> tuple[bool | None, bool]:
    """(fingerprints match the official ones or None if unknown, counts match); one warning if not."""
    counts_match = spec.official_counts is None or counts == spec.official_counts
    if spec.official_fingerprint is None:
        matches = None
        if counts_match:
            return None, True
        differing = f"its split sizes {counts} are not the official {spec.official_counts}"
    else:
        matches = fingerprints == spec.official_fingerprint
        if matches:
            log.info("%s: fingerprints match the official set", spec.name)
            return True, counts_match
        split_names = [s for s in ("train", "test") if fingerprints[s] != spec.official_fingerprint[s]]
        differing = f"its fingerprint ({', '.join(split_names)}) differs from the known one"
    message = (
        f"{spec.name} from {source.get('path') or source.get('url')} is NOT the official set: {differing} "
        f"(a subset such as the embedded sample, another version, or a damaged copy); results on it are "
        f"not comparable with the paper. The manifest records official_counts_match: {counts_match}"
        f"{'' if matches is None else ', fingerprint_matches_official: false'}."
    )
    log.warning(message)
    warnings.warn(message, FingerprintWarning, stacklevel=3)
    return matches, counts_match


def _arrays(
    official: _Official, picks: dict[str, tuple[str, np.ndarray]]
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(file stem, source array, indices)`` per output array; drops each official split once written."""
    remaining = {origin: sum(o == origin for o, _ in picks.values()) for origin, _ in picks.values()}
    for split, (origin, idx) in picks.items():
        yield f"{split}_labels", official.labels[origin], idx
        yield f"{split}_images", official.images[origin], idx
        remaining[origin] -= 1
        if not remaining[origin]:
            del official.images[origin]  # keeps peak memory near one copy of the decoded images


def _save_gathered(path: Path, source: np.ndarray, idx: np.ndarray, chunk_bytes: int = 32 << 20) -> None:
    """``np.save(path, source[idx])`` (same bytes) without materialising ``source[idx]`` in memory."""
    header = {"descr": np.lib.format.dtype_to_descr(source.dtype), "fortran_order": False}
    rows = max(1, chunk_bytes // max(1, source[:1].nbytes))
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {**header, "shape": (len(idx), *source.shape[1:])})
        for start in range(0, len(idx), rows):
            handle.write(np.ascontiguousarray(source[idx[start : start + rows]]).data)


def _write_atomically(
    out_dir: Path, arrays: Iterator[tuple[str, np.ndarray, np.ndarray]], manifest: dict[str, Any]
) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for orphan in [
        *out_dir.parent.glob(f".{out_dir.name}.*.preparing"),
        *out_dir.parent.glob(f".{out_dir.name}.old-*"),
    ]:  # left by a killed preparation (DVC runs one prepare stage per dataset at a time)
        shutil.rmtree(orphan, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".preparing"))
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o777 & ~umask)
        for key, source, idx in arrays:
            path = tmp / f"{key}.npy"
            shape = (len(idx), *source.shape[1:])
            if source.ndim == 1:
                np.save(path, source[idx].astype(np.int64), allow_pickle=False)
            else:
                _save_gathered(path, source, idx)
            dtype = "int64" if source.ndim == 1 else str(source.dtype)
            manifest["files"][f"{key}.npy"] = {
                "sha256": sha256_file(path),
                "shape": list(shape),
                "dtype": dtype,
            }
        atomic_write_json(tmp / "manifest.json", manifest)
        os.chmod(tmp / "manifest.json", 0o666 & ~umask)
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
