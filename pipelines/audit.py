"""DVC stage entry point: `python pipelines/audit.py ...` runs `smoothnet audit ...` (see dvc.yaml)."""

import sys

from smoothnet.cli import main

if __name__ == "__main__":
    sys.exit(main(["audit", *sys.argv[1:]]))
