"""A checkpoint resumes across edits outside the training code and refuses to resume across edits to it.

The training code is the trainer's import closure; the test edits a copy of the package (pointed at by
``checkpoint.CODE_ROOT``), never the working tree.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch

from smoothnet.training import checkpoint
from smoothnet.training.config import TrainConfig
from smoothnet.training.trainer import RunPaths, train
from tests.support.learnable import prepare_learnable

ROOT = Path(__file__).resolve().parents[1]
PARAMS = dict(
    run_id="fp",
    dataset="cifar10",
    model="smoothnet",
    study="main",
    model_options={"width": 0.5, "depth": 1.0},
    private=False,
    target_epsilon=None,
    max_grad_norm=1.0,
    epochs=2,
    logical_batch_size=64,
    physical_batch_size=64,
    lr=0.05,
    momentum=0.0,
    weight_decay=0.0,
    lr_schedule="constant",
    seed=0,
)


class Killed(Exception):
    pass


def _kill_after_first(epoch):
    if epoch == 1:
        raise Killed


@pytest.fixture()
def killed_run(tmp_path, monkeypatch):
    """A run killed after its first epoch, with the fingerprint read from a copy of the package."""
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fingerprint warning: this is not the official CIFAR-10
        prepared = prepare_learnable(tmp_path / "data")
    code = tmp_path / "code"
    shutil.copytree(ROOT / "smoothnet", code / "smoothnet", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(checkpoint, "CODE_ROOT", code)
    config = TrainConfig.from_params(PARAMS)
    paths = RunPaths(prepared, tmp_path / "run", tmp_path / "ckpt")
    with pytest.raises(Killed):
        train(config, paths, resolved_params=PARAMS, progress=False, on_epoch_end=_kill_after_first)
    return config, paths, code


def _resume(config, paths):
    return train(config, paths, resolved_params=PARAMS, progress=False)


def test_an_edit_to_the_report_keeps_the_resume(killed_run, capsys):
    config, paths, code = killed_run
    with open(code / "smoothnet/report/style.py", "a") as handle:
        handle.write("\n# a caption fix\n")
    record = _resume(config, paths)
    assert "not resuming" not in capsys.readouterr().out
    assert not (paths.checkpoint_dir / "last.pt.stale").exists()
    assert record["results"]["history"][0]["epoch"] == 1 and len(record["results"]["history"]) == 2


def test_an_edit_to_the_trainer_refuses_the_resume_naming_the_file(killed_run, capsys):
    config, paths, code = killed_run
    with open(code / "smoothnet/training/trainer.py", "a") as handle:
        handle.write("\n# a bug fix\n")
    _resume(config, paths)
    out = capsys.readouterr().out
    assert "not resuming the checkpoint: the training code changed" in out
    assert "smoothnet/training/trainer.py" in out
    assert (paths.checkpoint_dir / "last.pt.stale").exists()
