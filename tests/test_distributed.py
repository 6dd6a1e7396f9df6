"""Multi-process DP training under torchrun (gloo on CPU, 2 processes): the same trainer, Opacus' DPDDP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings

import pytest
import yaml

from smoothnet.records import load_record
from smoothnet.training.distributed import DistributedContext, sampling_seed
from tests.support.learnable import prepare_learnable

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_every_rank_samples_from_its_own_stream():
    seeds = {sampling_seed(0, DistributedContext(world_size=4, rank=r)) for r in range(4)}
    assert len(seeds) == 4
    assert sampling_seed(3, DistributedContext()) == 3


@pytest.mark.parametrize("mode", ["hooks", "fast"])
def test_torchrun_two_processes_trains_with_dp(tmp_path, mode):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_learnable(tmp_path / "data")
    params = {
        "profile": "test",
        "train": {
            "study": "main",
            "private": True,
            "target_epsilon": 8.0,
            "delta": 1e-3,
            "max_grad_norm": 1.0,
            "epochs": 3,
            "logical_batch_size": 64,
            "physical_batch_size": 32,
            "lr": 1.0,
            "momentum": 0.0,
            "weight_decay": 0.0,
            "lr_schedule": "constant",
            "grad_sample_mode": mode,
            "seed": 0,
            "model_options": {"width": 0.5, "depth": 1.0},
        },
        "runs": {"ddp": {"dataset": "cifar10", "model": "smoothnet"}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "smoothnet.cli",
        "train",
        "ddp",
        "--params",
        str(tmp_path / "params.yaml"),
        "--data-root",
        str(prepared.parent),
        "--runs",
        str(tmp_path / "runs"),
        "--checkpoints",
        str(tmp_path / "ckpt"),
        "--device",
        "cpu",
        "--no-progress",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = load_record(tmp_path / "runs" / "ddp" / "record.json")
    privacy = record["privacy"]
    assert record["training"]["world_size"] == 2
    assert privacy["steps"] == privacy["planned_steps"] == 15
    assert privacy["epsilon"] == pytest.approx(8.0, abs=0.05)
    assert privacy["expected_batch_size"] == pytest.approx(32)  # per rank: int(N q) / world size
    assert record["results"]["final_test_accuracy"] > 0.3  # chance is 0.1


def test_unsafe_distributed_setups_are_refused_before_training():
    from smoothnet.training.config import ConfigError, TrainConfig
    from smoothnet.training.trainer import _check_private_setup

    base = dict(
        run_id="r", dataset="cifar10", model="smoothnet", logical_batch_size=64, physical_batch_size=32
    )
    two = DistributedContext(world_size=2, rank=0)
    _check_private_setup(TrainConfig.from_params(base), "fast:auto", False, two, 1000)
    with pytest.raises(ConfigError, match="per rank"):  # empty Poisson batches would desynchronise ranks
        _check_private_setup(
            TrainConfig.from_params(base), "fast:auto", False, DistributedContext(4, 0), 1000
        )
    shuffled = TrainConfig.from_params({**base, "poisson_sampling": False, "allow_non_poisson": True})
    with pytest.raises(ConfigError, match="world_size times"):
        _check_private_setup(shuffled, "fast:auto", False, two, 1000)
    with pytest.raises(ConfigError, match="wrong per-sample"):
        _check_private_setup(TrainConfig.from_params(base), "hooks", True, DistributedContext(), 1000)
