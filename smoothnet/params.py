"""Reading ``params.yaml``: the experiment's single source of truth.

Structure (grouped by stage, as DVC's example project):

- ``data.<dataset>``: how the prepare stage gets and splits one dataset.
- ``train``: defaults shared by every training run (the paper's setup, SPEC section 3).
- ``runs.<run_id>``: one training run each; its keys override ``train`` (``model_options`` is merged).
  DVC expands ``runs`` into the stages ``train@<run_id>`` of ``dvc.yaml``.
- ``ablations.<run_id>``: the thesis-style ablation grid, same form as ``runs``; its stages live in
  ``ablations/dvc.yaml`` so that a plain ``dvc repro`` does not run them.
- ``report`` and ``audit``: settings of the last two stages.

A run's *resolved* parameters (defaults + overrides + its ``run_id``) are what the trainer reads, what
the run record stores under ``params``, and what the audit compares against ``params.yaml``.
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


def resolve_run(params: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The resolved parameters of ``run_id``: ``train`` defaults overridden by the run's own keys."""
    overrides = copy.deepcopy(params[run_group(params, run_id)][run_id] or {})
    resolved = copy.deepcopy(params.get("train") or {})
    for key, value in overrides.items():
        if key in MERGED_KEYS and isinstance(value, dict):
            resolved[key] = {**(resolved.get(key) or {}), **value}
        else:
            resolved[key] = value
    resolved["run_id"] = run_id
    return resolved


def dataset_params(params: dict[str, Any], dataset: str) -> dict[str, Any]:
    """``data.<dataset>``; a clear error naming the valid datasets otherwise."""
    data = params.get("data") or {}
    if dataset not in data:
        raise ParamsError(
            f"unknown dataset {dataset!r}; datasets in params: {', '.join(sorted(data)) or 'none'}"
        )
    return copy.deepcopy(data[dataset])
