"""The DVC pipeline: params.yaml is valid for every stage it defines, and the quick profile runs the same
dvc.yaml end to end (prepare -> train -> report -> audit) in a temporary copy of the project."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from smoothnet.params import RUN_GROUPS, load_params, resolve_run
from smoothnet.quick import make_workspace, run_quick
from smoothnet.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILES = ["params.yaml", "params.quick.yaml"]


@pytest.mark.parametrize("params_file", PARAMS_FILES)
def test_every_run_in_params_is_a_valid_training_config(params_file):
    from smoothnet.models.registry import list_models

    params = load_params(ROOT / params_file)
    run_ids = [run_id for group in RUN_GROUPS for run_id in (params.get(group) or {})]
    assert run_ids
    for run_id in run_ids:
        assert "." not in run_id, f"{run_id}: DVC cannot address params keys containing dots"
        config = TrainConfig.from_params(resolve_run(params, run_id))
        assert config.model in list_models()
        assert config.dataset in params["data"]


def test_full_params_cover_the_paper():
    params = load_params(ROOT / "params.yaml")
    runs = {run_id: resolve_run(params, run_id) for run_id in params["runs"]}

    def has(dataset, model, private=True, eps=7.0):
        return any(
            r["dataset"] == dataset
            and r["model"] == model
            and r.get("private", True) == private
            and (not private or float(r.get("target_epsilon", 7.0)) == eps)
            for r in runs.values()
        )

    for model in ("smoothnet_w80d50", "resnet9", "resnet18", "resnet34", "densenet121", "efficientnet_b0"):
        assert has("cifar10", model) and has("cifar10", model, private=False)
        if model != "resnet9":
            assert has("imagenette", model) and has("imagenette", model, private=False)
    for eps in (1.0, 3.0, 5.0, 7.0, 10.0):
        assert has("cifar10", "smoothnet_w80d50", eps=eps)
    assert has("cifar10", "tramer_boneh_cnn", eps=3.0) and has("cifar10", "scatternet_linear", eps=3.0)


def test_dvc_sees_every_stage():
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "stage", "list"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    stages = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    runs = load_params(ROOT / "params.yaml")["runs"]
    assert {f"train@{run_id}" for run_id in runs} <= stages
    assert {"prepare@cifar10", "prepare@imagenette", "report", "audit", "canary"} <= stages


@pytest.mark.slow
def test_quick_profile_runs_the_whole_dag(tmp_path):
    workspace = make_workspace(tmp_path / "quick", root=ROOT)
    assert run_quick(workspace) == 0
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    params = load_params(workspace / "params.yaml")
    assert set(lock) >= {f"train@{r}" for r in params["runs"]} | {"report", "audit", "canary"}
    for name, stage in lock.items():
        for out in stage.get("outs", []):
            assert (workspace / out["path"]).exists(), f"{name}: declared output {out['path']} missing"
    for run_id in params["runs"]:
        record = json.loads((workspace / "runs" / run_id / "record.json").read_text())
        assert record["profile"] == "quick"
        metrics = json.loads((workspace / "runs" / run_id / "dvclive" / "metrics.json").read_text())
        assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "metrics", "show", "--json"],
        cwd=workspace,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(shown.stdout)
    manifest = json.loads((workspace / "paper" / "report_manifest.json").read_text())
    assert manifest["profile"] == "quick" and len(manifest["records"]) == len(params["runs"])
    assert "QUICK PROFILE" in (workspace / "paper" / "README.md").read_text()
    audit = json.loads((workspace / "audit" / "audit.json").read_text())
    assert audit["passed"] is True
    assert not (workspace / "ablations" / "runs").exists()  # the ablation grid is not part of `dvc repro`


def test_quick_workspace_copies_no_stored_records_or_locks(tmp_path):
    """The project's own records (runs/, ablations/runs/) and dvc.lock files stay out of the quick workspace."""
    root = tmp_path / "project"
    for relative in ("dvc.yaml", "params.quick.yaml", "ablations/dvc.yaml", "ablations/dvc.lock", "dvc.lock"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text("stages: {}\n")
    for folder in ("runs/real-run", "ablations/runs/real-ablation"):
        (root / folder).mkdir(parents=True)
        (root / folder / "record.json").write_text("{}")
    workspace = make_workspace(tmp_path / "quick", root=root)
    assert (workspace / "ablations" / "dvc.yaml").exists()
    assert not (workspace / "ablations" / "runs").exists()
    assert not (workspace / "ablations" / "dvc.lock").exists()
    assert not (workspace / "runs").exists()
    assert not (workspace / "dvc.lock").exists()
