"""Which per-sample clipping method the trainer uses for a model: the fastest correct one we measured.

``MEASURED`` is data, copied from ``benchmarks/throughput.py`` output (see benchmarks/README.md),
with the machine it came from. A model or device type without a measurement gets ``DEFAULT``
(mixed ghost clipping, which picks ghost or materialised gradients per layer from its shapes).
"""

from __future__ import annotations

DEFAULT = "auto"

MEASURED: dict[str, dict] = {
    "cpu": {
        "machine": "2-core CPU dev machine (Intel Xeon, shared), torch 2.14.1, batch 16 (SmoothNet) ",
        "fastest": {},
    },
}


def choose_method(model_name: str, device_type: str) -> str:
    """Fastest measured ``ClippedGradientModule`` method for ``model_name`` on ``device_type`` ("cpu", "cuda")."""
    table = MEASURED.get(device_type, {}).get("fastest", {})
    return table.get(model_name, DEFAULT)
