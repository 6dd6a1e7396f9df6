"""Where the time of one DP-SGD clipping step goes: CPU seconds per step and the operators that take them.

    .venv/bin/python benchmarks/profile_step.py --model scatternet_cnn --batch 1024 \
        --methods auto materialize+unfold ghost

For each method of the package's clipping module (``<method>[+<conv_per_example>]``, as
``smoothnet.privacy.fast_clipping.parse_method`` reads it) and for the non-private step, one warm-up step,
then one step timed by the process' CPU time (``time.process_time``, which other jobs' load hardly moves)
and one step under ``torch.profiler``: a Markdown table of the top operators by self CPU time. Models
with a frozen front end (the ScatterNets) are profiled on their trainable head over random features of
the front end's output shape, as the trainer trains them on precomputed features. One torch thread
unless ``--threads``. Complements ``throughput.py`` (whole steps, every method, memory): this script
says *why* a method costs what it does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoothnet.models import build_model  # noqa: E402
from smoothnet.privacy.fast_clipping import ClippedGradientModule, parse_method  # noqa: E402

SCATTER_FEATURES = (243, 8, 8)  # ScatterNet J=2 on 32x32 RGB: 3 x 81 channels at 8x8


def trainable_part(name: str, image_size: int) -> tuple[nn.Module, tuple[int, ...]]:
    """The module a run trains and the shape of one of its inputs (the head on features for ScatterNets)."""
    model = build_model(name, 10, image_size)
    if hasattr(model, "frozen_frontend"):
        return model.head, SCATTER_FEATURES
    return model, (3, image_size, image_size)


def cpu_seconds(step) -> float:
    """CPU time of one call of ``step`` after a warm-up call."""
    step()
    start = time.process_time()
    step()
    return time.process_time() - start


def top_operators(step, rows: int) -> list[tuple[str, float, int]]:
    """``(operator, self CPU s, calls)`` of one profiled call of ``step``, largest first."""
    with profile() as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in events[:rows]]


def steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, methods: list[str], clip: float):
    """``(label, step)`` for the non-private step and each clipping method."""

    def nonprivate():
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()

    yield "non-private", nonprivate
    for spec in methods:
        method, conv = parse_method(spec)
        clipped = ClippedGradientModule(model, max_grad_norm=clip, method=method, conv_per_example=conv)

        def private(clipped=clipped):
            model.zero_grad(set_to_none=True)
            clipped.clipped_backward(nn.functional.cross_entropy(clipped(x), y, reduction="none"))

        yield f"fast:{spec}", private


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="scatternet_cnn")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--methods", nargs="+", default=["auto", "materialize+unfold", "ghost"])
    parser.add_argument("--clip", type=float, default=0.1)
    parser.add_argument("--rows", type=int, default=6, help="operators listed per method")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, shape = trainable_part(args.model, args.image_size)
    x, y = torch.randn(args.batch, *shape), torch.randint(0, 10, (args.batch,))
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["-"]
    print(f"{args.model} at batch {args.batch}, {args.threads} thread(s), load {' '.join(load)}\n")
    print("| step | CPU s / step | operator | self CPU s | calls |\n|---|---:|---|---:|---:|")
    for label, step in steps(model, x, y, args.methods, args.clip):
        seconds = cpu_seconds(step)
        for i, (op, self_s, calls) in enumerate(top_operators(step, args.rows)):
            print(
                f"| {label if i == 0 else ''} | {f'{seconds:.3f}' if i == 0 else ''} | `{op}` | {self_s:.3f} | {calls} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
