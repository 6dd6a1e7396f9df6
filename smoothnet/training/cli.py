"""``smoothnet train``: train one run of params.yaml (what the DVC stage ``train@<run_id>`` calls)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "Train one run from params.yaml with DP-SGD (or without privacy) and write its run record."
# EX_TEMPFAIL of sysexits.h: not finished, not failed; the same command continues from the checkpoint.
EXIT_TIME_LIMIT = 75


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``smoothnet train``."""
    parser.add_argument(
        "run_id", help="a key of `runs:` in the params file, e.g. cifar10-smoothnet_w80d50-eps7-s0"
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument(
        "--data-root", default="data/prepared", help="prepared datasets (default data/prepared)"
    )
    parser.add_argument("--runs", default="runs", help="run records and DVCLive folders (default runs)")
    parser.add_argument(
        "--checkpoints", default="checkpoints", help="checkpoint folders (default checkpoints)"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--time-limit-minutes",
        type=float,
        default=None,
        help="stop after the last epoch that fits in this many minutes, keeping its checkpoint, and exit "
        f"with code {EXIT_TIME_LIMIT}; the same command resumes (a run option: the record is the same)",
    )


def run_profile(params: dict, study: str) -> str:
    """The record's profile label: quick-profile params are never mixed with real results."""
    if params.get("profile") == "quick":
        return "quick"
    return "improved" if study == "improved" else "paper"


def main(args: argparse.Namespace) -> int:
    """Train; expected mistakes end in one line naming the run or key and the fix, exit code 2; a stop at
    ``--time-limit-minutes`` in one line with exit code 75 (run the command again to resume)."""
    from smoothnet.params import ParamsError
    from smoothnet.training.config import ConfigError
    from smoothnet.training.trainer import TimeLimitReached

    checkpoint_dir = Path(args.checkpoints) / args.run_id
    try:
        return _train(args)
    except (ParamsError, ConfigError, MissingDataError) as exc:
        print(f"smoothnet train: error: {exc}", file=sys.stderr)
        return 2
    except TimeLimitReached as exc:
        print(f"smoothnet train: {exc}", file=sys.stderr)
        return EXIT_TIME_LIMIT
    except ValueError as exc:
        if "privacy budget is too low" not in str(exc):  # Opacus' noise search found no sigma
            raise
        print(
            f"smoothnet train: error: run {args.run_id!r}: target_epsilon is too small for Opacus' noise "
            f"search with this delta, sample rate and number of epochs ({exc}); raise runs.{args.run_id}"
            f".target_epsilon, or train fewer epochs or with a smaller logical batch",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        last = checkpoint_dir / "last.pt"
        kept = (
            f"the checkpoint {last} (last completed epoch) is kept; run the same command (or dvc repro) "
            f"to resume from it"
            if last.exists()
            else "no epoch had completed, so there is no checkpoint to resume from"
        )
        print(f"\nsmoothnet train: interrupted: {kept}", file=sys.stderr)
        return 130


class MissingDataError(RuntimeError):
    """The prepared dataset a run needs is absent."""


def _train(args: argparse.Namespace) -> int:
    from smoothnet.params import load_params, resolve_run, stage_name
    from smoothnet.training.config import ConfigError, TrainConfig
    from smoothnet.training.environment import pick_device
    from smoothnet.training.trainer import RunPaths, train

    if args.time_limit_minutes is not None and not args.time_limit_minutes > 0:
        raise ConfigError(f"--time-limit-minutes must be positive (got {args.time_limit_minutes})")
    params = load_params(args.params)
    resolved = resolve_run(params, args.run_id)
    config = TrainConfig.from_params(resolved)
    device = pick_device(args.device)
    paths = RunPaths(
        data_dir=Path(args.data_root) / config.dataset,
        run_dir=Path(args.runs) / config.run_id,
        checkpoint_dir=Path(args.checkpoints) / config.run_id,
        repo_root=Path(args.params).resolve().parent,
    )
    if not (paths.data_dir / "manifest.json").exists():
        raise MissingDataError(
            f"prepared dataset not found at {paths.data_dir}; run `dvc repro prepare@{config.dataset}` "
            f"(or `smoothnet prepare --dataset {config.dataset} --out {paths.data_dir}`) first"
        )
    record = train(
        config,
        paths,
        resolved_params=resolved,
        profile=run_profile(params, config.study),
        stage=stage_name(params, args.run_id),
        device=device,
        progress=not args.no_progress,
        time_limit_s=None if args.time_limit_minutes is None else 60 * args.time_limit_minutes,
    )
    results, privacy = record["results"], record["privacy"]
    eps = f", epsilon {privacy['epsilon']:.3f} ({privacy['accountant']})" if privacy["private"] else ""
    print(
        f"{config.run_id}: test accuracy {results['test_accuracy_at_best_val']}{eps} -> {paths.record_path}"
    )
    return 0
