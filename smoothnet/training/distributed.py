"""Multi-process training under ``torchrun``: one process per GPU (or CPU process with gloo).

DP runs use Opacus' ``DifferentiallyPrivateDistributedDataParallel``: each rank Poisson-samples its shard
of the data at the same rate q, clips its examples, and rank 0 alone adds the noise before the gradients are
summed, so the released update is the single-process mechanism. Each rank draws its sampling coins from
its own seed: ranks sharing one RNG stream would include examples in correlated pairs, which breaks the
independence that Poisson-subsampling amplification assumes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistributedContext:
    """Rank facts of this process; ``enabled`` is False for an ordinary single-process run."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistributedContext:
        """Read torchrun's WORLD_SIZE / RANK / LOCAL_RANK (absent: single process)."""
        return cls(
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )


def init_distributed(context: DistributedContext, device: torch.device) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU) if this is a multi-process run."""
    if not context.enabled or torch.distributed.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend)


def rank_device(context: DistributedContext, requested: torch.device) -> torch.device:
    """Under torchrun on CUDA, each rank takes the GPU of its LOCAL_RANK."""
    if context.enabled and requested.type == "cuda":
        torch.cuda.set_device(context.local_rank)
        return torch.device("cuda", context.local_rank)
    return requested


def sampling_seed(seed: int, context: DistributedContext) -> int:
    """The seed of this rank's sampling/noise RNG stream (distinct per rank, reproducible per seed)."""
    return seed + 1_000_003 * context.rank
