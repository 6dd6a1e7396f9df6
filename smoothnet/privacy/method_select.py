"""Which per-sample clipping method (and memory format) the trainer uses for a model: the fastest correct
one we measured.

``MEASURED`` is data, copied from ``benchmarks/throughput.py`` output (benchmarks/results/*.json, tables in
benchmarks/README.md), with the machine it came from. Per device type, ``fastest`` maps a model (or
``model@image_size`` where the fastest differs by resolution) to ``(method, channels_last)``; methods are
``ClippedGradientModule`` specs (``auto``, ``materialize+grouped``, ...: ``fast_clipping.parse_method``) or
an Opacus mode (``hooks``, ...) where that was fastest. ``fastest_ours`` gives the fastest of the package's
own module where ``fastest`` is an Opacus mode, for runs only the module can do (augmentation
multiplicity, bf16 autocast). A model or device type without a measurement gets ``DEFAULT`` (mixed ghost
clipping, channels-first).
"""

from __future__ import annotations

DEFAULT = ("auto", False)
OPACUS_MODES = ("hooks", "functorch", "ew", "ghost")

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
            if ours_only and entry[0] in OPACUS_MODES:
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
