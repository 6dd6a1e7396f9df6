"""A fresh clone, offline, with no dataset copy beside it: what a new user meets first.

``dvc status`` and ``smoothnet plan`` list exactly the stages with no stored result (stored runs are not
retrained because their data or checkpoints are not on this machine); ``smoothnet audit`` leaves the
tracked tree clean; ``dvc repro prepare@cifar10`` fails
with one message naming the download and the mirror settings, and succeeds against an HTTP host on
127.0.0.1. "Offline" is an unreachable proxy for every host but 127.0.0.1, so the test never downloads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from smoothnet.data.synthetic import random_images, write_cifar_archive

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (BIN / "dvc").exists() or not (ROOT / ".git").exists(),
    reason="needs git, the dvc of this environment and a git checkout",
)


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A clone of the committed tree; returns (path, environment for its commands)."""
    where = tmp_path_factory.mktemp("fresh") / "clone"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(where)], check=True)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(where),
        "http_proxy": "http://127.0.0.1:9",  # nothing listens on port 9: every other host is unreachable
        "https_proxy": "http://127.0.0.1:9",
        "no_proxy": "127.0.0.1",
        "OMP_NUM_THREADS": "1",
    }
    for name in ("SMOOTHNET_CIFAR10_MIRROR", "SMOOTHNET_IMAGENETTE_MIRROR", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(name, None)
    return where, env


def _run(args, clone, **kwargs):
    where, env = clone
    env = {**env, **kwargs.pop("env", {})}
    return subprocess.run(args, cwd=where, env=env, capture_output=True, text=True, timeout=120, **kwargs)


def _stored_and_unstored(where: Path) -> tuple[set[str], set[str]]:
    """Stages of dvc.yaml with an entry in dvc.lock (stored), and those without."""
    params = yaml.safe_load((where / "params.yaml").read_text())
    stages = {f"prepare@{d}" for d in params["data"]} | {f"train@{r}" for r in params["runs"]}
    stages |= set(yaml.safe_load((where / "dvc.yaml").read_text())["stages"]) - {"prepare", "train"}
    stored = set(yaml.safe_load((where / "dvc.lock").read_text())["stages"]) & stages
    for stage in stored:
        if stage.startswith("train@"):
            assert (where / "runs" / stage.split("@", 1)[1] / "record.json").is_file(), stage
    return stored, stages - stored


def test_dvc_status_lists_the_unstored_stages_and_only_missing_data_for_the_stored(clone):
    where, _ = clone
    done = _run([str(BIN / "dvc"), "status", "--json", "dvc.yaml"], clone)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    stored, unstored = _stored_and_unstored(where)
    assert unstored and stored
    assert unstored <= set(status)
    for stage in set(status) & stored:
        changes = {
            path: why for entry in status[stage] for group in entry.values() for path, why in group.items()
        }
        assert all(path.startswith("data/prepared/") for path in changes), (stage, changes)
        assert set(changes.values()) <= {"deleted", "not in cache"}, (stage, changes)


def test_plan_lists_exactly_the_unstored_stages(clone):
    where, _ = clone
    done = _run([sys.executable, "-m", "smoothnet.cli", "plan"], clone)
    assert done.returncode == 1, done.stderr
    stored, unstored = _stored_and_unstored(where)
    lines = done.stdout.splitlines()
    listed = {line.split()[1] for line in lines if line.startswith("run ")}
    assert listed == unstored
    assert {line.split()[1] for line in lines if line.startswith("then ")} == {"report", "audit"}
    assert {line.split()[2] for line in lines if line.startswith("no data ")} <= stored


def test_audit_leaves_the_tracked_tree_clean(clone):
    done = _run([sys.executable, "-m", "smoothnet.cli", "audit"], clone)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped" in done.stdout.splitlines()[0]
    status = _run(["git", "status", "--porcelain"], clone)
    assert status.stdout == "", status.stdout


def test_prepare_offline_names_the_download_and_the_mirror_then_succeeds_from_a_local_host(clone, tmp_path):
    where, _ = clone
    dvc = str(BIN / "dvc")
    offline = _run([dvc, "repro", "prepare@cifar10"], clone)
    assert offline.returncode != 0
    message = offline.stdout + offline.stderr
    assert "cannot download cifar10 from https://www.cs.toronto.edu/" in message, message
    assert "data.cifar10.mirror" in message and "SMOOTHNET_CIFAR10_MIRROR" in message, message
    assert "Traceback" not in message
    assert not (where / "data" / "prepared" / "cifar10").exists()

    served = tmp_path / "served"
    served.mkdir()
    train, test = random_images(6, seed=1), random_images(2, seed=2)
    archive = write_cifar_archive(served / "cifar-10-python.tar.gz", *train, *test)
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(ROOT / "tests" / "support" / "fake_cifar_host.py", site / "sitecustomize.py")
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        online = _run(
            [dvc, "repro", "prepare@cifar10"],
            clone,
            env={
                "PYTHONPATH": f"{site}{os.pathsep}{where}",
                "SMOOTHNET_TEST_CIFAR10_URL": f"http://127.0.0.1:{server.server_address[1]}/{archive.name}",
                "SMOOTHNET_TEST_CIFAR10_MD5": hashlib.md5(archive.read_bytes()).hexdigest(),
            },
        )
    finally:
        server.shutdown()
    assert online.returncode == 0, online.stdout + online.stderr
    manifest = json.loads((where / "data" / "prepared" / "cifar10" / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "download" and manifest["source"]["url"].startswith(
        "http://127.0.0.1"
    )
    assert manifest["counts"]["test"]["total"] == 20
