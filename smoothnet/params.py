"""Reading ``params.yaml``: the experiment's single source of truth.

Structure (grouped by stage, as DVC's example project):

- ``data.<dataset>``: how the prepare stage gets and splits one dataset.
- ``train``: defaults shared by every training run (the SmoothNet paper's setup); the single source of
  default values (``TrainConfig``'s field defaults agree with it, tests/test_params.py).
- ``models.<model>``: what a model needs in any recipe (the paper's clip norm and epochs for it, the
  batch sizes of the literature models).
- ``recipes.<recipe>``: a training protocol (paper, improved, literature, thesis, ablation, ...): the keys
  its runs share, written once.
- ``runs.<run_id>``: one training run each, naming its ``dataset``, ``recipe`` and ``model`` and stating
  only what differs. DVC expands ``runs`` into the stages ``train@<run_id>`` of ``dvc.yaml``.
- ``ablations.<run_id>``: the thesis-style ablation grid, same form as ``runs``; its stages live in
  ``ablations/dvc.yaml`` so that a plain ``dvc repro`` does not run them.
- ``report`` and ``audit``: settings of the last two stages.

Precedence, later wins: ``train`` <- ``models.<model>`` <- ``recipes.<recipe>`` <- the run's own keys.
A recipe overrides a model's defaults because it prescribes the protocol (the improved recipe clips every
model at 1.0; a non-private run records the default clip norm it does not use); ``model_options`` is
merged key by key at every layer. ``recipe`` itself is not a training key and is not in the result.

A run's *resolved* parameters (the merge plus its ``run_id``) are what the trainer reads, what the run
record stores under ``params``, and what the audit compares against ``params.yaml``.
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any

import yaml

from smoothnet.yamlio import load_yaml

MERGED_KEYS = ("model_options",)
RUN_GROUPS = ("runs", "ablations")


class ParamsError(ValueError):
    """params.yaml is missing, malformed, or names an unknown run or dataset."""


def load_params(path: str | os.PathLike = "params.yaml") -> dict[str, Any]:
    """Parse a params file; a clear error if it is missing or not a mapping."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found (run from the repository root or pass --params)")
    try:
        params = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return params


def run_group(params: dict[str, Any], run_id: str) -> str:
    """Which group (``runs`` or ``ablations``) defines ``run_id``; a clear error when none does."""
    for group in RUN_GROUPS:
        if run_id in (params.get(group) or {}):
            return group
    known = sorted(k for group in RUN_GROUPS for k in (params.get(group) or {}))
    close = difflib.get_close_matches(run_id, known, n=3, cutoff=0.5)
    hint = (
        f"closest: {', '.join(close)}"
        if close
        else f"{len(known)} runs are defined under runs: and ablations:"
    )
    raise ParamsError(f"unknown run {run_id!r} ({hint}; see runs: in the params file)")


def stage_name(params: dict[str, Any], run_id: str) -> str:
    """The DVC stage that trains ``run_id``: ``train@<id>`` (dvc.yaml) or the ablation pipeline's stage."""
    if run_group(params, run_id) == "ablations":
        return f"ablations/dvc.yaml:ablate@{run_id}"
    return f"train@{run_id}"


def run_layers(params: dict[str, Any], run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """``(params key, mapping)`` of each layer ``run_id`` reads, in merge order (earlier is overridden).

    The keys are what the run's DVC stage declares as its params: editing one re-runs exactly its runs.
    A run without ``recipe`` reads no recipe; a model without an entry under ``models`` has no defaults.
    """
    group = run_group(params, run_id)
    run = params[group][run_id] or {}
    layers = [("train", params.get("train") or {})]
    model = run.get("model")
    if model in (params.get("models") or {}):
        layers.append((f"models.{model}", params["models"][model] or {}))
    if "recipe" in run:
        recipes = params.get("recipes") or {}
        if run["recipe"] not in recipes:
            raise ParamsError(
                f"run {run_id!r} names recipe {run['recipe']!r}; recipes in params: {', '.join(sorted(recipes))}"
            )
        layers.append((f"recipes.{run['recipe']}", recipes[run["recipe"]] or {}))
    layers.append((f"{group}.{run_id}", {k: v for k, v in run.items() if k != "recipe"}))
    return layers


def resolve_run(params: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The resolved parameters of ``run_id``: ``train`` <- its model's defaults <- its recipe <- its keys."""
    resolved: dict[str, Any] = {}
    for _, layer in run_layers(params, run_id):
        for key, value in copy.deepcopy(layer).items():
            if key in MERGED_KEYS and isinstance(value, dict):
                resolved[key] = {**(resolved.get(key) or {}), **value}
            else:
                resolved[key] = value
    resolved["run_id"] = run_id
    return resolved


def params_from_lock(locked: dict[str, Any]) -> dict[str, Any]:
    """A params mapping rebuilt from a dvc.lock stage's ``params.yaml`` entries (dotted keys, one level).

    ``{"train": ..., "recipes.paper": ..., "runs.x": ...}`` -> ``{"train": ..., "recipes": {"paper": ...},
    "runs": {"x": ...}}``, so that ``resolve_run`` gives what the stage ran with.
    """
    rebuilt: dict[str, Any] = {}
    for key, value in locked.items():
        section, _, name = str(key).partition(".")
        if name:
            rebuilt.setdefault(section, {})[name] = copy.deepcopy(value)
        else:
            rebuilt[section] = copy.deepcopy(value)
    return rebuilt


def dataset_params(params: dict[str, Any], dataset: str) -> dict[str, Any]:
    """``data.<dataset>``; a clear error naming the valid datasets otherwise."""
    data = params.get("data") or {}
    if dataset not in data:
        raise ParamsError(
            f"unknown dataset {dataset!r}; datasets in params: {', '.join(sorted(data)) or 'none'}"
        )
    return copy.deepcopy(data[dataset])
