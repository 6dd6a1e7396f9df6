"""How much training the full reproduction is, and how long it takes at a measured throughput.

Counts, for every run of params.yaml (and optionally the ablation grid), the per-example gradients it
computes: epochs x training images x augmentation views. With ``--throughput`` (a JSON written by
``benchmarks/throughput.py``, or ``MODEL=IMG_PER_S`` pairs) it divides by the measured DP images/s of each
model to estimate the time. Prints a Markdown table.

    python benchmarks/compute_budget.py
    python benchmarks/compute_budget.py --throughput gpu.json --method ours_materialize_cl
    python benchmarks/compute_budget.py --rate smoothnet_w80d50=17.54
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smoothnet.params import load_params, resolve_run  # noqa: E402

# Official training-set sizes; the paper holds out 20 % for validation unless a run trains on it.
TRAIN_IMAGES = {"cifar10": 50_000, "imagenette": 9_469}


def run_examples(resolved: dict) -> int:
    """Per-example gradients one run computes."""
    full = TRAIN_IMAGES[resolved["dataset"]]
    n_train = full if resolved.get("train_on_validation") else full - round(0.2 * full)
    views = max(int(resolved.get("augmentation_multiplicity") or 0), 1)
    return int(resolved["epochs"]) * n_train * views


def load_rates(path: str | None, method: str, pairs: list[str]) -> dict[str, float]:
    """Model -> measured images/s, from a throughput JSON (rows of that method) and/or MODEL=RATE pairs."""
    rates: dict[str, float] = {}
    if path:
        data = json.loads(Path(path).read_text())
        rows = data.get("results", data) if isinstance(data, dict) else data
        for row in rows:
            if row.get("method") == method and row.get("images_per_s"):
                rates[row["model"]] = float(row["images_per_s"])
    for pair in pairs:
        model, _, rate = pair.partition("=")
        rates[model] = float(rate)
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--ablations", action="store_true", help="include the ablation grid")
    parser.add_argument("--throughput", help="JSON from benchmarks/throughput.py")
    parser.add_argument(
        "--method", default="ours_materialize_cl", help="method rows to read from --throughput"
    )
    parser.add_argument(
        "--rate",
        nargs="*",
        default=[],
        help="MODEL=IMG_PER_S pairs; MODEL@imagenette=... for the 224x224 runs",
    )
    args = parser.parse_args(argv)

    params = load_params(args.params)
    groups = ["runs"] + (["ablations"] if args.ablations else [])
    rates = load_rates(args.throughput, args.method, args.rate)
    per_model: dict[str, list[int]] = {}
    for group in groups:
        for run_id in params.get(group) or {}:
            resolved = resolve_run(params, run_id)
            key = resolved["model"] + ("" if resolved["dataset"] == "cifar10" else f"@{resolved['dataset']}")
            per_model.setdefault(key, []).append(run_examples(resolved))
    print("| model (@dataset if not CIFAR-10) | runs | example-gradients | img/s | hours |")
    print("|---|---:|---:|---:|---:|")
    total, total_hours, unknown = 0, 0.0, []
    for model, counts in sorted(per_model.items()):
        examples = sum(counts)
        total += examples
        rate = rates.get(model)
        hours = examples / rate / 3600 if rate else None
        if hours is None:
            unknown.append(model)
        else:
            total_hours += hours
        print(
            f"| {model} | {len(counts)} | {examples:,} | {rate or '-'} | {f'{hours:,.1f}' if hours else '-'} |"
        )
    print(f"| **total** | | **{total:,}** | | **{total_hours:,.1f}** (measured models only) |")
    if unknown:
        print(f"\nNo throughput for: {', '.join(unknown)} (measure with benchmarks/throughput.py).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
