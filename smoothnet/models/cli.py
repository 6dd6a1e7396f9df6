"""``smoothnet models``: list the registered models with their parameter counts."""

from __future__ import annotations

import argparse

HELP = "List every registered model, its options and its parameter count."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``smoothnet models``."""
    parser.add_argument("--num-classes", type=int, default=10, help="classes of the head (default 10)")
    parser.add_argument("--image-size", type=int, default=32, help="input resolution (default 32)")


def main(args: argparse.Namespace) -> int:
    """Print one Markdown table row per model."""
    from smoothnet.models.registry import (
        build_model,
        count_parameters,
        list_models,
        model_entry,
        model_options,
    )

    print("| model | parameters | options | description |")
    print("|---|---:|---|---|")
    for name in list_models():
        entry = model_entry(name)
        if args.image_size not in entry.image_sizes:
            count = "n/a at this size"
        else:
            count = f"{count_parameters(build_model(name, args.num_classes, args.image_size)):,}"
        print(f"| {name} | {count} | {', '.join(model_options(name)) or '-'} | {entry.description} |")
    return 0
