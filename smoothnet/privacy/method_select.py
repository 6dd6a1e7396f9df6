"""Which per-sample clipping method (and memory format) the trainer uses for a model: the fastest correct
one we measured.

``MEASURED`` is data, copied from ``benchmarks/throughput.py`` output (benchmarks/results/*.json, tables in
benchmarks/README.md), with the machine it came from. Methods are ``ClippedGradientModule`` methods
(``auto``, ``ghost``, ``materialize``) or an Opacus mode (``hooks``, ...) where that was fastest. A model or
device type without a measurement gets ``DEFAULT`` (mixed ghost clipping, channels-first).
"""

from __future__ import annotations

DEFAULT = ("auto", False)

MEASURED: dict[str, dict] = {
    "cpu": {
        "machine": "2-core CPU dev machine (Intel Xeon), torch 2.14.1, 2 threads, quiet (load ~1), 2026-11-28",
        # model -> (method, channels_last); physical batch 16, median of 3 steps after warm-up.
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
}


def _entry(model_name: str, device_type: str) -> tuple[str, bool]:
    return MEASURED.get(device_type, {}).get("fastest", {}).get(model_name, DEFAULT)


def choose_method(model_name: str, device_type: str) -> str:
    """Fastest measured per-sample method for ``model_name`` on ``device_type`` ("cpu", "cuda")."""
    return _entry(model_name, device_type)[0]


def choose_channels_last(model_name: str, device_type: str) -> bool:
    """Whether the fastest measured configuration of ``model_name`` on ``device_type`` is channels-last."""
    return _entry(model_name, device_type)[1]
