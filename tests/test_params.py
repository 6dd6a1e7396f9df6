"""params.yaml composes (train <- models.<model> <- recipes.<recipe> <- the run's keys) and still resolves
every stored run to exactly the params its record holds, key for key and type for type."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from smoothnet.params import ParamsError, load_params, params_from_lock, resolve_run, run_layers
from smoothnet.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILES = ["params.yaml", "params.quick.yaml"]
RECORDS = sorted(p for folder in ("runs", "ablations/runs") for p in (ROOT / folder).glob("*/record.json"))
CODE_ONLY_FIELDS = {"run_id", "dataset", "model", "allow_non_poisson", "channels_last"}


@pytest.mark.parametrize("record_path", RECORDS, ids=[p.parent.name for p in RECORDS])
def test_stored_record_params_equal_what_params_yaml_resolves_to(record_path):
    record = json.loads(record_path.read_text())
    resolved = resolve_run(load_params(ROOT / "params.yaml"), record["run_id"])
    assert resolved == record["params"]
    # equal as JSON too, so 1 and 1.0 (int and float) count as different
    assert json.dumps(resolved, sort_keys=True) == json.dumps(record["params"], sort_keys=True)


def test_there_are_stored_records_to_compare():
    assert RECORDS


def _layered() -> dict:
    return {
        "train": {"lr": 0.1, "epochs": 10, "max_grad_norm": 1.0, "model_options": {"width": 1.0}},
        "models": {"net": {"epochs": 20, "max_grad_norm": 5.0, "model_options": {"depth": 2.0}}},
        "recipes": {"fast": {"max_grad_norm": 0.5, "model_options": {"width": 3.0}}},
        "runs": {"r": {"dataset": "d", "recipe": "fast", "model": "net", "lr": 0.2}},
    }


def test_precedence_is_train_then_model_then_recipe_then_run():
    resolved = resolve_run(_layered(), "r")
    assert resolved == {
        "lr": 0.2,  # the run
        "epochs": 20,  # the model over train
        "max_grad_norm": 0.5,  # the recipe over the model
        "model_options": {"width": 3.0, "depth": 2.0},  # merged key by key
        "dataset": "d",
        "model": "net",
        "run_id": "r",
    }
    assert [key for key, _ in run_layers(_layered(), "r")] == [
        "train",
        "models.net",
        "recipes.fast",
        "runs.r",
    ]


def test_recipe_and_model_entries_are_optional_but_a_named_recipe_must_exist():
    params = _layered()
    params["runs"]["plain"] = {"dataset": "d", "model": "other"}
    assert resolve_run(params, "plain")["epochs"] == 10
    params["runs"]["typo"] = {"dataset": "d", "model": "net", "recipe": "fsat"}
    with pytest.raises(ParamsError, match="fsat"):
        resolve_run(params, "typo")


def test_a_lock_entry_rebuilds_the_params_it_ran_with():
    params = _layered()
    locked = {key: layer for key, layer in run_layers(params, "r")}
    locked["runs.r"] = params["runs"]["r"]  # the lock stores the run as written, recipe included
    assert resolve_run(params_from_lock(locked), "r") == resolve_run(params, "r")


@pytest.mark.parametrize("params_file", PARAMS_FILES)
def test_every_run_names_a_dataset_a_recipe_and_a_model_dvc_can_address(params_file):
    # dvc.yaml's params deps are models.${item.model} and recipes.${item.recipe}: both must exist
    params = load_params(ROOT / params_file)
    for group in ("runs", "ablations"):
        for run_id, run in (params.get(group) or {}).items():
            assert run["dataset"] in params["data"], run_id
            assert run["recipe"] in params["recipes"], run_id
            assert run["model"] in params["models"], run_id


@pytest.mark.parametrize("params_file", PARAMS_FILES)
def test_params_files_have_no_line_over_120_characters(params_file):
    lines = (ROOT / params_file).read_text().splitlines()
    assert [n for n, line in enumerate(lines, 1) if len(line) > 120] == []


def test_train_config_defaults_agree_with_params_train():
    train = load_params(ROOT / "params.yaml")["train"]
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(fields) - set(train) == CODE_ONLY_FIELDS
    for name, value in train.items():
        f = fields[name]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert default == value and type(default) is type(value), name
