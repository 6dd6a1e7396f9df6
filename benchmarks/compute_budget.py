"""How much training the full reproduction is, and how long it takes at a measured throughput.

Counts, for every run of params.yaml (and optionally the ablation grid), the per-example gradients it
computes: epochs x training images x augmentation views. With ``--throughput`` (a JSON written by
``benchmarks/throughput.py``, or ``MODEL=IMG_PER_S`` pairs) it divides by the measured DP images/s of each
model to estimate the time. Prints a Markdown table.

    python benchmarks/compute_budget.py
    python benchmarks/compute_budget.py --throughput benchmarks/results/gpu_{smoothnet_b128,cifar10,imagenette,unfold_cifar10,unfold_imagenette}.json
    python benchmarks/compute_budget.py --rate smoothnet_w80d50=17.54 smoothnet_w80d50:nonprivate=22.35
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


OPACUS_MODES = ("hooks", "functorch", "ew", "ghost")
IMAGE_SIZE_DATASET = {32: "cifar10", 224: "imagenette"}


def trainable_dp_method(method: str) -> bool:
    """A DP method the trainer may use: ours in any layout, Opacus' modes only channels-first (their
    per-sample gradients are wrong for channels-last models, see benchmarks/README.md)."""
    if method.startswith("nonprivate"):
        return False
    return not (method.endswith("_cl") and method.removesuffix("_cl") in OPACUS_MODES)


def benchmark_model(resolved: dict) -> str:
    """The benchmarked model a run's speed is read from: ``smoothnet`` at its default width and depth
    (weight standardisation aside) is SmoothNet W80D50."""
    options = resolved.get("model_options") or {}
    if (
        resolved["model"] == "smoothnet"
        and options.get("width", 8.0) == 8.0
        and options.get("depth", 5.0) == 5.0
    ):
        return "smoothnet_w80d50"
    return resolved["model"]


def rate_key(model: str, dataset: str, private: bool) -> str:
    """``model[@dataset][:nonprivate]``: the row of the table a run's time is read from."""
    return model + ("" if dataset == "cifar10" else f"@{dataset}") + ("" if private else ":nonprivate")


def trainer_method(model: str, device_type: str, image_size: int, ours_only: bool = False) -> str:
    """The benchmark method name of what the trainer's ``grad_sample_mode: auto`` picks (``ours_only``: for
    runs only the package's module can do, e.g. under bf16 autocast)."""
    from smoothnet.privacy.method_select import OPACUS_MODES as opacus
    from smoothnet.privacy.method_select import choose_channels_last, choose_method

    method = choose_method(model, device_type, image_size, ours_only)
    if method in opacus:
        return method
    return f"ours_{method}" + (
        "_cl" if choose_channels_last(model, device_type, image_size, ours_only) else ""
    )


def load_rates(
    paths: list[str], method: str, amp: str | None, pairs: list[str], device_type: str = "cuda"
) -> dict[str, float]:
    """Rate key -> images/s from throughput JSONs and/or KEY=RATE pairs.

    ``method="trainer"``: the DP method the trainer picks on ``device_type`` (method_select); ``best``: the
    fastest DP method the trainer may use; otherwise the rows of that exact method. Non-private runs take
    the fastest non-private row. Only rows with the given ``amp`` (None = fp32) count; the highest of
    repeated measurements (several sessions) is used.
    """
    rates: dict[str, float] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        rows = data.get("rows") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "method" in r for r in rows):
            print(f"{path}: not a benchmarks/throughput.py result, skipped", file=sys.stderr)
            continue
        for row in rows:
            if not row.get("images_per_s") or row.get("amp") != amp:
                continue
            dataset = IMAGE_SIZE_DATASET.get(int(row.get("image_size", 32)))
            if dataset is None:
                continue
            if row["method"].startswith("nonprivate"):
                key = rate_key(row["model"], dataset, private=False)
            elif method == "trainer":
                picked = trainer_method(
                    row["model"], device_type, int(row.get("image_size", 32)), amp is not None
                )
                if row["method"] != picked:
                    continue
                key = rate_key(row["model"], dataset, private=True)
            elif (method == "best" and trainable_dp_method(row["method"])) or row["method"] == method:
                key = rate_key(row["model"], dataset, private=True)
            else:
                continue
            rates[key] = max(rates.get(key, 0.0), float(row["images_per_s"]))
    for pair in pairs:
        key, _, rate = pair.partition("=")
        rates[key] = float(rate)
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--ablations", action="store_true", help="include the ablation grid")
    parser.add_argument("--throughput", nargs="*", default=[], help="JSONs from benchmarks/throughput.py")
    parser.add_argument(
        "--method",
        default="trainer",
        help="DP method rows to read: 'trainer' (what grad_sample_mode auto picks), 'best' (fastest the "
        "trainer may use) or a benchmark method name",
    )
    parser.add_argument("--device-type", default="cuda", help="device type for --method trainer")
    parser.add_argument("--amp", choices=["bf16"], default=None, help="read the bf16-autocast rows")
    parser.add_argument(
        "--rate",
        nargs="*",
        default=[],
        help="KEY=IMG_PER_S pairs; KEY is MODEL, MODEL@imagenette, with :nonprivate for non-private runs",
    )
    args = parser.parse_args(argv)

    params = load_params(args.params)
    groups = ["runs"] + (["ablations"] if args.ablations else [])
    rates = load_rates(args.throughput, args.method, args.amp, args.rate, args.device_type)
    per_key: dict[str, list[int]] = {}
    for group in groups:
        for run_id in params.get(group) or {}:
            resolved = resolve_run(params, run_id)
            key = rate_key(
                benchmark_model(resolved), resolved["dataset"], bool(resolved.get("private", True))
            )
            per_key.setdefault(key, []).append(run_examples(resolved))
    print("| model (@dataset if not CIFAR-10; :nonprivate) | runs | example-gradients | img/s | hours |")
    print("|---|---:|---:|---:|---:|")
    total, total_hours, unknown = 0, 0.0, []
    for key, counts in sorted(per_key.items()):
        examples = sum(counts)
        total += examples
        rate = rates.get(key)
        hours = examples / rate / 3600 if rate else None
        if hours is None:
            unknown.append(key)
        else:
            total_hours += hours
        shown_rate = f"{rate:,.0f}" if rate else "-"
        print(
            f"| {key} | {len(counts)} | {examples:,} | {shown_rate} | {f'{hours:,.2f}' if hours else '-'} |"
        )
    print(f"| **total** | | **{total:,}** | | **{total_hours:,.1f}** (measured models only) |")
    if unknown:
        print(f"\nNo throughput for: {', '.join(unknown)} (measure with benchmarks/throughput.py).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
