"""The ``smoothnet`` command. Each subcommand lives next to the code it drives.

A subcommand module exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``main(args) -> int``.
Modules are imported only when the command line is parsed, so ``import smoothnet`` stays light.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, str] = {
    "models": "smoothnet.models.cli",
    "report": "smoothnet.report.cli",
    "prepare": "smoothnet.data.cli",
    "train": "smoothnet.training.cli",
    "audit": "smoothnet.audit.cli",
    "quick": "smoothnet.quick",
    "plan": "smoothnet.plan",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="smoothnet",
        description=(
            "Reproduce 'SmoothNets: Optimizing CNN architecture design for differentially private "
            "deep learning' (Remerscheid et al. 2022): prepare data, train with DP-SGD (Opacus), "
            "render the paper's figures and tables, and audit stored results. The full experiment "
            "runs through DVC (`dvc repro`); these subcommands are what its stages call."
        ),
    )
    from smoothnet import __version__

    parser.add_argument("--version", action="version", version=f"smoothnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``smoothnet`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args._main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
