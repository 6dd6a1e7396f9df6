"""Each DVC stage depends on exactly the package code its entry script imports (``smoothnet.closure``),
and each training stage on exactly the params layers its run reads (train, its model, its recipe, itself).

Too many dependencies re-run stages for unrelated edits (a help string re-running 64 training stages);
too few let a stored result go stale without DVC noticing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from smoothnet.closure import import_closure
from smoothnet.yamlio import load_yaml

ROOT = Path(__file__).resolve().parents[1]
DVC_FILES = ["dvc.yaml", "ablations/dvc.yaml"]
CODE_DIRS = ("smoothnet", "pipelines")
DVC = Path(sys.executable).parent / "dvc"


def _stages() -> list:
    return [
        pytest.param(stage.get("do", stage), id=f"{dvc_file}:{name}")
        for dvc_file in DVC_FILES
        for name, stage in yaml.safe_load((ROOT / dvc_file).read_text())["stages"].items()
    ]


def _code_deps(stage: dict) -> set[str]:
    """The stage's dependencies under the package and pipelines/, folders expanded to their .py files."""
    files: set[str] = set()
    for dep in stage["deps"]:
        if dep.split("/")[0] not in CODE_DIRS:
            continue
        path = ROOT / dep
        assert path.exists(), f"dependency {dep} does not exist"
        if path.is_dir():
            files.update(p.relative_to(ROOT).as_posix() for p in path.rglob("*.py"))
        else:
            files.add(dep)
    return files


@pytest.mark.parametrize("stage", _stages())
def test_stage_depends_on_exactly_the_code_it_imports(stage):
    entry = re.match(r"python (pipelines/\w+\.py)\b", stage["cmd"])
    assert entry, f"stage command {stage['cmd']!r} does not run a pipelines/ script"
    closure = set(import_closure(entry.group(1)))
    deps = _code_deps(stage)
    assert not closure - deps, f"imported but not a dependency: {sorted(closure - deps)}"
    assert not deps - closure, f"a dependency but never imported: {sorted(deps - closure)}"


def test_the_main_pipeline_never_reads_the_ablation_grid():
    """A plain ``dvc repro`` (dvc.yaml) must not put the 54 ablation stages upstream of anything."""
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        stage = stage.get("do", stage)
        assert not [dep for dep in stage["deps"] if dep.startswith("ablations")], name
        assert "ablations" not in stage["cmd"], name
    assert load_yaml((ROOT / "params.yaml").read_text())["report"]["runs"] == ["runs"]
    from smoothnet.audit import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert parser.parse_args([]).runs == ["runs"]


def test_the_ablation_report_and_audit_depend_on_the_grid_they_read():
    stages = yaml.safe_load((ROOT / "ablations" / "dvc.yaml").read_text())["stages"]
    for name in ("report", "audit"):
        assert "ablations/runs" in stages[name]["deps"], name
        assert "--runs ablations/runs" in stages[name]["cmd"], name
        assert "runs" not in stages[name]["deps"], name
    manifest = "ablations/report/report_manifest.json"
    assert {"path": manifest, "cache": False} == {"path": manifest, **stages["report"]["outs"][-1][manifest]}
    assert manifest in stages["audit"]["deps"] and f"--report-manifest {manifest}" in stages["audit"]["cmd"]


def test_training_closure_leaves_out_cli_report_and_audit():
    closure = import_closure("pipelines/train.py")
    assert "smoothnet/training/trainer.py" in closure
    assert "smoothnet/data/loading.py" in closure  # imported lazily through smoothnet.data's export table
    for unrelated in ("smoothnet/cli.py", "smoothnet/report/", "smoothnet/audit/", "smoothnet/quick.py"):
        assert not any(path.startswith(unrelated) for path in closure), unrelated


def test_closure_follows_function_level_imports(tmp_path):
    pkg = tmp_path / "smoothnet"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "lazy.py").write_text("X = 1\n")
    (pkg / "sub" / "unused.py").write_text("Y = 2\n")
    (tmp_path / "entry.py").write_text("def f():\n    from smoothnet.sub.lazy import X\n    return X\n")
    assert import_closure("entry.py", root=tmp_path) == [
        "entry.py",
        "smoothnet/__init__.py",
        "smoothnet/sub/__init__.py",
        "smoothnet/sub/lazy.py",
    ]


def _scratch_project(where: Path, params: dict) -> None:
    """The pipeline's code and dvc.yaml with ``params``, every train stage locked as if run (``dvc commit``)."""
    for folder in CODE_DIRS:
        shutil.copytree(ROOT / folder, where / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(ROOT / "dvc.yaml", where / "dvc.yaml")
    (where / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for dataset in params["data"]:
        (where / "data" / "prepared" / dataset).mkdir(parents=True)
        (where / "data" / "prepared" / dataset / "arrays.npz").write_text(dataset)
    for run_id in params["runs"]:
        live = where / "runs" / run_id / "dvclive"
        (live / "plots" / "metrics").mkdir(parents=True)
        (where / "runs" / run_id / "record.json").write_text("{}")
        (live / "metrics.json").write_text("{}")
    _dvc(where, "init", "--no-scm", "-q")
    _dvc(where, "commit", "-f", "-q", *[f"train@{run_id}" for run_id in params["runs"]])


def _dvc(where: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run([str(DVC), *args], cwd=where, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def _stale_runs(where: Path) -> set[str]:
    status = json.loads(_dvc(where, "status", "--json", *[f"train@{r}" for r in _params(where)["runs"]]))
    return {stage.split("@", 1)[1] for stage in status if stage.startswith("train@")}


def _params(where: Path) -> dict:
    return load_yaml((where / "params.yaml").read_text())


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A scratch DVC project: two runs of each recipe of params.yaml (and every run of two models), locked."""
    params = load_yaml((ROOT / "params.yaml").read_text())
    runs, per_recipe = {}, {}
    for run_id, run in params["runs"].items():
        if per_recipe.setdefault(run["recipe"], 0) < 2 or run["model"] in ("resnet18", "tramer_boneh_cnn"):
            per_recipe[run["recipe"]] += 1
            runs[run_id] = run
    where = tmp_path_factory.mktemp("stage-params") / "project"
    _scratch_project(where, {**params, "runs": runs, "ablations": {}})
    assert _stale_runs(where) == set()
    return where


def _edit(where: Path, section: str, name: str, key: str, value) -> dict:
    params = _params(where)
    before = copy.deepcopy(params)
    (params[section][name] if name else params[section])[key] = value
    (where / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return before


@pytest.mark.skipif(not DVC.exists(), reason="needs the dvc of this environment")
@pytest.mark.parametrize(
    ("section", "name", "key", "value", "which"),
    [
        ("recipes", "literature", "momentum", 0.5, lambda run: run["recipe"] == "literature"),
        ("recipes", "paper", "lr", 0.003, lambda run: run["recipe"] == "paper"),
        ("models", "resnet18", "epochs", 7, lambda run: run["model"] == "resnet18"),
        ("train", None, "lr_gamma", 0.8, lambda run: True),
    ],
    ids=["recipe-literature", "recipe-paper", "model-resnet18", "train"],
)
def test_editing_a_params_layer_makes_exactly_its_runs_stale(scratch, section, name, key, value, which):
    before = _edit(scratch, section, name, key, value)
    try:
        expected = {run_id for run_id, run in before["runs"].items() if which(run)}
        assert expected and _stale_runs(scratch) == expected
    finally:
        (scratch / "params.yaml").write_text(yaml.safe_dump(before, sort_keys=False))
