"""Preparation: order-independent deterministic splits, decoding, manifest, atomic output, loading, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from smoothnet.data.catalog import CIFAR10, IMAGENETTE, resize_size
from smoothnet.data.images import CorruptImageError, resize_center_crop
from smoothnet.data.loading import PreparedDataError, load_prepared
from smoothnet.data.prepare import FingerprintWarning, PrepareError, prepare_dataset
from smoothnet.data.splits import fingerprint, image_digests, train_val_split
from smoothnet.data.synthetic import (
    imagenette_members,
    random_images,
    write_cifar_archive,
    write_cifar_mirror,
)
from smoothnet.io import sha256_file

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
ARRAYS = [f"{s}_{k}.npy" for s in ("train", "val", "test") for k in ("images", "labels")]


def _prepare(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FingerprintWarning)
        return prepare_dataset(*args, progress=False, workers=1, **kwargs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The same tiny CIFAR-format data as two mirrors with different file orders and as an archive."""
    root = tmp_path_factory.mktemp("tiny")
    train = random_images(20, seed=11)  # 200 images, 20 per class
    test = random_images(4, seed=12)
    splits = {"train": train, "test": test}
    write_cifar_mirror(root / "mirror_a", splits, order_seed=1)
    write_cifar_mirror(root / "mirror_b", splits, order_seed=2)
    perm = np.random.default_rng(5).permutation(len(train[0]))
    archive = write_cifar_archive(root / "cifar-10-python.tar.gz", train[0][perm], train[1][perm], *test)
    return {"root": root, "train": train, "test": test, "archive": archive}


def _archive_spec(path: Path):
    from smoothnet.data.catalog import ArchiveSpec

    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    return ArchiveSpec(url="http://example.invalid/cifar-10-python.tar.gz", md5=md5, filename=path.name)


def test_split_is_identical_from_archive_and_mirrors_in_other_orders(tiny, tmp_path):
    root = tiny["root"]
    outs = {}
    for name, source in (("a", root / "mirror_a"), ("b", root / "mirror_b"), ("archive", tiny["archive"])):
        kwargs = {"archive": _archive_spec(tiny["archive"])} if name == "archive" else {}
        outs[name] = (_prepare("cifar10", str(source), tmp_path / name, **kwargs), tmp_path / name)
    # The mirrors list the files in different orders (file names are permutations of each other).
    order = {
        m: sorted(p.name for p in (root / m / "train" / "cat").iterdir()) for m in ("mirror_a", "mirror_b")
    }
    first_a = Image.open(root / "mirror_a" / "train" / "cat" / order["mirror_a"][0]).tobytes()
    first_b = Image.open(root / "mirror_b" / "train" / "cat" / order["mirror_b"][0]).tobytes()
    assert first_a != first_b
    reference = outs["a"][1]
    for name in ("b", "archive"):
        manifest, folder = outs[name]
        assert manifest["split_fingerprint"] == outs["a"][0]["split_fingerprint"]
        for array in ARRAYS:
            assert (folder / array).read_bytes() == (reference / array).read_bytes(), (name, array)
    assert outs["archive"][0]["source"]["kind"] == "archive"


def test_no_image_in_two_splits_and_counts_exact(tiny, tmp_path):
    manifest = _prepare("cifar10", str(tiny["root"] / "mirror_a"), tmp_path / "out", val_fraction=0.25)
    data = load_prepared(tmp_path / "out")
    digests = {}
    for split in ("train", "val", "test"):
        images, labels = data.split(split)
        digests[split] = set(image_digests(images.numpy()))
        assert len(digests[split]) == len(images)
        counts = np.bincount(labels.numpy(), minlength=10)
        assert counts.tolist() == [{"train": 15, "val": 5, "test": 4}[split]] * 10
        assert manifest["counts"][split]["per_class"] == dict.fromkeys(CIFAR10.classes, int(counts[0]))
    assert not digests["train"] & digests["val"] and not digests["train"] & digests["test"]
    assert not digests["val"] & digests["test"]
    # train + val is exactly the official training split, with its labels.
    written = {d: int(y) for d, y in zip(image_digests(tiny["train"][0]), tiny["train"][1], strict=True)}
    assert digests["train"] | digests["val"] == set(written)
    for split in ("train", "val"):
        images, labels = data.split(split)
        assert [written[d] for d in image_digests(images.numpy())] == labels.tolist()
    assert manifest["fingerprint"]["train"] == fingerprint(written)
    assert manifest["fingerprint"]["test"] == fingerprint(image_digests(tiny["test"][0]))


def test_seed_changes_the_split_but_not_the_counts(tiny, tmp_path):
    mirror = str(tiny["root"] / "mirror_a")
    m0 = _prepare("cifar10", mirror, tmp_path / "s0", split_seed=0)
    m1 = _prepare("cifar10", mirror, tmp_path / "s1", split_seed=1)
    assert m0["counts"] == m1["counts"]
    assert m0["split_fingerprint"]["val"] != m1["split_fingerprint"]["val"]
    assert m0["fingerprint"] == m1["fingerprint"]


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**31),
    dup=st.integers(0, 5),
    data=st.data(),
)
def test_split_property(n, fraction, seed, dup, data):
    labels = np.asarray(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    for i in range(min(dup, n - 1)):  # identical images (same digest, same class)
        labels[i + 1] = labels[0]
        digests[i + 1] = digests[0]
    train, val = train_val_split(digests, labels, val_fraction=fraction, seed=seed)
    assert sorted(train.tolist() + val.tolist()) == list(range(n))
    assert not {digests[i] for i in train} & {digests[i] for i in val}
    for cls in np.unique(labels):
        target = round(int((labels == cls).sum()) * fraction)
        got = int((labels[val] == cls).sum())
        assert target <= got <= target + dup
        if dup == 0:
            assert got == target
    perm = np.random.default_rng(seed % 1000).permutation(n)
    train_p, val_p = train_val_split(
        [digests[i] for i in perm], labels[perm], val_fraction=fraction, seed=seed
    )
    assert [digests[perm[i]] for i in val_p] == [digests[i] for i in val]


@pytest.mark.parametrize("size", [(320, 240), (240, 320), (500, 375), (224, 224), (97, 131)])
@pytest.mark.parametrize("crop", [224, 64])
def test_resize_crop_equals_torchvision(size, crop):
    from torchvision import transforms

    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ours = resize_center_crop(img, resize_size(crop), crop)
    ref = transforms.Compose([transforms.Resize(resize_size(crop)), transforms.CenterCrop(crop)])(img)
    assert np.array_equal(np.asarray(ours), np.asarray(ref))
    assert resize_size(224) == 256


def _imagenette_mirror(root: Path, train: int = 3, val: int = 2) -> Path:
    for name, data in imagenette_members(train, val, prefix="").items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_imagenette_grayscale_becomes_rgb_and_size(tmp_path):
    mirror = _imagenette_mirror(tmp_path / "mirror")
    gray = mirror / "train" / IMAGENETTE.classes[0] / f"{IMAGENETTE.classes[0]}_0000.JPEG"
    assert Image.open(gray).mode == "L"
    manifest = _prepare("imagenette", str(mirror), tmp_path / "out", image_size=40)
    assert manifest["transform"].startswith(f"RGB, Resize({resize_size(40)})")
    data = load_prepared(tmp_path / "out")
    images, _ = data.split("train")
    assert images.shape[1:] == (3, 40, 40)
    expected = np.asarray(resize_center_crop(Image.open(gray).convert("RGB"), resize_size(40), 40))
    matches = [i for i, img in enumerate(images.numpy()) if np.array_equal(img.transpose(1, 2, 0), expected)]
    matches += [
        i
        for i, img in enumerate(data.split("val")[0].numpy())
        if np.array_equal(img.transpose(1, 2, 0), expected)
    ]
    assert len(matches) == 1
    assert np.array_equal(expected[..., 0], expected[..., 1]) and np.array_equal(
        expected[..., 0], expected[..., 2]
    )
    assert (
        data.mean == IMAGENETTE.mean
        and data.std == IMAGENETTE.std
        and data.classes == list(IMAGENETTE.classes)
    )


def test_corrupt_image_is_named_and_nothing_written(tiny, tmp_path):
    mirror = write_cifar_mirror(tmp_path / "mirror", {"train": tiny["train"], "test": tiny["test"]})
    bad = sorted((mirror / "train" / "dog").iterdir())[3]
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(CorruptImageError, match=bad.name):
        _prepare("cifar10", str(mirror), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["mirror"]


def test_cifar_image_of_wrong_size_is_named(tiny, tmp_path):
    mirror = write_cifar_mirror(tmp_path / "mirror", {"train": tiny["train"], "test": tiny["test"]})
    bad = sorted((mirror / "test" / "ship").iterdir())[0]
    Image.new("RGB", (33, 32)).save(bad)
    with pytest.raises(CorruptImageError, match=f"{bad.name}.*33x32"):
        _prepare("cifar10", str(mirror), tmp_path / "out")


def test_bad_settings_fail_before_decoding(tiny, tmp_path):
    mirror = str(tiny["root"] / "mirror_a")
    with pytest.raises(PrepareError, match=r"data\.cifar10\.image_size"):
        _prepare("cifar10", mirror, tmp_path / "o", image_size=64)
    with pytest.raises(PrepareError, match=r"data\.cifar10\.val_fraction"):
        _prepare("cifar10", mirror, tmp_path / "o", val_fraction=1.5)
    with pytest.raises(PrepareError, match=r"data\.cifar10\.source.*no such file"):
        _prepare("cifar10", str(tmp_path / "nowhere"), tmp_path / "o")
    with pytest.raises(ValueError, match="unknown dataset"):
        _prepare("mnist", mirror, tmp_path / "o")
    with pytest.raises(PrepareError, match=r"train/ and val/.*holds: test/, train/"):
        _prepare("imagenette", mirror, tmp_path / "o")  # a CIFAR mirror has no val/ folder
    nette = _imagenette_mirror(tmp_path / "nette", 1, 1)
    (nette / "val" / IMAGENETTE.classes[3]).rename(nette / "val" / "cat")
    with pytest.raises(PrepareError, match=f"missing: {IMAGENETTE.classes[3]}, unexpected: cat"):
        _prepare("imagenette", str(nette), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_unreachable_download_falls_back_to_the_mirror(tiny, tmp_path):
    from smoothnet.data.catalog import ArchiveSpec

    spec = ArchiveSpec(
        "http://127.0.0.1:9/cifar-10-python.tar.gz", CIFAR10.archive.md5, CIFAR10.archive.filename
    )
    mirror = str(tiny["root"] / "mirror_a")
    manifest = _prepare(
        "cifar10", "download", tmp_path / "out", mirror=mirror, archive=spec, raw_dir=tmp_path / "raw"
    )
    assert manifest["source"] == {
        "kind": "mirror",
        "path": mirror,
        "url": None,
        "download_unreachable": spec.url,
    }


@pytest.mark.parametrize("mirror_given", [False, True])
def test_offline_without_the_mirror_names_the_download_and_both_mirror_settings(tiny, tmp_path, mirror_given):
    from smoothnet.data.catalog import ArchiveSpec
    from smoothnet.data.download import HostUnreachableError

    spec = ArchiveSpec("http://127.0.0.1:9/cifar-10-python.tar.gz", CIFAR10.archive.md5, "c.tar.gz")
    nowhere = str(tmp_path / "nowhere")
    mirror, absent = (nowhere, "mirror data.cifar10.mirror = '" + nowhere) if mirror_given else (None, "")
    with pytest.raises(HostUnreachableError) as error:
        _prepare("cifar10", "download", tmp_path / "o", mirror=mirror, archive=spec, raw_dir=tmp_path)
    message = str(error.value)
    assert spec.url in message and absent in message
    assert "data.cifar10.mirror" in message and "SMOOTHNET_CIFAR10_MIRROR" in message
    assert not (tmp_path / "o").exists()


def test_an_absent_mirror_is_no_error_when_the_download_works(tiny, tmp_path):
    # The archive is already downloaded (verified by its checksum), so no host is contacted.
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / tiny["archive"].name).write_bytes(tiny["archive"].read_bytes())
    mirror = str(tmp_path / "nowhere")
    spec = _archive_spec(tiny["archive"])
    manifest = _prepare("cifar10", "download", tmp_path / "o", mirror=mirror, archive=spec, raw_dir=raw)
    assert manifest["source"]["kind"] == "download"


def test_fingerprint_warning_for_a_non_official_cifar(tiny, tmp_path):
    with pytest.warns(FingerprintWarning, match="NOT the official set") as record:
        manifest = prepare_dataset("cifar10", str(tiny["root"] / "mirror_a"), tmp_path / "o", progress=False)
    assert len(record) == 1
    assert manifest["fingerprint_matches_official"] is False
    assert manifest["official_fingerprint"] == CIFAR10.official_fingerprint
    assert manifest["official_counts_match"] is False


def test_output_is_atomic(tiny, tmp_path, monkeypatch):
    mirror = str(tiny["root"] / "mirror_a")
    out = tmp_path / "out"
    _prepare("cifar10", mirror, out, split_seed=0)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_save = np.save
    calls = []

    def failing_save(path, array, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed half-way through writing the arrays
        real_save(path, array, **kwargs)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        _prepare("cifar10", mirror, out, split_seed=7)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old output is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_manifest_contents_and_loading(tiny, tmp_path):
    manifest = _prepare("cifar10", str(tiny["root"] / "mirror_a"), tmp_path / "out")
    data = load_prepared(tmp_path / "out", verify=True)
    assert data.manifest == manifest == json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert data.manifest_sha256 == sha256_file(tmp_path / "out" / "manifest.json")
    assert data.num_classes == 10 and data.classes == list(CIFAR10.classes) and data.image_size == 32
    assert np.allclose(np.array(data.mean) * 255, [125.3, 123.0, 113.9])
    assert np.allclose(np.array(data.std) * 255, [63.0, 62.1, 66.7])
    assert manifest["split"]["seed"] == 0 and manifest["split"]["val_fraction"] == 0.2
    assert manifest["source"]["kind"] == "mirror"
    for name, meta in manifest["files"].items():
        assert sha256_file(tmp_path / "out" / name) == meta["sha256"]
    images, labels = data.split("val")
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64 and images.shape == (40, 3, 32, 32)
    # Normalisation equals torchvision's ToTensor + Normalize with the published constants.
    from torchvision.transforms import functional as F

    ref = F.normalize(images[:5].float() / 255, data.mean, data.std)
    assert torch.allclose(data.normalize(images[:5]), ref, atol=1e-6)
    mapped = load_prepared(tmp_path / "out", mmap=True)
    assert torch.equal(mapped.split("train")[0], data.split("train")[0])


def test_loading_detects_damage(tiny, tmp_path):
    _prepare("cifar10", str(tiny["root"] / "mirror_a"), tmp_path / "out")
    with pytest.raises(PreparedDataError, match="no manifest.json"):
        load_prepared(tmp_path)
    arr = np.load(tmp_path / "out" / "test_images.npy")
    arr[0, 0, 0, 0] ^= 1
    np.save(tmp_path / "out" / "test_images.npy", arr)
    load_prepared(tmp_path / "out", verify=False)  # shapes still agree
    with pytest.raises(PreparedDataError, match="sha256 differs"):
        load_prepared(tmp_path / "out", verify=True)
    np.save(tmp_path / "out" / "val_images.npy", np.load(tmp_path / "out" / "train_images.npy"))
    with pytest.raises(PreparedDataError, match="val_images.npy"):
        load_prepared(tmp_path / "out", verify=False).split("val")  # the shape check, without hashes


def test_cli_prepare(tiny, tmp_path, capsys):
    from smoothnet.cli import main

    params = tmp_path / "params.yaml"
    mirror = tiny["root"] / "mirror_a"
    params.write_text(
        f"data:\n  cifar10: {{source: {mirror}, val_fraction: 0.2, split_seed: 3, image_size: 32}}\n"
    )
    assert (
        main(["prepare", "--dataset", "cifar10", "--params", str(params), "--out", str(tmp_path / "o")]) == 0
    )
    assert "train 160, val 40, test 40" in capsys.readouterr().out
    assert load_prepared(tmp_path / "o").manifest["split"]["seed"] == 3
    params.write_text("data:\n  cifar10: {source: download, mirror: null, nonsense: 1}\n")
    assert (
        main(["prepare", "--dataset", "cifar10", "--params", str(params), "--out", str(tmp_path / "p")]) == 2
    )
    assert "nonsense" in capsys.readouterr().err


def test_embedded_sample_prepares(tmp_path):
    if not SAMPLE.is_dir():
        pytest.skip("data/sample is not in this checkout")
    with pytest.warns(FingerprintWarning):
        cifar = prepare_dataset("cifar10", str(SAMPLE / "cifar10"), tmp_path / "c", progress=False, workers=1)
    assert [cifar["counts"][s]["total"] for s in ("train", "val", "test")] == [800, 200, 300]
    assert cifar["fingerprint_matches_official"] is False
    nette = _prepare("imagenette", str(SAMPLE / "imagenette"), tmp_path / "i", image_size=64)
    assert [nette["counts"][s]["total"] for s in ("train", "val", "test")] == [100, 20, 40]
    assert load_prepared(tmp_path / "i").split("test")[0].shape == (40, 3, 64, 64)


def test_sample_is_what_the_script_builds(tmp_path):
    mirrors = ROOT.parent / "shared" / "data"
    if not SAMPLE.is_dir() or not mirrors.is_dir():
        pytest.skip(f"needs data/sample and the mirrors in {mirrors} (absent here)")
    import subprocess
    import sys

    script = str(ROOT / "scripts" / "make_embedded_sample.py")
    subprocess.run(
        [sys.executable, script, "--mirrors", str(mirrors), "--out", str(tmp_path / "s")],
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "s" / "README.md").read_text() == (SAMPLE / "README.md").read_text()
    ours = sorted(str(p.relative_to(tmp_path / "s")) for p in (tmp_path / "s").rglob("*") if p.is_file())
    committed = sorted(str(p.relative_to(SAMPLE)) for p in SAMPLE.rglob("*") if p.is_file())
    assert ours == committed
    assert sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file()) < 6 * 2**20
