"""The test suite's per-example checks, on a CUDA device: our clipped sums there vs the CPU per-example loop.

The test suite runs on CPU (CI has no GPU); cuDNN picks other kernels (and the ``grouped`` per-example
convolution is the CUDA default), so a GPU session runs this once:

    python benchmarks/cuda_correctness.py --out cuda_correctness.json

For each model (float64, eval mode, batch 4, C = the median per-example norm so some examples are
clipped and some not) and each method, the per-example norms and every parameter's clipped sum must
match the float64 per-example loop on CPU to 1e-4 relative. In float32 (where cuDNN may use TF32) and
under bf16 autocast, channels-first and channels-last, each single example's contribution must stay
<= C (1 + 1e-6). Exit status 1 if anything fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoothnet.io import atomic_write_text  # noqa: E402
from smoothnet.models import build_model  # noqa: E402
from smoothnet.privacy.fast_clipping import ClippedGradientModule, parse_method  # noqa: E402
from smoothnet.privacy.reference import per_example_gradients  # noqa: E402

MODELS = ["smoothnet", "resnet9", "efficientnet_b0", "tramer_boneh_cnn", "wrn16_4", "densenet121"]
METHODS = ["auto", "materialize+grouped", "materialize+loop", "materialize+unfold", "ghost"]
RTOL = 1e-4


def _loss(out, y):
    return nn.functional.cross_entropy(out, y, reduction="none")


def reference(model: nn.Module, x, y, c: float):
    """Per-example norms and clipped sums from one backward per example (CPU, float64)."""
    grads = per_example_gradients(model, x, y, lambda out, t: _loss(out, t).sum())
    norms = torch.cat([g.flatten(1) for g in grads.values()], 1).norm(dim=1)
    clip = (c / (norms + 1e-6)).clamp(max=1.0)
    return norms, {n: torch.tensordot(clip, g, dims=1) for n, g in grads.items()}


def ours(model: nn.Module, x, y, c: float, spec: str, device: torch.device):
    method, conv = parse_method(spec)
    model = model.to(device)
    wrapped = ClippedGradientModule(model, c, method, conv_per_example=conv)
    model.zero_grad(set_to_none=True)
    norms = wrapped.clipped_backward(_loss(wrapped(x.to(device)), y.to(device)))
    grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters()}
    model.to("cpu")
    return norms.cpu(), grads


def relative_error(mine, ref) -> float:
    """The largest relative error over the norms and every parameter's clipped sum (scaled by the total)."""
    norms, grads = mine
    ref_norms, ref_grads = ref
    total = torch.cat([g.flatten() for g in ref_grads.values()]).norm()
    worst = ((norms - ref_norms).norm() / ref_norms.norm()).item()
    for name, g in ref_grads.items():
        scale = g.norm() + 1e-10 * total
        worst = max(worst, ((grads[name] - g).norm() / scale).item())
    return worst


def contribution_bound(device: torch.device, spec: str, bf16: bool, channels_last: bool) -> float:
    """Largest single-example contribution / C in float32 (bf16: under autocast) on ``device`` (must be <= 1)."""
    torch.manual_seed(2)
    model = build_model("resnet9", 10, 32).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    method, conv = parse_method(spec)
    wrapped = ClippedGradientModule(model, 1e-3, method, conv_per_example=conv)
    worst = 0.0
    for _ in range(3):
        x, y = torch.randn(1, 3, 32, 32, device=device), torch.randint(0, 10, (1,), device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = wrapped(x)
        wrapped.clipped_backward(_loss(out.float(), y))
        total = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
        worst = max(worst, total / 1e-3)
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows, ok = [], True
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, 10, 32).eval().double()
        torch.manual_seed(1)
        x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (4,))
        c = reference(model, x, y, 1.0)[0].median().item()
        ref = reference(model, x, y, c)
        for spec in METHODS:
            error = relative_error(ours(model, x, y, c, spec, device), ref)
            rows.append({"model": name, "method": spec, "relative_error": error, "ok": error < RTOL})
            ok &= error < RTOL
            print(json.dumps(rows[-1]), flush=True)
    for spec in ("auto", "auto+unfold", "materialize+grouped", "materialize+unfold", "ghost"):
        for bf16 in (False, True):
            for channels_last in (False, True):
                ratio = contribution_bound(device, spec, bf16, channels_last)
                label = f"{spec}{' bf16' if bf16 else ' fp32'}{' channels-last' if channels_last else ''}"
                rows.append({"model": "resnet9", "method": label, "max_contribution_over_c": ratio})
                rows[-1]["ok"] = ratio <= 1 + 1e-6
                ok &= rows[-1]["ok"]
                print(json.dumps(rows[-1]), flush=True)
    if args.out:
        atomic_write_text(args.out, json.dumps({"device": str(device), "rows": rows}, indent=2) + "\n")
    print("ALL OK" if ok else "FAILURES", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
