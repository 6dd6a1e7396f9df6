"""DVC stage entry point: `python pipelines/train.py ...` runs `smoothnet train ...` (see dvc.yaml)."""

import sys

from smoothnet.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
