"""Download an official archive: resumable, checksum-verified, never leaves a bad file behind.

torchvision's ``download_url`` is not used because it writes straight into the final file name (an
interrupted transfer looks like a finished one), keeps a file that fails its checksum ("File not found
or corrupted.") and retries an https URL over plain http. Here the transfer goes into ``<name>.part``,
continues from where it stopped on a rerun (HTTP Range), is checked against the published MD5 (the same
checksums torchvision pins) and only then renamed to its final name; a mismatch deletes the file.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from smoothnet.data.catalog import ArchiveSpec

log = logging.getLogger(__name__)

USER_AGENT = "smoothnet-data/1 (+torchvision-compatible)"
CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """The archive could not be fetched (offline, HTTP error, interrupted transfer)."""


class HostUnreachableError(DownloadError):
    """The download host cannot be reached (no network, DNS failure, refused connection)."""


class ChecksumError(DownloadError):
    """A file does not have the published checksum."""


def md5_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex MD5 of a file (as torchvision's ``calculate_md5``; MD5 is the checksum the datasets publish)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_archive(
    spec: ArchiveSpec,
    raw_dir: str | os.PathLike,
    *,
    params_key: str,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Return ``raw_dir/<spec.filename>`` with the published MD5, downloading it if needed.

    A file already there with the right checksum is reused; one with a wrong checksum is deleted and
    downloaded again. An interrupted transfer raises :class:`DownloadError` and keeps ``<name>.part``,
    which the next call resumes. ``params_key`` (e.g. ``data.cifar10.mirror``) is named in the
    :class:`HostUnreachableError` raised when the host cannot be reached, so an offline user knows
    where to point at a local copy.
    """
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    dest = raw_dir / spec.filename
    if dest.exists():
        actual = md5_file(dest)
        if actual == spec.md5:
            log.info("%s: present, md5 verified", dest)
            return dest
        dest.unlink()
        log.warning(
            "%s: md5 %s is not the published %s; deleted it, downloading again", dest, actual, spec.md5
        )
    part = dest.with_name(dest.name + ".part")
    _transfer(
        spec.url, part, params_key=params_key, filename=spec.filename, progress=progress, timeout=timeout
    )
    actual = md5_file(part)
    if actual != spec.md5:
        part.unlink()
        raise ChecksumError(
            f"{spec.url}: the downloaded file has md5 {actual}, not the published {spec.md5}; "
            f"the bad file was deleted. Rerun to download it again; if this repeats, the host serves a "
            f"different file and a verified local copy should be used instead (set {params_key})."
        )
    os.replace(part, dest)
    log.info("%s: downloaded, md5 verified", dest)
    return dest


def _transfer(
    url: str, part: Path, *, params_key: str, filename: str, progress: bool, timeout: float
) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Range past the end: the partial file is already complete (or too long); the checksum decides.
            return
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HostUnreachableError(
            f"cannot reach {url} ({reason}). Without network access, set {params_key} in params.yaml to "
            f"a local copy: an image-folder mirror (<split>/<class>/<file>) or the already downloaded "
            f"{filename}."
        ) from exc
    with response:
        if offset and response.status == 206:
            mode = "ab"
            log.info("%s: resuming at byte %d", part, offset)
        else:
            mode, offset = "wb", 0
        total = offset + response.length if response.length is not None else None
        received = offset
        try:
            with (
                open(part, mode) as handle,
                tqdm(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    desc=f"download {filename}",
                    disable=not progress,
                ) as bar,
            ):
                while chunk := response.read(CHUNK):
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (http.client.HTTPException, OSError) as exc:
            raise DownloadError(
                f"{url}: transfer interrupted after {received} bytes ({exc}); the partial file {part} is "
                f"kept and a rerun resumes it."
            ) from exc
    if total is not None and received < total:
        raise DownloadError(
            f"{url}: transfer interrupted after {received} of {total} bytes; the partial file {part} is "
            f"kept and a rerun resumes it."
        )
