"""DVC stage entry point: `python pipelines/report.py ...` runs `smoothnet report ...` (see dvc.yaml)."""

import sys

from smoothnet.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
