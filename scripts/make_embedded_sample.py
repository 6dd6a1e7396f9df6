"""Build the embedded sample data/sample/ from the offline mirrors (deterministic; bytes copied, not re-encoded).

    python scripts/make_embedded_sample.py --mirrors DIR [--out data/sample]

DIR holds the mirrors `cifar10-png/` and `imagenette-224-subset/` (lossless copies of the official sets).

Per class, the first files in sorted name order: CIFAR-10 100 train + 30 test PNGs, ImageNette (the
224x224 subset mirror) 12 train + 4 val JPEGs. The sample is for the quick profile and tests only.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smoothnet.data.catalog import CIFAR10, IMAGENETTE  # noqa: E402

PLAN = {
    # sample folder: (mirror folder, dataset spec, {split: files per class})
    "cifar10": ("cifar10-png", CIFAR10, {"train": 100, "test": 30}),
    "imagenette": ("imagenette-224-subset", IMAGENETTE, {"train": 12, "val": 4}),
}

README = """# Embedded sample (quick profile and tests only)

A few MB of real images committed with the code, so that the quick profile (`params.quick.yaml`) and the
tests run the full pipeline on a machine without the datasets. It is NOT a dataset to report results on:
accuracies on it say nothing about the paper's claims. Preparing `cifar10/` warns that its fingerprint is
not the official CIFAR-10's (expected: it is a subset) and records `fingerprint_matches_official: false`.

Made by `python scripts/make_embedded_sample.py --mirrors DIR` from lossless PNG mirrors of the official
sets (CIFAR-10's 60,000 images; an Imagenette subset): per class, the first files in sorted file-name order,
bytes copied unchanged.

| folder | source mirror | per class | total |
|---|---|---|---|
{rows}

- `cifar10/`: lossless 32x32 PNGs of the official CIFAR-10 (file names are CIFAR-10's own).
- `imagenette/`: JPEGs from `imagenette-224-subset` (imagenette2 images squashed to 224x224 and re-encoded by
  that mirror, 84 grayscale among its 4,000), so not the full-size originals the paper resizes and crops.

Content: {count} files, sha256 of the sorted `<path> <sha256>` list: `{digest}`.
"""


def build(mirrors: Path, out: Path) -> None:
    """Write the sample into ``out`` (replaced atomically as a whole)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".building"))
    listing, rows = [], []
    try:
        for name, (mirror_name, spec, per_class) in PLAN.items():
            mirror = mirrors / mirror_name
            if not mirror.is_dir():
                raise SystemExit(f"{mirror}: mirror not found (pass --mirrors)")
            for split, count in per_class.items():
                for cls in spec.classes:
                    files = sorted(f for f in (mirror / split / cls).iterdir() if f.is_file())[:count]
                    if len(files) < count:
                        raise SystemExit(f"{mirror / split / cls}: only {len(files)} files, need {count}")
                    target = tmp / name / split / cls
                    target.mkdir(parents=True)
                    for f in files:
                        shutil.copyfile(f, target / f.name)
                        rel = f"{name}/{split}/{cls}/{f.name}"
                        listing.append(f"{rel} {hashlib.sha256(f.read_bytes()).hexdigest()}")
            splits = ", ".join(f"{count} {split}" for split, count in per_class.items())
            total = sum(per_class.values()) * len(spec.classes)
            rows.append(f"| `{name}/` | `{mirror_name}` | {splits} | {total} |")
        digest = hashlib.sha256("\n".join(sorted(listing)).encode()).hexdigest()
        (tmp / "README.md").write_text(README.format(rows="\n".join(rows), count=len(listing), digest=digest))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {len(listing)} images, {size / 2**20:.2f} MiB, content sha256 {digest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirrors", type=Path, required=True, help="folder holding the dataset mirrors")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "sample")
    args = parser.parse_args()
    build(args.mirrors, args.out)


if __name__ == "__main__":
    main()
