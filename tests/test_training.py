"""The training engine end to end on a small learnable dataset: learning under DP, the run record,
determinism, resume equivalence, and clear errors for bad parameters before any training."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from smoothnet.privacy.accounting import compute_epsilon
from smoothnet.records import load_record, validate_record
from smoothnet.training.config import ConfigError, TrainConfig
from smoothnet.training.trainer import RunPaths, TrainingDiverged, train

BASE = dict(
    run_id="t",
    dataset="cifar10",
    model="smoothnet",
    study="main",
    model_options={"width": 0.5, "depth": 1.0},
    private=True,
    target_epsilon=8.0,
    delta=1e-3,
    max_grad_norm=1.0,
    epochs=3,
    logical_batch_size=64,
    physical_batch_size=32,
    lr=1.0,
    momentum=0.0,
    weight_decay=0.0,
    lr_schedule="constant",
    grad_sample_mode="hooks",
    seed=0,
)


def run(prepared: Path, where: Path, **overrides):
    params = {**BASE, **overrides}
    config = TrainConfig.from_params(params)
    paths = RunPaths(prepared, where / "run", where / "ckpt")
    return train(config, paths, resolved_params=params, progress=False)


@pytest.fixture(scope="module")
def dp_run(prepared, tmp_path_factory):
    torch.set_num_threads(1)
    where = tmp_path_factory.mktemp("dp")
    return run(prepared, where), where


def test_learns_under_dp_and_record_is_complete(dp_run):
    record, where = dp_run
    validate_record(record)
    assert load_record(where / "run" / "record.json") == record
    assert (where / "run" / "dvclive" / "metrics.json").exists()
    assert (where / "run" / "dvclive" / "plots" / "metrics").is_dir()
    results, privacy = record["results"], record["privacy"]
    assert results["final_test_accuracy"] > 0.4  # chance is 0.1; it reaches ~0.65
    assert privacy["sampling"] == "poisson" and privacy["accountant"] == "rdp"
    assert privacy["steps"] == privacy["planned_steps"] == 3 * 5  # N=320, batch 64 -> len(loader)=5
    assert privacy["sample_rate"] == pytest.approx(1 / 5)
    assert privacy["epsilon"] <= 8.0 + 0.01
    assert privacy["epsilon"] == pytest.approx(8.0, abs=0.05)
    recomputed = compute_epsilon(
        privacy["noise_multiplier"], privacy["sample_rate"], privacy["steps"], 1e-3, "rdp"
    )
    assert privacy["epsilon"] == pytest.approx(recomputed, abs=1e-9)
    assert privacy["epsilon_by_accountant"]["prv"] < privacy["epsilon_by_accountant"]["rdp"]
    assert record["model"]["has_batchnorm"] is False
    assert record["dataset"]["n_train"] == 320 and record["dataset"]["n_val"] == 80
    assert len(results["history"]) == 3


def _comparable(record):
    history = copy.deepcopy(record["results"]["history"])
    return history, record["privacy"]["epsilon"], record["privacy"]["steps"]


class Killed(Exception):
    pass


def _kill_after_first(epoch):
    if epoch == 1:
        raise Killed


def _killed_then_resumed(prepared, where, **overrides):
    params = {**BASE, **overrides}
    config = TrainConfig.from_params(params)
    paths = RunPaths(prepared, where / "run", where / "ckpt")
    with pytest.raises(Killed):
        train(config, paths, resolved_params=params, progress=False, on_epoch_end=_kill_after_first)
    assert not paths.record_path.exists() and (paths.checkpoint_dir / "last.pt").exists()
    return train(config, paths, resolved_params=params, progress=False)


def test_killed_dp_run_resumes_to_the_same_result_deterministically(prepared, dp_run, tmp_path):
    # Also the determinism check: a second run with the same seed, interrupted or not, gives the same record.
    resumed = _killed_then_resumed(prepared, tmp_path)
    assert _comparable(resumed) == _comparable(dp_run[0])


def test_killed_non_private_run_resumes_to_the_same_result(prepared, tmp_path):
    extra = {"private": False, "target_epsilon": None, "lr": 0.05, "epochs": 2}
    uninterrupted = run(prepared, tmp_path / "full", **extra)
    assert _comparable(_killed_then_resumed(prepared, tmp_path / "killed", **extra)) == _comparable(
        uninterrupted
    )


def test_another_seed_gives_another_run(prepared, dp_run, tmp_path):
    other = run(prepared, tmp_path, epochs=1, seed=1)
    assert other["results"]["history"][0] != dp_run[0]["results"]["history"][0]


def test_changed_parameters_do_not_resume_a_stale_checkpoint(prepared, tmp_path):
    run(prepared, tmp_path, epochs=1)
    record = run(prepared, tmp_path, epochs=1, lr=0.1)
    assert record["results"]["history"][0]["lr"] == 0.1
    assert (tmp_path / "ckpt" / "last.pt.stale").exists()


def test_non_finite_loss_stops_with_a_clear_error(prepared, tmp_path):
    with pytest.raises(TrainingDiverged, match="loss became"):
        run(prepared, tmp_path, private=False, target_epsilon=None, lr=1e30, momentum=0.0)
    assert not (tmp_path / "run" / "record.json").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"target_epsilon": 0.0}, "target_epsilon"),
        ({"target_epsilon": -1.0}, "target_epsilon"),
        ({"delta": 1.5}, "delta"),
        ({"physical_batch_size": 128}, "physical_batch_size"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"accountant": "gdp"}, "accountant"),
        ({"poisson_sampling": False}, "allow_non_poisson"),
        ({"noise_multiplier": 1.0}, "only one of"),
        ({"epochs": 0}, "epochs"),
        ({"grad_sample_mode": "magic"}, "grad_sample_mode"),
        ({"learning_rate": 0.1}, "unknown training key"),
        ({"channels_last": True}, "wrong per-sample gradients"),
        ({"autocast_bf16": True}, "autocast_bf16"),
    ],
)
def test_invalid_parameters_fail_before_training(overrides, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_params({**BASE, **overrides})


def test_dataset_dependent_checks_fail_before_training(prepared, tmp_path):
    with pytest.raises(ConfigError, match="delta must be < 1/N"):
        run(prepared, tmp_path, delta=0.01)
    with pytest.raises(ValueError, match="unknown model"):
        run(prepared, tmp_path, model="resnet1000")
    assert not (tmp_path / "ckpt").exists()


def test_auto_method_is_the_measured_fastest_and_ours_where_only_ours_can():
    from smoothnet.training.trainer import resolve_method

    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    paper = TrainConfig.from_params(
        {**BASE, "model": "resnet9", "model_options": {}, "grad_sample_mode": "auto"}
    )
    assert resolve_method(paper, cuda, 32) == "hooks"  # measured fastest on CUDA for ResNet-9
    assert resolve_method(paper, cuda, 224) == "hooks"  # no 224 entry: the model's own
    wide = TrainConfig.from_params(
        {**BASE, "model": "smoothnet_w80d50", "model_options": {}, "grad_sample_mode": "auto"}
    )
    assert resolve_method(wide, cuda, 224) == "fast:auto+grouped"
    for only_ours in ({"augmentation_multiplicity": 2}, {"autocast_bf16": True}):
        config = TrainConfig.from_params(
            {**BASE, "model": "resnet9", "model_options": {}, "grad_sample_mode": "auto", **only_ours}
        )
        assert resolve_method(config, cuda, 32).startswith("fast:")
    assert (
        resolve_method(TrainConfig.from_params({**BASE, "grad_sample_mode": "fast"}), cuda, 32) == "fast:auto"
    )


def test_bf16_autocast_trains_with_fast_clipping(prepared, tmp_path, monkeypatch):
    from smoothnet.privacy import fast_clipping

    seen = []
    original = fast_clipping.ClippedGradientModule.clipped_backward

    def spy(self, per_sample_loss, group_size=1):
        seen.append(per_sample_loss.dtype)
        return original(self, per_sample_loss, group_size)

    monkeypatch.setattr(fast_clipping.ClippedGradientModule, "clipped_backward", spy)
    record = run(prepared, tmp_path, autocast_bf16=True, grad_sample_mode="fast", epochs=1)
    assert record["training"]["autocast_bf16"] is True
    assert record["privacy"]["grad_sample_mode"] == "fast:auto"
    assert seen and set(seen) == {torch.float32}  # loss (and clipping) in fp32 after a bf16 forward
    assert all(h["val_accuracy"] > 0.1 for h in record["results"]["history"])  # learns: no NaN forward
    assert all("train_loss" not in h for h in record["results"]["history"])  # a DP run records no raw stats


def test_method_choice_sees_the_datasets_resolution(prepared, tmp_path, monkeypatch):
    from smoothnet.privacy import method_select

    asked = []
    original = method_select.choose_method

    def spy(model_name, device_type, image_size=None, ours_only=False):
        asked.append((model_name, device_type, image_size, ours_only))
        return original(model_name, device_type, image_size, ours_only)

    monkeypatch.setattr(method_select, "choose_method", spy)
    run(prepared, tmp_path, grad_sample_mode="auto", epochs=1)
    assert asked and all(a == ("smoothnet", "cpu", 32, False) for a in asked)


def test_non_poisson_runs_only_when_allowed_and_are_recorded(prepared, tmp_path):
    record = run(prepared, tmp_path, poisson_sampling=False, allow_non_poisson=True, epochs=1)
    assert record["privacy"]["sampling"] == "shuffle"
