"""A run's per-sample method is chosen by timing (autotune), so two runs of the same params on one machine
may use different methods, which round differently. The record names the method it used; a re-run with
``grad_sample_mode`` set to it skips the timing and gives the record's numbers exactly."""

from __future__ import annotations

import pytest

from smoothnet.training.config import ConfigError, TrainConfig
from smoothnet.training.trainer import RunPaths, train
from tests.support.learnable import small_dp_run

PARAMS = small_dp_run("autotuned", epochs=2, momentum=0.9, grad_sample_mode="auto", autotune_method=True)


def _comparable(record: dict) -> dict:
    """The record without what differs by design: wall times, the run's params, how the method was chosen."""
    privacy = {key: value for key, value in record["privacy"].items() if key != "method_choice"}
    return {"results": record["results"], "privacy": privacy, "model": record["model"]}


@pytest.mark.slow
def test_a_rerun_with_the_recorded_method_gives_the_autotuned_record(prepared, tmp_path):
    tuned = train(TrainConfig.from_params(PARAMS), RunPaths(prepared, tmp_path / "a", tmp_path / "ca"),
                  resolved_params=PARAMS, progress=False)  # fmt: skip
    assert tuned["privacy"]["method_choice"]["source"] == "autotune"
    recorded = tuned["privacy"]["grad_sample_mode"]
    pinned_params = {**PARAMS, "grad_sample_mode": recorded}
    pinned = train(TrainConfig.from_params(pinned_params), RunPaths(prepared, tmp_path / "b", tmp_path / "cb"),
                   resolved_params=pinned_params, progress=False)  # fmt: skip
    assert pinned["privacy"]["method_choice"]["source"] == "config"
    assert pinned["privacy"]["grad_sample_mode"] == recorded
    assert _comparable(pinned) == _comparable(tuned)


@pytest.mark.parametrize("mode", ["fast:auto+grouped", "fast:materialize+unfold", "fast:ghost", "hooks"])
def test_every_recorded_method_form_is_a_valid_grad_sample_mode(mode):
    assert TrainConfig.from_params({**PARAMS, "grad_sample_mode": mode}).grad_sample_mode == mode


@pytest.mark.parametrize("mode", ["fast:auto+im2col", "fast:sparse", "opacus", "fast+grouped"])
def test_an_unknown_method_fails_naming_the_valid_forms(mode):
    with pytest.raises(ConfigError, match="grad_sample_mode must be auto or a per-sample method.*<clipping>"):
        TrainConfig.from_params({**PARAMS, "grad_sample_mode": mode})


def test_channels_last_is_still_refused_with_an_opacus_mode():
    with pytest.raises(ConfigError, match="channels_last"):
        TrainConfig.from_params({**PARAMS, "grad_sample_mode": "hooks", "channels_last": True})
