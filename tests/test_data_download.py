"""The official-download path, run for real against archives served from 127.0.0.1.

The archives are built here in the official formats (smoothnet.data.synthetic); the URL and checksum
are injected, everything else (HTTP transfer, resume, MD5 check, extraction, decoding) is the real code.
"""

from __future__ import annotations

import hashlib
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from smoothnet.data.archives import UnsafeArchiveError, safe_extract
from smoothnet.data.catalog import ArchiveSpec
from smoothnet.data.download import ChecksumError, DownloadError, fetch_archive
from smoothnet.data.prepare import FingerprintWarning, PrepareError, prepare_dataset
from smoothnet.data.synthetic import imagenette_members, random_images, write_cifar_archive, write_tar


class _Server:
    """Serves ``files`` (name -> bytes) with HTTP Range support; can cut the next transfers short."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate_next = 0  # how many upcoming responses stop halfway
        self.honour_range = True
        self.requests: list[dict[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append({"path": name, "range": self.headers.get("Range")})
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                start = 0
                header = self.headers.get("Range")
                if header and server.honour_range:
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.truncate_next > 0:
                    server.truncate_next -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.close()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def cifar_archive(tmp_path_factory) -> tuple[bytes, dict]:
    """A tiny cifar-10-python.tar.gz (10 classes x 10 train, x 3 test) and its content."""
    train_x, train_y = random_images(10, seed=1)
    test_x, test_y = random_images(3, seed=2)
    perm = np.random.default_rng(3).permutation(len(train_x))  # the official batches are not class-sorted
    path = tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz"
    write_cifar_archive(path, train_x[perm], train_y[perm], test_x, test_y)
    return path.read_bytes(), {"train": (train_x, train_y), "test": (test_x, test_y)}


def _serve_cifar(server: _Server, data: bytes, md5: str | None = None) -> ArchiveSpec:
    server.files["cifar-10-python.tar.gz"] = data
    return ArchiveSpec(server.url("cifar-10-python.tar.gz"), md5 or _md5(data), "cifar-10-python.tar.gz")


def test_download_prepare_succeeds_and_verifies(server, cifar_archive, tmp_path):
    data, content = cifar_archive
    spec = _serve_cifar(server, data)
    with pytest.warns(FingerprintWarning):  # a tiny archive is not the official CIFAR-10
        manifest = prepare_dataset(
            "cifar10", "download", tmp_path / "out", raw_dir=tmp_path / "raw", archive=spec, progress=False
        )
    assert (tmp_path / "raw" / "cifar-10-python.tar.gz").read_bytes() == data
    assert not list((tmp_path / "raw").glob("*.part"))
    assert manifest["source"]["kind"] == "download"
    assert manifest["source"]["url"] == spec.url
    assert manifest["source"]["archive_md5"] == _md5(data)
    assert manifest["source"]["archive_sha256"] == hashlib.sha256(data).hexdigest()
    assert [manifest["counts"][s]["total"] for s in ("train", "val", "test")] == [80, 20, 30]
    assert manifest["fingerprint_matches_official"] is False
    # The batches' planar rows were read back as the images that were written.
    stored = np.concatenate([np.load(tmp_path / "out" / f"{s}_images.npy") for s in ("train", "val")])
    written = content["train"][0]
    assert sorted(x.tobytes() for x in stored) == sorted(x.tobytes() for x in written)
    # A second run reuses the verified archive without a new request.
    before = len(server.requests)
    with pytest.warns(FingerprintWarning):
        prepare_dataset(
            "cifar10", "download", tmp_path / "out", raw_dir=tmp_path / "raw", archive=spec, progress=False
        )
    assert len(server.requests) == before


def test_checksum_mismatch_deletes_the_file_and_says_so(server, cifar_archive, tmp_path):
    data, _ = cifar_archive
    spec = _serve_cifar(server, data, md5="0" * 32)
    with pytest.raises(ChecksumError, match="deleted") as info:
        prepare_dataset(
            "cifar10", "download", tmp_path / "out", raw_dir=tmp_path / "raw", archive=spec, progress=False
        )
    assert "0" * 32 in str(info.value) and _md5(data) in str(info.value)
    assert list((tmp_path / "raw").iterdir()) == []
    assert not (tmp_path / "out").exists()


def test_existing_bad_file_is_replaced(server, cifar_archive, tmp_path):
    data, _ = cifar_archive
    spec = _serve_cifar(server, data)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / spec.filename).write_bytes(data[:100])
    assert fetch_archive(spec, raw, params_key="data.cifar10.source", progress=False).read_bytes() == data


def test_interrupted_transfer_errors_then_rerun_resumes(server, cifar_archive, tmp_path):
    data, _ = cifar_archive
    spec = _serve_cifar(server, data)
    raw = tmp_path / "raw"
    server.truncate_next = 1
    with pytest.raises(DownloadError, match="interrupted"):
        fetch_archive(spec, raw, params_key="data.cifar10.source", progress=False)
    part = raw / (spec.filename + ".part")
    assert not (raw / spec.filename).exists()
    assert 0 < part.stat().st_size < len(data)
    path = fetch_archive(spec, raw, params_key="data.cifar10.source", progress=False)
    assert path.read_bytes() == data and not part.exists()
    assert server.requests[-1]["range"] == f"bytes={len(data) // 2}-"


def test_interrupted_transfer_restarts_when_server_ignores_range(server, cifar_archive, tmp_path):
    data, _ = cifar_archive
    spec = _serve_cifar(server, data)
    server.honour_range = False
    server.truncate_next = 1
    with pytest.raises(DownloadError, match="interrupted"):
        fetch_archive(spec, tmp_path, params_key="data.cifar10.source", progress=False)
    assert (
        fetch_archive(spec, tmp_path, params_key="data.cifar10.source", progress=False).read_bytes() == data
    )


def test_offline_error_names_the_params_key(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = ArchiveSpec(f"http://127.0.0.1:{port}/imagenette2.tgz", "0" * 32, "imagenette2.tgz")
    with pytest.raises(DownloadError, match=r"data\.imagenette\.source"):
        prepare_dataset(
            "imagenette", "download", tmp_path / "out", raw_dir=tmp_path, archive=spec, progress=False
        )
    assert not (tmp_path / "out").exists()


def test_http_error_is_reported(server, tmp_path):
    spec = ArchiveSpec(server.url("missing.tgz"), "0" * 32, "missing.tgz")
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_archive(spec, tmp_path, params_key="data.imagenette.source", progress=False)


def test_imagenette_download_extracts_and_prepares(server, tmp_path):
    data = (write_tar(tmp_path / "src.tgz", imagenette_members(3, 2))).read_bytes()
    server.files["imagenette2.tgz"] = data
    spec = ArchiveSpec(server.url("imagenette2.tgz"), _md5(data), "imagenette2.tgz")
    with pytest.warns(FingerprintWarning, match="split sizes"):  # 30 / 20 images, not 9,469 / 3,925
        manifest = prepare_dataset(
            "imagenette",
            "download",
            tmp_path / "out",
            image_size=32,
            raw_dir=tmp_path / "raw",
            archive=spec,
            progress=False,
        )
    # 3 train images per class: round(0.6) = 1 to validation; the official val split is the test set.
    assert [manifest["counts"][s]["total"] for s in ("train", "val", "test")] == [20, 10, 20]
    assert manifest["fingerprint_matches_official"] is None
    assert manifest["official_counts_match"] is False
    images = np.load(tmp_path / "out" / "test_images.npy")
    assert images.shape == (20, 3, 32, 32) and images.dtype == np.uint8
    # The extracted copy is reused by a second preparation from the archive itself.
    marker = tmp_path / "raw" / "imagenette2.tgz.extracted" / ".extracted-from-md5"
    stamp = marker.stat().st_mtime_ns
    with pytest.warns(FingerprintWarning):
        again = prepare_dataset(
            "imagenette",
            str(tmp_path / "raw" / "imagenette2.tgz"),
            tmp_path / "out2",
            image_size=32,
            raw_dir=tmp_path / "raw",
            archive=spec,
            progress=False,
        )
    assert again["fingerprint"] == manifest["fingerprint"]
    assert again["split_fingerprint"] == manifest["split_fingerprint"]
    assert again["source"]["kind"] == "archive"
    assert marker.stat().st_mtime_ns == stamp


def test_local_archive_with_wrong_checksum_is_refused_and_kept(tmp_path):
    path = write_tar(tmp_path / "imagenette2.tgz", imagenette_members(1, 1))
    with pytest.raises(PrepareError, match="not the official archive"):
        prepare_dataset("imagenette", str(path), tmp_path / "out", raw_dir=tmp_path / "raw", progress=False)
    assert path.exists() and not (tmp_path / "out").exists()


def test_safe_extraction_refuses_parent_paths(tmp_path):
    members = imagenette_members(1, 1)
    members["imagenette2/../../escaped.txt"] = b"owned"
    archive = write_tar(tmp_path / "evil.tgz", members)
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(UnsafeArchiveError, match="escaped.txt"):
        safe_extract(archive, dest)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "deep" / "escaped.txt").exists()
    assert not dest.exists() and list((tmp_path / "deep").iterdir()) == []


def test_safe_extraction_refuses_links_out_of_the_folder(tmp_path):
    archive = tmp_path / "link.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        link = tarfile.TarInfo("imagenette2/passwd")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(UnsafeArchiveError, match="passwd"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_unsafe_archive_through_prepare_leaves_no_output(server, tmp_path):
    members = imagenette_members(1, 1)
    members["../outside.JPEG"] = b"x"
    data = write_tar(tmp_path / "src.tgz", members).read_bytes()
    server.files["imagenette2.tgz"] = data
    spec = ArchiveSpec(server.url("imagenette2.tgz"), _md5(data), "imagenette2.tgz")
    with pytest.raises(UnsafeArchiveError):
        prepare_dataset(
            "imagenette", "download", tmp_path / "out", raw_dir=tmp_path / "raw", archive=spec, progress=False
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / "outside.JPEG").exists()
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["imagenette2.tgz"]


def test_official_checksums_are_the_published_ones():
    from smoothnet.data.catalog import CIFAR10, IMAGENETTE

    assert CIFAR10.archive.md5 == "c58f30108f718f92721af3b95e74349a"
    assert IMAGENETTE.archive.url == "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz"
    tv = pytest.importorskip("torchvision.datasets")
    assert tv.Imagenette._ARCHIVES["full"] == (IMAGENETTE.archive.url, IMAGENETTE.archive.md5)
    assert (tv.CIFAR10.url, tv.CIFAR10.tgz_md5) == (CIFAR10.archive.url, CIFAR10.archive.md5)
