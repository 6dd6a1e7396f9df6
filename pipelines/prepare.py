"""DVC stage entry point: `python pipelines/prepare.py ...` runs `smoothnet prepare ...` (see dvc.yaml)."""

import sys

from smoothnet.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
