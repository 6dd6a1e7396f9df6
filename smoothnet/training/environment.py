"""Facts about where a run happened: library versions, device, git revision."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch


def cpu_model() -> str | None:
    """The processor's model name as the kernel reports it (None where it does not)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def library_versions() -> dict[str, object]:
    """Python, torch, opacus, CUDA and cuDNN versions (None where absent), the CPU and the instruction set
    torch's CPU kernels dispatch to.

    The last two are recorded because they decide how a CPU run's sums round: the same run, seed and
    method reproduce to the last digit on one machine, while another processor (AVX2 rather than AVX-512
    kernels) or thread count gives a trajectory that differs by a few tenths of a point after some
    hundred noisy steps.
    """
    import opacus

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "opacus": opacus.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "cudnn": cudnn if torch.cuda.is_available() else None,
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def device_name(device: torch.device) -> str:
    """A human-readable device name, e.g. 'NVIDIA H200' or 'cpu (x86_64, 2 threads)'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def git_state(root: str | Path = ".") -> tuple[str | None, bool | None]:
    """(revision, dirty) of the repository at ``root``; (None, None) outside git."""
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return revision, bool(status.strip())


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; a clear error for an unavailable request."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
    return device
