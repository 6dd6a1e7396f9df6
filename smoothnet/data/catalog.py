"""What the package knows about each dataset: classes, official archives, published constants.

Nothing here is fitted on data. The normalisation constants are the published ones (the usual
CIFAR-10/ImageNet values), the archive checksums are the ones the dataset authors (and torchvision)
publish, and the CIFAR-10 fingerprints are those a copy of the official archive reproduces
(computed with :func:`smoothnet.data.splits.fingerprint`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchiveSpec:
    """An official archive: where it is downloaded from and the checksum it must have."""

    url: str
    md5: str
    filename: str


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the paper."""

    name: str
    classes: tuple[str, ...]
    archive: ArchiveSpec
    train_split: str  # folder name of the official training split in an image-folder mirror
    test_split: str  # folder name of the official split that is our test set
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    normalisation_source: str
    default_image_size: int
    fixed_image_size: bool  # True: images are stored as they are (CIFAR-10); False: resize + crop
    official_counts: dict[str, int] | None = None  # images per official split ("train", "test")
    official_fingerprint: dict[str, str] | None = None
    class_descriptions: tuple[str, ...] = ()


CIFAR10 = DatasetSpec(
    name="cifar10",
    classes=(
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
    archive=ArchiveSpec(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        filename="cifar-10-python.tar.gz",
    ),
    train_split="train",
    test_split="test",
    mean=(125.3 / 255, 123.0 / 255, 113.9 / 255),
    std=(63.0 / 255, 62.1 / 255, 66.7 / 255),
    normalisation_source="published CIFAR-10 constants (125.3, 123.0, 113.9)/255, (63.0, 62.1, 66.7)/255",
    default_image_size=32,
    fixed_image_size=True,
    official_counts={"train": 50000, "test": 10000},
    official_fingerprint={
        "train": "21235a67dfcc4cc7669afb7875dac92b7923639b463a38fc8b26e7014ef4afec",
        "test": "d2c9e872cbf079d859736586a67337e1ad9ab325b2e6b268e8ca11fb6a686987",
    },
)

IMAGENETTE = DatasetSpec(
    name="imagenette",
    classes=(
        "n01440764",
        "n02102040",
        "n02979186",
        "n03000684",
        "n03028079",
        "n03394916",
        "n03417042",
        "n03425413",
        "n03445777",
        "n03888257",
    ),
    # The full-size imagenette2; the md5 is the one torchvision.datasets.Imagenette pins.
    archive=ArchiveSpec(
        url="https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz",
        md5="fe2fc210e6bb7c5664d602c3cd71e612",
        filename="imagenette2.tgz",
    ),
    train_split="train",
    test_split="val",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    normalisation_source="ImageNet mean/std (torchvision)",
    default_image_size=224,
    fixed_image_size=False,
    official_counts={"train": 9469, "test": 3925},  # imagenette2: train/ and val/
    class_descriptions=(
        "tench",
        "English springer",
        "cassette player",
        "chain saw",
        "church",
        "French horn",
        "garbage truck",
        "gas pump",
        "golf ball",
        "parachute",
    ),
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (CIFAR10, IMAGENETTE)}

FINGERPRINT_DEFINITION = (
    "sha256 of the concatenation of the sorted lowercase hex sha256 digests of each image's stored "
    "uint8 RGB bytes in (H, W, 3) order, per official split (train covers our train + val)"
)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of ``name``; a clear error naming the known datasets otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def resize_size(image_size: int) -> int:
    """Shorter-side size before the centre crop: 256 for 224 (the paper), the same ratio otherwise."""
    return round(image_size * 256 / 224)
