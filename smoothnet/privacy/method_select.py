"""Which per-sample clipping method the trainer uses for a model: the fastest correct one we measured.

``MEASURED`` is data, copied from ``benchmarks/throughput.py`` output (see benchmarks/README.md),
with the machine it came from. A model or device type without a measurement gets ``DEFAULT``
(mixed ghost clipping, which picks ghost or materialised gradients per layer from its shapes).
"""

from __future__ import annotations

DEFAULT = "auto"

MEASURED: dict[str, dict] = {
    "cpu": {
        "machine": "2-core CPU dev machine (Intel Xeon, shared with other engineers, load 4-6), torch 2.14.1",
        # Measured 2026-11-28 (benchmarks/README.md). Only the ScatterNet head had a clear winner under the
        # load: ours_auto 8.3 s/epoch vs Opacus hooks 57 s. Between our three methods nothing was
        # resolved above the noise for the CNNs, so they keep DEFAULT until a quiet-machine run.
        "fastest": {"scatternet_linear": "auto"},
    },
}


def choose_method(model_name: str, device_type: str) -> str:
    """Fastest measured ``ClippedGradientModule`` method for ``model_name`` on ``device_type`` ("cpu", "cuda")."""
    table = MEASURED.get(device_type, {}).get("fastest", {})
    return table.get(model_name, DEFAULT)
