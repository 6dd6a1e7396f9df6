"""DVC stage entry point: `python pipelines/audit.py ...` runs `smoothnet audit ...` (see dvc.yaml).

It imports the one subcommand it runs (not `smoothnet.cli`, which imports them all), so the stage
depends on exactly that code (`smoothnet.closure`).
"""

import argparse
import sys

from smoothnet.audit import cli

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="smoothnet audit", description=cli.HELP)
    cli.add_arguments(parser)
    sys.exit(cli.main(parser.parse_args()))
