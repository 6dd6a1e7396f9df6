"""The trainer under faults: planted or truncated checkpoints, a second trainer of the same run, orphaned
temporary files, a full disk while checkpointing, an unwritable checkpoint folder."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from smoothnet.training import trainer as trainer_module
from smoothnet.training.config import ConfigError, TrainConfig
from smoothnet.training.runlock import RunLocked, hold_run_lock
from smoothnet.training.trainer import RunPaths, train
from tests.support.learnable import small_dp_run

PARAMS = small_dp_run("faults", grad_sample_mode="hooks")


def _train(data_dir: Path, where: Path):
    config = TrainConfig.from_params(PARAMS)
    return train(config, RunPaths(data_dir, where / "run", where / "ckpt"), progress=False)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_planted_checkpoint_is_set_aside_unexecuted_and_the_run_starts_over(prepared, tmp_path, capsys):
    marker = tmp_path / "pwned"
    (tmp_path / "ckpt").mkdir()
    torch.save({"config_fingerprint": "x", "payload": _Exploit(marker)}, tmp_path / "ckpt" / "last.pt")
    record = _train(prepared, tmp_path)
    assert not marker.exists()
    assert record["training"]["epochs_completed"] == 1
    assert (tmp_path / "ckpt" / "last.pt.unreadable").exists()
    assert "last.pt: unreadable checkpoint" in capsys.readouterr().out


def test_truncated_checkpoint_is_named_set_aside_and_the_run_starts_over(prepared, tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    torch.save({"config_fingerprint": "x", "w": torch.zeros(10_000)}, tmp_path / "ckpt" / "last.pt")
    data = (tmp_path / "ckpt" / "last.pt").read_bytes()
    (tmp_path / "ckpt" / "last.pt").write_bytes(data[: len(data) // 3])
    record = _train(prepared, tmp_path)
    assert record["training"]["epochs_completed"] == 1
    assert (tmp_path / "ckpt" / "last.pt.unreadable").exists()
    assert "unreadable checkpoint" in capsys.readouterr().out


def test_second_trainer_of_the_same_run_stops_at_once_naming_the_first(tmp_path):
    with hold_run_lock(tmp_path / "ckpt", "faults"):
        # a data folder that does not exist: the lock is refused before any data is read
        with pytest.raises(RunLocked, match=rf"already being trained by pid {os.getpid()}"):
            _train(tmp_path / "no-data", tmp_path)
    assert not (tmp_path / "run").exists()


def test_lock_is_released_after_a_run(prepared, tmp_path):
    _train(prepared, tmp_path)
    with hold_run_lock(tmp_path / "ckpt", "faults"):
        pass


def test_orphaned_temporary_files_are_removed_at_start(prepared, tmp_path):
    for folder, name in (("ckpt", ".last.pt.abc123.tmp"), ("run", ".record.json.xyz.tmp")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b"half")
    _train(prepared, tmp_path)
    assert not list(tmp_path.rglob("*.tmp"))


def test_full_disk_while_checkpointing_logs_no_metrics_for_that_epoch(prepared, tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer_module, "save_checkpoint", full_disk)
    with pytest.raises(OSError, match="No space"):
        _train(prepared, tmp_path)
    assert not list((tmp_path / "run").rglob("*.tsv")), "DVCLive logged an epoch whose checkpoint was lost"


def test_unwritable_checkpoint_folder_fails_before_loading_data(tmp_path):
    (tmp_path / "ckpt").write_text("a file where the folder should be")
    with pytest.raises(ConfigError, match="cannot write to .*ckpt"):
        _train(tmp_path / "no-data", tmp_path)


def test_checkpoint_with_ema_prv_and_step_schedule_resumes_weights_only(prepared, tmp_path):
    params = {**PARAMS, "epochs": 2, "ema_decay": 0.9, "accountant": "prv", "lr_schedule": "step",
              "lr_step_size": 1, "lr_gamma": 0.5, "grad_sample_mode": "fast"}  # fmt: skip
    config = TrainConfig.from_params(params)
    paths = RunPaths(prepared, tmp_path / "run", tmp_path / "ckpt")

    def killed(epoch):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, paths, progress=False, on_epoch_end=killed)
    resumed = train(config, paths, progress=False)
    uninterrupted = train(config, RunPaths(prepared, tmp_path / "run2", tmp_path / "ckpt2"), progress=False)
    assert resumed["results"]["history"] == uninterrupted["results"]["history"]
    assert resumed["privacy"]["epsilon"] == uninterrupted["privacy"]["epsilon"]
