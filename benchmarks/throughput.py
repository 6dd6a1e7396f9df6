"""Throughput and peak memory of one training step: non-private vs every DP per-sample method.

    .venv/bin/python benchmarks/throughput.py --models smoothnet_w80d50 --batch 16 --repeats 3 --out bench.json
    .venv/bin/python benchmarks/throughput.py --scatter-epoch --out scatter.json

For each model at its dataset resolution, each method runs a few full steps (forward, backward,
per-sample clipping, noise, SGD-momentum update) at the same physical batch, after one warm-up
step; the table gives the median images/s, the peak memory of one step above the memory held
before it (CUDA: max_memory_allocated; CPU: peak RSS via /proc/self/clear_refs, Linux only), and
the ratios to the fastest non-private step. Methods: ``nonprivate``, Opacus ``hooks``,
``functorch``, ``ew``, ``ghost`` (GradSampleModule modes with DPOptimizer /
DPOptimizerFastGradientClipping) and ours (``ours_<method>[+<conv>]``, e.g. ``ours_auto``,
``ours_materialize+grouped``: smoothnet.privacy.fast_clipping, ``parse_method``); ``_cl`` =
channels-last. ``--amp bf16`` runs forward and loss under bf16 autocast (clipping, noise and update
stay fp32). A method that fails is reported, not hidden.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoothnet.io import atomic_write_text  # noqa: E402
from smoothnet.models import build_model  # noqa: E402
from smoothnet.privacy.fast_clipping import ClippedGradientModule, parse_method  # noqa: E402
from smoothnet.privacy.per_sample_method import PerSampleMethod  # noqa: E402

PAPER_MODELS = ["smoothnet_w80d50", "resnet9", "resnet18", "resnet34", "densenet121", "efficientnet_b0"]
METHODS = ["nonprivate", "hooks", "functorch", "ew", "ghost", "ours_auto", "ours_ghost", "ours_materialize",
           "ours_auto+grouped", "ours_materialize+grouped"]  # fmt: skip
CLIP, SIGMA = 1.0, 1.0


def _sgd(params):
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=2e-4)


def make_step(model: nn.Module, method: str, batch: int, amp: str | None = None):
    """A closure running one full training step of ``method`` on (x, y); ``amp="bf16"``: autocast forward."""
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping

    loss_fn = nn.CrossEntropyLoss(reduction="none")

    def criterion(forward, x, y):
        device_type = x.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            logits = forward(x)
        return loss_fn(logits.float(), y)

    if method == "nonprivate":
        opt = _sgd(model.parameters())

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            criterion(model, x, y).mean().backward()
            opt.step()

        return step
    if method.startswith("ours_"):
        layer_method, conv = parse_method(method.removeprefix("ours_"))
        wrapped = ClippedGradientModule(model, CLIP, layer_method, conv_per_example=conv)
        opt = DPOptimizerFastGradientClipping(
            _sgd(model.parameters()), noise_multiplier=SIGMA, max_grad_norm=CLIP, expected_batch_size=batch
        )

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            wrapped.clipped_backward(criterion(wrapped, x, y))
            opt.step()

        return step
    if method == "ghost":
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        gsm = GradSampleModuleFastGradientClipping(model, max_grad_norm=CLIP, use_ghost_clipping=True)
        opt = DPOptimizerFastGradientClipping(
            _sgd(gsm.parameters()), noise_multiplier=SIGMA, max_grad_norm=CLIP, expected_batch_size=batch
        )
        dp_loss = DPLossFastGradientClipping(gsm, opt, nn.CrossEntropyLoss(reduction="mean"))

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
                logits = gsm(x)
            dp_loss(logits.float(), y).backward()
            opt.step()

        return step
    from opacus.grad_sample import get_gsm_class

    extra = {} if method == "ew" else {"force_functorch": method == "functorch"}
    gsm = get_gsm_class(method)(model, batch_first=True, loss_reduction="mean", **extra)
    opt = DPOptimizer(
        _sgd(gsm.parameters()), noise_multiplier=SIGMA, max_grad_norm=CLIP, expected_batch_size=batch
    )

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        criterion(gsm, x, y).mean().backward()
        opt.step()

    return step


def peak_memory_mib(step, x, y, device: torch.device) -> float | None:
    """Peak memory of the FIRST step (run in a fresh process) above what was held before it, in MiB.

    CUDA: max_memory_allocated. CPU: peak RSS (ru_maxrss) minus the RSS before the step, so the
    model, the batch and the interpreter are excluded; the first step includes creating the
    optimizer's momentum buffers, the same for every method.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(x, y)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    import resource

    status = Path("/proc/self/status")
    if not status.exists():
        step(x, y)
        return None
    rss = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmRSS:"))
    step(x, y)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024


def measure(name: str, method: str, args, device: torch.device) -> dict:
    """Median images/s over ``args.repeats`` steps after a warm-up step, and peak memory of one step."""
    channels_last = method.endswith("_cl")
    base = method.removesuffix("_cl")
    torch.manual_seed(0)
    model = build_model(name, 10, args.image_size).to(device)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    row = {
        "model": name,
        "method": method,
        "batch": args.batch,
        "image_size": args.image_size,
        "amp": args.amp,
    }
    try:
        step = make_step(model, base, args.batch, args.amp)
        row["peak_memory_mib"] = peak_memory_mib(step, x, y, device)  # doubles as the warm-up step
        times = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(x, y)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        row["step_s"] = statistics.median(times)
        row["min_step_s"] = min(times)
        row["images_per_s"] = args.batch / row["step_s"]
    except Exception as error:  # a method that cannot handle this model is a result too
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return row


def measure_in_subprocess(name: str, method: str, args) -> dict:
    """``measure`` in a fresh interpreter: clean peak memory, no state carried between methods."""
    command = [sys.executable, __file__, "--single", name, method, "--batch", str(args.batch),
               "--image-size", str(args.image_size), "--repeats", str(args.repeats), "--device", args.device]  # fmt: skip
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.amp:
        command += ["--amp", args.amp]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:160]
        return {
            "model": name,
            "method": method,
            "batch": args.batch,
            "image_size": args.image_size,
            "amp": args.amp,
            "error": tail,
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_ratios(rows: list[dict]) -> None:
    """DP step time and memory relative to the model's fastest non-private step, and speed vs Opacus hooks."""
    for name in {r["model"] for r in rows}:
        mine = [r for r in rows if r["model"] == name and "step_s" in r]
        plain = [r for r in mine if r["method"].startswith("nonprivate")]
        hooks = [r for r in mine if r["method"] == "hooks"]
        if not plain:
            continue
        best = min(plain, key=lambda r: r["step_s"])
        for r in mine:
            r["time_vs_nonprivate"] = r["step_s"] / best["step_s"]
            if r.get("peak_memory_mib") and best.get("peak_memory_mib"):
                r["memory_vs_nonprivate"] = r["peak_memory_mib"] / best["peak_memory_mib"]
            if hooks:
                r["speed_vs_hooks"] = r["images_per_s"] / hooks[0]["images_per_s"]


def markdown(rows: list[dict]) -> str:
    """The results as a Markdown table."""

    def fmt(v, spec):
        return format(v, spec) if isinstance(v, (int, float)) else "-"

    lines = [
        "| model | method | img/s | step time / best non-private | peak MiB | memory / non-private | speed / Opacus hooks |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | failed: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['method']}{' (bf16)' if r.get('amp') else ''} | {fmt(r['images_per_s'], '.2f')} | {fmt(r.get('time_vs_nonprivate'), '.2f')}x"
            f" | {fmt(r.get('peak_memory_mib'), '.0f')} | {fmt(r.get('memory_vs_nonprivate'), '.2f')}x"
            f" | {fmt(r.get('speed_vs_hooks'), '.2f')}x |"
        )
    return "\n".join(lines)


def scatter_epoch(args, device: torch.device) -> list[dict]:
    """ScatterNet + linear head on random (243, 8, 8) features: one epoch of ``args.scatter_n`` at batch 8192."""
    model_full = build_model("scatternet_linear", 10, 32)
    rows = []
    n, batch = args.scatter_n, args.scatter_batch
    features = torch.randn(n, 243, 8, 8, device=device)
    labels = torch.randint(0, 10, (n,), device=device)
    steps_per_epoch = -(-n // batch)
    for method in args.scatter_methods:
        head = copy.deepcopy(model_full.head).to(device)
        step = make_step(head, method, batch)
        row = {"model": "scatternet_linear(head on features)", "method": method, "batch": batch, "n": n}
        try:
            step(features[:batch], labels[:batch])  # warm-up
            limit = (
                steps_per_epoch if method.startswith("ours") or method == "nonprivate" else args.scatter_steps
            )
            start = time.perf_counter()
            for i in range(min(limit, steps_per_epoch)):
                step(features[i * batch : (i + 1) * batch], labels[i * batch : (i + 1) * batch])
            elapsed = time.perf_counter() - start
            done = min(limit, steps_per_epoch)
            row["measured_steps"] = done
            row["epoch_s"] = elapsed / done * steps_per_epoch
            row["extrapolated"] = done < steps_per_epoch
        except Exception as error:
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# The networks the CPU reproductions train, at their physical batch (params.yaml), and one the package has
# never seen (Opacus' CIFAR-10 example network, batch 500): (label, model, model_options, batch).
REPRO_CASES = [
    ("tramer_boneh_cnn", "tramer_boneh_cnn", {}, 1024),
    ("papernot_tempered_sigmoid_cnn", "papernot_tempered_sigmoid_cnn", {}, 1024),
    ("scatternet_cnn (on features)", "scatternet_cnn", {}, 1024),
    ("smoothnet_w10d10", "smoothnet", {"width": 1.0, "depth": 1.0}, 128),
    ("smoothnet_w10d20", "smoothnet", {"width": 1.0, "depth": 2.0}, 128),
    ("opacus_example_cnn (unseen)", "opacus_example_cnn", {}, 500),
    ("smoothnet_w80d50", "smoothnet_w80d50", {}, 16),
]


def opacus_example_cnn() -> nn.Module:
    """The network of Opacus' CIFAR-10 example (examples/cifar10.py, ``convnet``): not in the registry."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, 2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, 2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, 2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
        nn.Linear(128, 10),
    )  # fmt: skip


def _load_average() -> str:
    """The 1/5/15-minute load averages (``uptime``); "-" where /proc is absent."""
    path = Path("/proc/loadavg")
    return " ".join(path.read_text().split()[:3]) if path.exists() else "-"


def autotune_case(label: str, name: str, options: dict, batch: int, args, device: torch.device) -> list[dict]:
    """One model at its training batch: the trainer's autotune, then the non-private step, the table's
    choice and every timed candidate re-timed in THIS process, interleaved (``args.repeats`` rounds), each
    step's time its CPU time at one torch thread (else wall time), so ratios hold under other processes'
    load. Rows carry the clock and the load average before and after."""
    from smoothnet.privacy import method_select

    load_before = _load_average()
    torch.manual_seed(0)
    model = opacus_example_cnn() if name == "opacus_example_cnn" else build_model(name, 10, 32, **options)
    model = model.to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    if hasattr(model, "frozen_frontend"):
        with torch.no_grad():
            x = model.frozen_frontend(x)
        model = model.head
    y = torch.randint(0, 10, (batch,), device=device)
    started = time.perf_counter()
    choice = method_select.autotune(
        model, tuple(x.shape[1:]), batch, device, method_select.candidates(device.type), rounds=1
    )
    tune_s = time.perf_counter() - started
    table = str(PerSampleMethod.from_table(method_select.choose_method(name, device.type, 32)))
    methods = ["nonprivate", *choice.timings_s]
    if table not in methods:
        methods.append(table)
    steps = {}
    for method in methods:
        copy_ = copy.deepcopy(model)
        step = (
            make_step(copy_, "nonprivate", batch)
            if method == "nonprivate"
            else method_select.training_step(copy_, method, batch, CLIP)
        )
        step(x, y)  # warm-up
        steps[method] = (step, [])
    clock = method_select.step_clock(device)  # CPU time at one thread: ratios robust to others' load
    for _ in range(args.repeats):
        for step, times in steps.values():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = clock()
            step(x, y)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(clock() - start)
    best = {m: min(t) for m, (_, t) in steps.items()}
    plain = best["nonprivate"]
    fastest_dp = min(v for m, v in best.items() if m != "nonprivate")
    load_after = _load_average()
    rows = []
    for method, step_s in best.items():
        rows.append(
            {
                "model": label, "batch": batch, "method": method, "step_s": step_s,
                "images_per_s": batch / step_s, "time_vs_nonprivate": step_s / plain,
                "speed_vs_hooks": best["hooks"] / step_s if "hooks" in best else None,
                "vs_fastest_dp": step_s / fastest_dp, "autotune_choice": method == choice.method,
                "table_choice": method == table, "autotune_s": tune_s,
                "autotune_dropped": choice.dropped, "autotune_failed": choice.failed,
                "load_before": load_before, "load_after": load_after, "clock": clock.__name__,
            }
        )  # fmt: skip
    return rows


def autotune_markdown(rows: list[dict]) -> str:
    """The autotune table: per model, every method's step time relative to the non-private one."""
    lines = [
        "| model (batch) | method | step s | DP / non-private | speed / Opacus hooks | / fastest DP | chosen by"
        " | load (1/5/15 min) before -> after |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        chosen = " + ".join(
            n for n, flag in (("autotune", r["autotune_choice"]), ("table", r["table_choice"])) if flag
        )
        hooks = f"{r['speed_vs_hooks']:.2f}x" if r["speed_vs_hooks"] else "-"
        lines.append(
            f"| {r['model']} ({r['batch']}) | {r['method']} | {r['step_s']:.3f} | {r['time_vs_nonprivate']:.2f}x"
            f" | {hooks} | {r['vs_fastest_dp']:.2f}x | {chosen} | {r['load_before']} -> {r['load_after']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=PAPER_MODELS)
    parser.add_argument(
        "--methods", nargs="+", default=None, help=f"default: {METHODS} and their _cl variants"
    )
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--amp", choices=["bf16"], default=None, help="bf16 autocast of forward and loss")
    parser.add_argument(
        "--in-process",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure every configuration in this process (default on CUDA, where peak memory is "
        "per step anyway; on CPU each runs in a fresh process for a clean peak RSS)",
    )
    parser.add_argument(
        "--scatter-epoch", action="store_true", help="time one ScatterNet+linear epoch instead"
    )
    parser.add_argument("--scatter-n", type=int, default=40000)
    parser.add_argument("--scatter-batch", type=int, default=8192)
    parser.add_argument("--scatter-steps", type=int, default=1, help="steps timed for the slow Opacus modes")
    parser.add_argument("--scatter-methods", nargs="+", default=["nonprivate", "ours_auto", "ghost", "hooks"])
    parser.add_argument(
        "--autotune",
        action="store_true",
        help="the CPU reproductions' models at their training batch: autotune, then every candidate, the "
        "table's choice and the non-private step re-timed interleaved in one process",
    )
    parser.add_argument(
        "--cases", nargs="+", default=None, help="REPRO_CASES to run, in this order (default all)"
    )
    parser.add_argument("--single", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch < 1:
        parser.error("--repeats and --batch must be >= 1")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if args.single:
        print(json.dumps(measure(*args.single, args, device)))
        return 0
    if args.autotune:
        machine["load_start"] = _load_average()
        rows = []
        by_name = {case[0].split()[0]: case for case in REPRO_CASES}
        for key in args.cases or by_name:
            if key not in by_name:
                parser.error(f"--cases: unknown {key!r}; choose from {list(by_name)}")
            rows += autotune_case(*by_name[key], args, device)
            print(json.dumps(rows[-1]), flush=True)
            _write(args.out, machine, rows)
        print(autotune_markdown(rows))
    elif args.scatter_epoch:
        rows = scatter_epoch(args, device)
    else:
        methods = args.methods or [m for base in METHODS for m in (base, base + "_cl")]
        rows = []
        in_process = args.in_process if args.in_process is not None else device.type == "cuda"
        for name in args.models:
            for method in methods:
                row = (
                    measure(name, method, args, device)
                    if in_process
                    else measure_in_subprocess(name, method, args)
                )
                if in_process and device.type == "cuda":
                    torch.cuda.empty_cache()
                print(json.dumps(row), flush=True)
                rows.append(row)
                add_ratios(rows)
                _write(args.out, machine, rows)  # after every row: an interrupted sweep keeps its results
        print(markdown(rows))
    _write(args.out, machine, rows)
    return 0


def _write(path: Path | None, machine: dict, rows: list[dict]) -> None:
    if path:
        atomic_write_text(
            path, json.dumps({"machine": machine, "rows": rows}, indent=2, sort_keys=True) + "\n"
        )


if __name__ == "__main__":
    raise SystemExit(main())
