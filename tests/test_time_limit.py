"""A run stopped by its time limit at an epoch boundary and resumed gives the uninterrupted run's record:
the Poisson sampler's, the noise's and the augmentation's random states and the accountant's steps all
come back from the checkpoint."""

from __future__ import annotations

import argparse

import pytest

from smoothnet.training import cli
from smoothnet.training.config import TrainConfig
from smoothnet.training.trainer import RunPaths, TimeLimitReached, train
from tests.support.learnable import small_dp_run

PARAMS = small_dp_run("limited", epochs=3, momentum=0.9, grad_sample_mode="fast", augmentation_multiplicity=2)


class EpochClock:
    """A clock on which every epoch takes ``epoch_s`` seconds and nothing else takes any time."""

    def __init__(self, epoch_s: float) -> None:
        self.now, self.epoch_s = 0.0, epoch_s

    def __call__(self) -> float:
        return self.now

    def epoch_done(self, epoch: int) -> None:
        self.now += self.epoch_s


def _without_performance(record: dict) -> dict:
    return {key: value for key, value in record.items() if key != "performance"}


def test_a_time_limited_dp_run_resumed_gives_the_uninterrupted_record(prepared, tmp_path):
    config = TrainConfig.from_params(PARAMS)
    paths = RunPaths(prepared, tmp_path / "run", tmp_path / "ckpt")
    clock = EpochClock(10.0)
    # After epoch 1: 10 s + a 10 s epoch fits in 25 s; after epoch 2 another would end at 30 s.
    with pytest.raises(TimeLimitReached, match="after epoch 2 of 3") as stopped:
        train(config, paths, resolved_params=PARAMS, progress=False, time_limit_s=25.0, clock=clock,
              on_epoch_end=clock.epoch_done)  # fmt: skip
    assert stopped.value.checkpoint == paths.checkpoint_dir / "last.pt" and stopped.value.checkpoint.exists()
    assert not paths.record_path.exists()
    # The limit is no training parameter: a resume without it continues the checkpoint, never sets it aside.
    resumed = train(config, paths, resolved_params=PARAMS, progress=False)
    assert not list(paths.checkpoint_dir.glob("last.pt.*"))
    whole = train(config, RunPaths(prepared, tmp_path / "run2", tmp_path / "ckpt2"), resolved_params=PARAMS,
                  progress=False)  # fmt: skip
    assert _without_performance(resumed) == _without_performance(whole)
    assert resumed["privacy"]["steps"] == whole["privacy"]["planned_steps"]


def test_a_limit_the_last_epoch_fits_in_never_stops(prepared, tmp_path):
    params = {**PARAMS, "epochs": 1}
    config = TrainConfig.from_params(params)
    clock = EpochClock(10.0)
    record = train(config, RunPaths(prepared, tmp_path / "run", tmp_path / "ckpt"), progress=False,
                   time_limit_s=1.0, clock=clock, on_epoch_end=clock.epoch_done)  # fmt: skip
    assert record["training"]["epochs_completed"] == 1


def test_the_command_ends_in_one_line_and_exit_code_75(monkeypatch, tmp_path, capsys):
    def stops(args):
        raise TimeLimitReached("r", 2, 3, tmp_path / "last.pt")

    monkeypatch.setattr(cli, "_train", stops)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.main(parser.parse_args(["r", "--time-limit-minutes", "14"])) == cli.EXIT_TIME_LIMIT == 75
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "after epoch 2 of 3" in err and "run the same command to resume" in err


def test_a_non_positive_limit_is_refused_before_training(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["r", "--time-limit-minutes", "0", "--params", str(tmp_path / "none.yaml")])
    assert cli.main(args) == 2
    assert "--time-limit-minutes must be positive" in capsys.readouterr().err
