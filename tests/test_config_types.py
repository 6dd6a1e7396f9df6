"""Every training key is checked against its declared type before any data is loaded: a typo never costs
a run, and a wrong type never changes what is trained (``epochs: 2.5`` once overspent the budget)."""

from __future__ import annotations

import time

import pytest

from smoothnet.models.registry import list_models, model_entry
from smoothnet.training.config import ConfigError, TrainConfig, value_matches

BASE = dict(
    run_id="t",
    dataset="cifar10",
    model="smoothnet",
    model_options={"width": 0.5, "depth": 1.0},
    target_epsilon=8.0,
    delta=1e-3,
    epochs=3,
    logical_batch_size=64,
    physical_batch_size=32,
)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"seed": 1.5}, "seed"),
        ({"epochs": 2.5}, "epochs"),
        ({"epochs": "2"}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"private": "false"}, "private"),
        ({"private": 0}, "private"),
        ({"lr": "0.1"}, "lr"),
        ({"logical_batch_size": 1.28e2}, "logical_batch_size"),
        ({"weight_decay": float("nan")}, "weight_decay"),
        ({"max_grad_norm": float("inf")}, "max_grad_norm"),
        ({"momentum": None}, "momentum"),
        ({"target_epsilon": None, "noise_multiplier": 0.0}, "noise_multiplier"),
        ({"target_epsilon": None, "noise_multiplier": 0}, "noise_multiplier"),
        ({"channels_last": "yes"}, "channels_last"),
        ({"model_options": {"width": "wide"}}, "model_options.width"),
        ({"model_options": {"widht": 2.0}}, "model_options"),
        ({"model": "smoothnett"}, "model"),
        ({"model_options": "wide"}, "model_options"),
    ],
)
def test_wrong_type_fails_at_once_naming_the_key(overrides, key):
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"run 't': {key}\b"):
        TrainConfig.from_params({**BASE, **overrides})
    assert time.perf_counter() - started < 1.0


def test_ints_are_valid_floats_and_null_where_optional():
    config = TrainConfig.from_params({**BASE, "lr": 1, "ema_decay": None, "channels_last": None})
    assert config.lr == 1


def test_value_matches_is_strict_about_bools_ints_and_finiteness():
    assert value_matches(3, int) and not value_matches(3.0, int) and not value_matches(True, int)
    assert value_matches(3, float) and not value_matches(float("nan"), float)
    assert value_matches(None, float | None) and not value_matches("1", float | None)
    assert value_matches({"a": 1}, dict[str, int]) and not value_matches({"a": "1"}, dict[str, int])


@pytest.mark.parametrize("name", list_models())
def test_every_model_constructor_has_checkable_annotations(name):
    import typing

    typing.get_type_hints(model_entry(name).constructor)  # raises if an annotation does not resolve
