"""``smoothnet prepare``: prepare one dataset as ``data.<dataset>`` in params.yaml says."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

HELP = "Download (or read a local copy of) a dataset, verify it, split it and store uint8 arrays + manifest."

KNOWN_KEYS = {"source", "mirror", "val_fraction", "split_seed", "image_size", "raw_dir", "allow_duplicates"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``smoothnet prepare``."""
    parser.add_argument(
        "--dataset", required=True, help="cifar10 or imagenette (a key under data: in params)"
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("--out", required=True, help="output folder, e.g. data/prepared/cifar10")
    parser.add_argument("--raw-dir", default=None, help="where archives are downloaded (default data/raw)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default min(2, CPUs))")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    """Read ``data.<dataset>`` from the params file and prepare the dataset into ``--out``."""
    from smoothnet.data.archives import ArchiveFormatError, UnsafeArchiveError
    from smoothnet.data.download import DownloadError
    from smoothnet.data.images import CorruptImageError
    from smoothnet.data.prepare import PrepareError
    from smoothnet.params import ParamsError

    try:
        return _prepare(args)
    except (
        ParamsError,
        PrepareError,
        DownloadError,
        UnsafeArchiveError,
        ArchiveFormatError,
        CorruptImageError,
    ) as exc:
        print(f"smoothnet prepare: error: {exc}", file=sys.stderr)
        return 2


def _prepare(args: argparse.Namespace) -> int:
    from smoothnet.data.prepare import FingerprintWarning, mirror_env_var, prepare_dataset
    from smoothnet.params import ParamsError, dataset_params, load_params

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = dataset_params(load_params(args.params), args.dataset) or {}
    unknown = sorted(set(settings) - KNOWN_KEYS)
    if unknown:
        raise ParamsError(
            f"{args.params}: unknown keys under data.{args.dataset}: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(KNOWN_KEYS))})"
        )
    if "source" not in settings:
        raise ParamsError(f"{args.params}: set data.{args.dataset}.source ('download' or a local path)")
    with warnings.catch_warnings():
        # The library logs the fingerprint warning too; one line on the console is enough.
        warnings.simplefilter("ignore", FingerprintWarning)
        manifest = prepare_dataset(
            args.dataset,
            settings["source"],
            args.out,
            val_fraction=settings.get("val_fraction", 0.2),
            split_seed=settings.get("split_seed", 0),
            image_size=settings.get("image_size"),
            raw_dir=args.raw_dir or settings.get("raw_dir", "data/raw"),
            mirror=os.environ.get(mirror_env_var(args.dataset)) or settings.get("mirror"),
            allow_duplicates=settings.get("allow_duplicates", False),
            workers=args.workers,
            progress=not args.no_progress,
        )
    counts = ", ".join(f"{s} {manifest['counts'][s]['total']}" for s in ("train", "val", "test"))
    print(
        f"{args.dataset}: {counts} images at {manifest['image_size']}px -> {args.out} "
        f"(fingerprint matches official: {manifest['fingerprint_matches_official']})"
    )
    return 0
