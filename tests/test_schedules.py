"""Learning-rate schedules: every rate equals its published formula, the trainer applies them per epoch or
per step, a killed and resumed run keeps the schedule exactly, and no schedule changes clipping, noise or
accounting."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from smoothnet.training.config import LR_SCHEDULES, ConfigError, TrainConfig
from smoothnet.training.schedules import SCHEDULE_UNITS, Schedule
from smoothnet.training.trainer import RunPaths, train

LR = 0.1


def _config(**overrides) -> TrainConfig:
    params = {"run_id": "s", "dataset": "cifar10", "model": "smoothnet", "lr": LR, "epochs": 6, **overrides}
    return TrainConfig.from_params(params)


def _rates(config: TrainConfig, steps_per_epoch: int) -> list[list[float]]:
    """The rate of every optimizer step, epoch by epoch, as the trainer drives the schedule."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    schedule = Schedule(config, optimizer, steps_per_epoch)
    epochs = []
    for _ in range(config.epochs):
        epoch = []
        for _ in range(steps_per_epoch):
            epoch.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.after_step()
        schedule.after_epoch()
        epochs.append(epoch)
    return epochs


def test_every_schedule_key_has_a_unit():
    assert set(LR_SCHEDULES) == set(SCHEDULE_UNITS)


def test_cosine_opacus_is_exactly_the_opacus_cifar10_example():
    # Opacus examples/cifar10.py: for epoch in range(1, epochs + 1) with --lr-schedule cos.
    epochs = 90
    expected = [LR * 0.5 * (1 + np.cos(np.pi * epoch / (epochs + 1))) for epoch in range(1, epochs + 1)]
    rates = _rates(_config(lr_schedule="cosine_opacus", epochs=epochs), steps_per_epoch=3)
    assert all(len(set(epoch)) == 1 for epoch in rates)  # constant within an epoch
    assert [epoch[0] for epoch in rates] == pytest.approx(expected, rel=1e-14, abs=0)
    assert rates[0][0] < LR and rates[-1][0] > 0


def test_cosine_epoch_is_torch_cosine_annealing_per_epoch():
    epochs = 7
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    expected = []
    for _ in range(epochs):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    rates = _rates(_config(lr_schedule="cosine_epoch", epochs=epochs), steps_per_epoch=4)
    assert [epoch[0] for epoch in rates] == pytest.approx(expected, rel=1e-12, abs=0)
    assert all(len(set(epoch)) == 1 for epoch in rates)
    assert rates[0][0] == LR


def test_cosine_step_decays_every_optimizer_step():
    epochs, per_epoch = 4, 5
    total = epochs * per_epoch
    rates = [
        r for epoch in _rates(_config(lr_schedule="cosine_step", epochs=epochs), per_epoch) for r in epoch
    ]
    expected = [LR * 0.5 * (1 + math.cos(math.pi * t / total)) for t in range(total)]
    assert rates == pytest.approx(expected, rel=1e-14, abs=0)
    assert rates[0] == LR and all(a > b for a, b in zip(rates, rates[1:], strict=False))


@pytest.mark.parametrize("schedule", ["cosine_opacus", "cosine_epoch", "constant", "step"])
def test_linear_warmup_per_epoch_then_the_schedule_over_the_remaining_epochs(schedule):
    epochs, warmup = 8, 3
    config = _config(
        lr_schedule=schedule, epochs=epochs, lr_warmup_epochs=warmup, lr_step_size=2, lr_gamma=0.5
    )
    rates = [epoch[0] for epoch in _rates(config, steps_per_epoch=2)]
    n = epochs - warmup
    after = {
        "cosine_opacus": [0.5 * (1 + math.cos(math.pi * e / (n + 1))) for e in range(1, n + 1)],
        "cosine_epoch": [0.5 * (1 + math.cos(math.pi * i / n)) for i in range(n)],
        "constant": [1.0] * n,
        "step": [0.5 ** (i // 2) for i in range(n)],
    }[schedule]
    expected = [LR * (e + 1) / warmup for e in range(warmup)] + [LR * f for f in after]
    assert rates == pytest.approx(expected, rel=1e-14, abs=0)


def test_linear_warmup_of_a_per_step_schedule_ramps_per_step():
    epochs, per_epoch, warmup = 4, 5, 1
    config = _config(lr_schedule="cosine_step", epochs=epochs, lr_warmup_epochs=warmup)
    rates = [r for epoch in _rates(config, per_epoch) for r in epoch]
    w, n = warmup * per_epoch, (epochs - warmup) * per_epoch
    expected = [LR * (t + 1) / w for t in range(w)] + [
        LR * 0.5 * (1 + math.cos(math.pi * i / n)) for i in range(n)
    ]
    assert rates == pytest.approx(expected, rel=1e-14, abs=0)


def test_step_and_constant_without_warmup_are_the_stored_runs_schedules_bit_for_bit():
    config = _config(lr_schedule="step", epochs=12, lr_step_size=5, lr_gamma=0.9)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    reference = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.9)
    expected = []
    for _ in range(12):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    assert [epoch[0] for epoch in _rates(config, steps_per_epoch=2)] == expected
    assert {r for epoch in _rates(_config(lr_schedule="constant"), 2) for r in epoch} == {LR}


@pytest.mark.parametrize("schedule", sorted(SCHEDULE_UNITS))
def test_a_schedule_restored_mid_run_continues_exactly(schedule):
    config = _config(lr_schedule=schedule, epochs=5, lr_warmup_epochs=1)
    full = [r for epoch in _rates(config, 3) for r in epoch]

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    first = Schedule(config, optimizer, 3)
    for t in range(2 * 3):  # two epochs, then "killed"
        optimizer.step()
        first.after_step()
        if (t + 1) % 3 == 0:
            first.after_epoch()
    saved_optimizer, saved_schedule = optimizer.state_dict(), first.state_dict()

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    resumed = Schedule(config, optimizer, 3)
    optimizer.load_state_dict(saved_optimizer)
    resumed.load_state_dict(saved_schedule)
    rest = []
    for t in range(3 * 3):
        rest.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        resumed.after_step()
        if (t + 1) % 3 == 0:
            resumed.after_epoch()
    assert rest == full[6:]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr_schedule": "cosine"}, "lr_schedule must be one of"),
        ({"lr_warmup_epochs": -1}, "lr_warmup_epochs must be in [0, epochs=6)"),
        ({"lr_warmup_epochs": 6}, "lr_warmup_epochs must be in [0, epochs=6)"),
    ],
)
def test_invalid_schedule_keys_fail_naming_the_key(overrides, message):
    with pytest.raises(
        ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    ):
        _config(**overrides)


# ----------------------------------------------------------------------------- through the trainer

BASE = dict(
    run_id="t",
    dataset="cifar10",
    model="smoothnet",
    model_options={"width": 0.5, "depth": 1.0},
    target_epsilon=8.0,
    delta=1e-3,
    max_grad_norm=1.0,
    epochs=3,
    logical_batch_size=64,
    physical_batch_size=32,  # below the logical batch: the schedule counts logical steps only
    lr=1.0,
    momentum=0.0,
    weight_decay=0.0,
    grad_sample_mode="hooks",
    seed=0,
)
STEPS_PER_EPOCH = 5  # 320 training examples at logical batch 64 (sample rate 1/5)


class Killed(Exception):
    pass


def _kill_after_first(epoch):
    if epoch == 1:
        raise Killed


def _train(prepared: Path, where: Path, kill: bool = False, **overrides):
    torch.set_num_threads(1)
    params = {**BASE, **overrides}
    config = TrainConfig.from_params(params)
    paths = RunPaths(prepared, where / "run", where / "ckpt")
    if kill:
        with pytest.raises(Killed):
            train(config, paths, resolved_params=params, progress=False, on_epoch_end=_kill_after_first)
        assert not paths.record_path.exists() and (paths.checkpoint_dir / "last.pt").exists()
    return train(config, paths, resolved_params=params, progress=False)


@pytest.fixture(scope="module")
def cosine_step_run(prepared, tmp_path_factory):
    return _train(prepared, tmp_path_factory.mktemp("cos"), lr_schedule="cosine_step", lr_warmup_epochs=1)


def test_the_record_says_which_schedule_ran_and_every_epochs_rate(cosine_step_run):
    training, history = cosine_step_run["training"], cosine_step_run["results"]["history"]
    assert training["lr_schedule"] == "cosine_step"
    assert training["lr_schedule_detail"] == {
        "name": "cosine_step",
        "unit": "step",
        "warmup_units": STEPS_PER_EPOCH,
        "total_units": 3 * STEPS_PER_EPOCH,
        "definition": "smoothnet.training.schedules.rate_factor",
    }
    n = 2 * STEPS_PER_EPOCH  # the steps after the warm-up epoch
    first_step_of_epoch = [1.0 / STEPS_PER_EPOCH] + [0.5 * (1 + math.cos(math.pi * i / n)) for i in (0, 5)]
    assert [h["lr"] for h in history] == pytest.approx(first_step_of_epoch, rel=1e-14, abs=0)
    assert cosine_step_run["privacy"]["steps"] == cosine_step_run["privacy"]["planned_steps"]


def test_killed_and_resumed_run_keeps_a_per_step_schedule_exactly(prepared, cosine_step_run, tmp_path):
    resumed = _train(prepared, tmp_path, kill=True, lr_schedule="cosine_step", lr_warmup_epochs=1)
    assert resumed["results"]["history"] == cosine_step_run["results"]["history"]
    assert resumed["privacy"] == cosine_step_run["privacy"]


def test_killed_and_resumed_run_keeps_a_per_epoch_schedule_exactly(prepared, tmp_path):
    uninterrupted = _train(prepared, tmp_path / "full", lr_schedule="cosine_opacus")
    resumed = _train(prepared, tmp_path / "killed", kill=True, lr_schedule="cosine_opacus")
    assert resumed["results"]["history"] == uninterrupted["results"]["history"]
    expected = [0.5 * (1 + np.cos(np.pi * epoch / 4)) for epoch in (1, 2, 3)]
    assert [h["lr"] for h in uninterrupted["results"]["history"]] == pytest.approx(expected, rel=1e-14, abs=0)


def test_no_schedule_touches_clipping_noise_or_accounting(prepared, cosine_step_run, tmp_path):
    constant = _train(prepared, tmp_path, lr_schedule="constant")
    assert [h["lr"] for h in constant["results"]["history"]] != [
        h["lr"] for h in cosine_step_run["results"]["history"]
    ]
    assert constant["results"]["history"] != cosine_step_run["results"]["history"]  # a different training
    privacy = dict(cosine_step_run["privacy"])
    assert privacy["epsilon"] is not None and privacy["noise_multiplier"] > 0
    assert constant["privacy"] == privacy  # noise, clip, sample rate, steps, accountant history, epsilon
    assert [h["epsilon"] for h in constant["results"]["history"]] == [
        h["epsilon"] for h in cosine_step_run["results"]["history"]
    ]
