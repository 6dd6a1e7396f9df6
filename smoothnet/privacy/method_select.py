"""Which per-sample clipping method (and memory format) the trainer uses for a model: the fastest correct
one we measured.

``MEASURED`` is data, copied from ``benchmarks/throughput.py`` output (benchmarks/results/*.json, tables in
benchmarks/README.md), with the machine it came from. Per device type, ``fastest`` maps a model (or
``model@image_size`` where the fastest differs by resolution) to ``(method, channels_last)``; methods are
``ClippedGradientModule`` specs (``auto``, ``materialize+grouped``, ...: ``PerSampleMethod.from_table``) or
an Opacus mode (``hooks``, ...) where that was fastest. ``fastest_ours`` gives the fastest of the package's
own module where ``fastest`` is an Opacus mode, for runs only the module can do (augmentation
multiplicity, bf16 autocast). A model or device type without a measurement gets ``DEFAULT`` (mixed ghost
clipping, channels-first).

The table is the fallback: by default the trainer chooses per run with ``autotune`` (each candidate of
``CANDIDATES`` timed for a few steps on the run's own model, physical batch and device), records the
timings and the choice (``MethodChoice``) and keeps the choice on resume.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from smoothnet.privacy.per_sample_method import OPACUS_MODES, PerSampleMethod  # noqa: F401 (re-exported)

DEFAULT = ("auto", False)

MEASURED: dict[str, dict] = {
    "cpu": {
        "machine": "2-core CPU dev machine (Intel Xeon), torch 2.14.1, 2 threads, quiet (load ~1), 2026-11-28",
        # physical batch 16, median of 3 steps after warm-up.
        "fastest": {
            # 17.5 img/s vs 10.0 Opacus hooks and 22.3 best non-private (channels-last)
            "smoothnet_w80d50": ("materialize", True),
            "smoothnet": ("materialize", True),  # same family; the ablation widths were not measured
            # 243 img/s vs 169 Opacus hooks and 655 best non-private
            "tramer_boneh_cnn": ("auto", False),
            "papernot_tempered_sigmoid_cnn": ("auto", False),  # the same network with another activation
            # 41.9 img/s vs 38.9 Opacus hooks and 113.6 best non-private
            "resnet9": ("auto", True),
            # one epoch of 40k features at batch 8192: 8.3 s vs 57 s Opacus hooks
            "scatternet_linear": ("auto", False),
        },
    },
    "cuda": {
        "machine": "NVIDIA H200, torch 2.11.0+cu130, cuDNN 9.19, Opacus 1.6.0, fp32, 2026-11-28",
        # Batch 128 at 32x32 and 32 at 224x224, median of 5 (3 at 224) steps after warm-up, two sessions
        # (benchmarks/results/gpu_*.json). The same configuration varied by up to ~30 % between the
        # sessions, so ours is chosen only where it beat Opacus' hooks by >= 5 % IN THE SAME session;
        # comments: img/s of the choice vs hooks there.
        "fastest": {
            "smoothnet_w80d50": ("auto+unfold", False),  # 3746 vs 3214 (non-private 6586)
            "smoothnet": ("auto+unfold", False),  # same family
            "smoothnet_w80d50@224": ("auto+grouped", False),  # 184 vs 104
            "smoothnet@224": ("auto+grouped", False),
            "resnet9": ("hooks", False),  # 7727 (ours 6271)
            "resnet18": ("hooks", False),  # 2793 (ours 2632)
            "resnet18@224": ("auto+unfold", True),  # 811 vs 697
            "resnet34": ("auto+grouped", False),  # 2193 vs 1530
            "resnet34@224": ("auto+unfold", False),  # 472 vs 334
            "densenet121": ("hooks", False),  # 578 (ours 496)
            "densenet121@224": ("auto+unfold", False),  # 149 vs 109
            "efficientnet_b0": ("materialize+unfold", True),  # 950 vs 755
            "efficientnet_b0@224": ("auto+unfold", True),  # 295 vs 192
            "wrn16_4": ("auto+grouped", False),  # 1639 vs 1244
            "tramer_boneh_cnn": ("hooks", False),  # 11071 (ours 11410: within 5 %)
            "papernot_tempered_sigmoid_cnn": ("hooks", False),  # 12599 (ours 11016)
            "scatternet_linear": ("auto", False),  # one 40k epoch: 0.014 s vs 0.018 s hooks
        },
        "fastest_ours": {
            "resnet9": ("materialize+unfold", False),
            "resnet18": ("materialize+unfold", False),
            "densenet121": ("materialize+unfold", False),
            "tramer_boneh_cnn": ("materialize+unfold", True),
            "papernot_tempered_sigmoid_cnn": ("materialize+unfold", False),
        },
    },
}


def _entry(model_name: str, device_type: str, image_size: int | None, ours_only: bool) -> tuple[str, bool]:
    table = MEASURED.get(device_type, {})
    keys = ([f"{model_name}@{image_size}"] if image_size else []) + [model_name]
    for key in keys:
        if key in table.get("fastest", {}):
            entry = table["fastest"][key]
            if ours_only and PerSampleMethod.from_table(entry[0]).is_opacus:
                ours = table.get("fastest_ours", {})
                return next((ours[k] for k in keys[keys.index(key) :] if k in ours), DEFAULT)
            return entry
    return DEFAULT


def choose_method(
    model_name: str, device_type: str, image_size: int | None = None, ours_only: bool = False
) -> str:
    """Fastest measured per-sample method for ``model_name`` on ``device_type`` ("cpu", "cuda") at
    ``image_size``; with ``ours_only`` the fastest of the package's clipping module."""
    return _entry(model_name, device_type, image_size, ours_only)[0]


def choose_channels_last(
    model_name: str, device_type: str, image_size: int | None = None, ours_only: bool = False
) -> bool:
    """Whether that fastest measured configuration runs channels-last."""
    return _entry(model_name, device_type, image_size, ours_only)[1]


# ----------------------------------------------------------------------------- per-run autotune

CANDIDATES: dict[str, tuple[str, ...]] = {
    # In the trainer's form (Opacus mode or fast:<method>[+<conv>]); every one is checked against the
    # per-example loop in tests/test_fast_clipping.py (ours) and against Opacus' hooks (tests/test_dp_step.py).
    "cpu": ("fast:auto", "fast:auto+grouped", "fast:auto+unfold", "fast:materialize", "fast:ghost", "hooks"),
    "cuda": ("fast:auto+grouped", "fast:auto+unfold", "fast:materialize+unfold", "fast:ghost", "hooks"),
}
_CHOICE_FILE = "method_choice.json"


@dataclass(frozen=True)
class MethodChoice:
    """The per-sample method a run uses and how it was chosen (stored in the record and the checkpoint).

    ``source``: ``autotune`` (timed at the start of this run), ``table`` (``MEASURED``), ``config`` (set
    in params) or ``resumed`` (an autotuned choice kept from the run's checkpoint). ``timings_s``: each
    candidate's fastest timed step in seconds (autotune only); ``failed``: candidates that raised, with the
    error; ``dropped``: candidates whose warm-up step was so slow they were not timed further.
    """

    method: str
    source: str
    timings_s: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, float] = field(default_factory=dict)
    batch: int | None = None
    device: str | None = None
    clock: str | None = None  # "process_time" (CPU, one thread) or "perf_counter"

    def to_record(self) -> dict:
        """A JSON-ready dict (``from_record`` reads it back)."""
        return asdict(self)

    @classmethod
    def from_record(cls, values: dict) -> MethodChoice:
        """The choice stored by ``to_record``."""
        return cls(**values)


def candidates(device_type: str, ours_only: bool = False, channels_last: bool = False) -> tuple[str, ...]:
    """The methods autotune times on ``device_type``; Opacus' modes are left out where only the package's
    module is correct (``ours_only``: augmentation multiplicity, bf16) or the model is channels-last."""
    methods = CANDIDATES.get(device_type, CANDIDATES["cuda"])
    if ours_only or channels_last:
        methods = tuple(m for m in methods if not PerSampleMethod.parse(m).is_opacus)
    return methods


def training_step(
    model: nn.Module, method: str, batch: int, max_grad_norm: float, noise_multiplier: float = 1.0, lr=1e-3
):
    """A closure ``step(x, y)`` running one DP-SGD step of ``method`` on ``model`` (per-sample gradients,
    clipping, Gaussian noise, SGD-momentum update), as the trainer runs it; ``method`` a
    :class:`PerSampleMethod` or its string form."""
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping

    from smoothnet.privacy.fast_clipping import ClippedGradientModule

    loss_fn = nn.CrossEntropyLoss(reduction="none")
    sgd = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    calibration = dict(
        noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, expected_batch_size=batch
    )
    per_sample = PerSampleMethod.parse(method)
    if not per_sample.is_opacus:
        wrapped = ClippedGradientModule(
            model, max_grad_norm, per_sample.clipping, conv_per_example=per_sample.conv_per_example
        )
        opt = DPOptimizerFastGradientClipping(sgd, **calibration)

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            wrapped.clipped_backward(loss_fn(wrapped(x).float(), y))
            opt.step()

        return step
    mode = per_sample.mode
    if mode == "ghost":
        raise ValueError(f"autotune times fast:<method> and Opacus' hooks/functorch/ew, not {method!r}")
    from opacus.grad_sample import get_gsm_class

    extra = {} if mode == "ew" else {"force_functorch": mode == "functorch"}
    gsm = get_gsm_class(mode)(model, batch_first=True, loss_reduction="mean", **extra)
    opt = DPOptimizer(sgd, **calibration)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss_fn(gsm(x).float(), y).mean().backward()
        opt.step()

    return step


def autotune(
    module: nn.Module,
    example_shape: tuple[int, ...],
    batch: int,
    device: torch.device,
    methods: tuple[str, ...],
    max_grad_norm: float = 1.0,
    rounds: int = 2,
    drop_factor: float = 3.0,
    timer=None,
    max_materialized_bytes: int = 4 * 2**30,
) -> MethodChoice:
    """Time each of ``methods`` on copies of ``module`` (its device and memory format kept) and choose the
    fastest: the cuDNN-benchmark idea applied to per-sample gradients.

    Each method gets a warm-up step, then ``rounds`` timed steps interleaved across methods (a load change
    on a shared machine hits all alike); its time is its fastest step. A method whose warm-up took more than
    ``drop_factor`` times the fastest warm-up so far is not timed further (bounded tuning cost). Inputs
    are standard-normal noise of the run's shape from a private generator, labels class 0: no training
    example is touched and the global random streams are left as they were. ``module`` is not changed.

    Methods that hold every example's full gradient (``fast:materialize``, Opacus' modes) are skipped
    (listed under ``failed``) where that alone would exceed ``max_materialized_bytes`` (e.g. the ScatterNet
    + linear head at batch 8192: 5 GiB): the timing would set the run's peak memory.

    Clock (``timer`` None): on a CPU with one torch thread the process' CPU time, which other processes'
    load hardly moves (on a shared 2-core machine wall time swung 3x between identical steps); else wall
    time, synchronised on CUDA.
    """
    if timer is None:
        timer = step_clock(device)
    if not methods:
        raise ValueError("autotune needs at least one candidate method")
    channels_last = any(
        p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in module.parameters()
    )
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn((batch, *example_shape), generator=generator).to(device)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.zeros(batch, dtype=torch.long, device=device)

    def timed(step) -> float:
        _sync(device)
        start = timer()
        step(x, y)
        _sync(device)
        return timer() - start

    steps, times, failed, dropped = {}, {}, {}, {}
    materialized = batch * sum(p.numel() for p in module.parameters() if p.requires_grad) * 4
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for method in methods:
            if materialized > max_materialized_bytes and _holds_every_gradient(method):
                failed[method] = f"skipped: per-example gradients would take {materialized / 2**30:.1f} GiB"
                continue
            try:
                step = training_step(copy.deepcopy(module), method, batch, max_grad_norm)
                warm = timed(step)
            except Exception as error:  # a method that cannot handle this model is not a candidate
                failed[method] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
                continue
            fastest_warm = min([warm, *(t[0] for t in times.values())])
            if warm > drop_factor * fastest_warm:
                dropped[method] = warm
                continue
            steps[method], times[method] = step, [warm]
            for other in [m for m in times if times[m][0] > drop_factor * warm]:
                dropped[other] = times.pop(other)[0]
                del steps[other]
        if not steps:
            raise RuntimeError(f"autotune: every candidate per-sample method failed: {failed}")
        for _ in range(rounds):
            for method, step in steps.items():
                times[method].append(timed(step))
    best = {m: min(t[1:] or t) for m, t in times.items()}
    return MethodChoice(
        method=min(best, key=best.get),
        source="autotune",
        timings_s=best,
        failed=failed,
        dropped=dropped,
        batch=batch,
        device=device.type,
        clock=getattr(timer, "__name__", None),
    )


def _holds_every_gradient(method: str) -> bool:
    try:
        return PerSampleMethod.parse(method).holds_every_gradient
    except ValueError:  # not a method: its step fails below and is recorded under ``failed``
        return False


def step_clock(device: torch.device):
    """``time.process_time`` on a CPU with one torch thread (robust to other processes' load), else
    ``time.perf_counter``."""
    return time.process_time if device.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def save_choice(directory: Path, choice: MethodChoice, fingerprint: str) -> None:
    """Keep ``choice`` beside the run's checkpoint, tied to the config fingerprint, for ``load_choice``."""
    from smoothnet.io import atomic_write_text

    directory.mkdir(parents=True, exist_ok=True)
    payload = {"config_fingerprint": fingerprint, "choice": choice.to_record()}
    atomic_write_text(directory / _CHOICE_FILE, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def load_choice(directory: Path, fingerprint: str) -> MethodChoice | None:
    """The autotuned choice ``save_choice`` kept for this config (source ``resumed``), or None."""
    path = directory / _CHOICE_FILE
    if not path.exists():
        return None
    payload = json.loads(path.read_text())
    if payload.get("config_fingerprint") != fingerprint:
        return None
    return replace(MethodChoice.from_record(payload["choice"]), source="resumed")
