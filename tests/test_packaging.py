"""Packaging: exact pins agree between pyproject and environment.yml; import has no side effects."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)$")


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [
        d for group in project["optional-dependencies"].values() for d in group
    ]
    pins = {}
    for spec in specs:
        match = PIN.match(spec)
        assert match, f"pyproject dependency {spec!r} is not pinned exactly (name==version)"
        pins[match.group(1).lower()] = match.group(2)
    return pins


def _environment_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = {}
    for spec in pip_section:
        if spec.startswith("-e"):
            continue
        match = PIN.match(spec)
        assert match, f"environment.yml dependency {spec!r} is not pinned exactly"
        pins[match.group(1).lower()] = match.group(2)
    return pins


def test_every_dependency_pinned_and_environment_agrees():
    assert _pyproject_pins() == _environment_pins()


def test_environment_python_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert "python=3.11" in env["dependencies"] and "3.11" in requires


def test_import_has_no_side_effects(tmp_path):
    # A fresh interpreter importing the package writes nothing, prints nothing, pulls in no torch.
    code = "import sys, smoothnet, smoothnet.records, smoothnet.io; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
    assert result.stderr == ""
    assert list(tmp_path.iterdir()) == []


def test_cli_help_lists_subcommands():
    result = subprocess.run(
        [sys.executable, "-m", "smoothnet.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "models" in result.stdout and "Opacus" in result.stdout


def test_ruff_lint_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", str(ROOT / "smoothnet"), str(ROOT / "tests")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_params_and_lock_read_numbers_as_dvc_does(tmp_path):
    # PyYAML (YAML 1.1) reads `1e-05` as a string; DVC writes dvc.lock that way and reads it as a float.
    from smoothnet.audit.dvclock import load_lock
    from smoothnet.params import load_params

    (tmp_path / "params.yaml").write_text("train: {delta: 1e-05, lr: 2e-3, epochs: 3, name: 1e-5x}\n")
    train = load_params(tmp_path / "params.yaml")["train"]
    assert train == {"delta": 1e-05, "lr": 0.002, "epochs": 3, "name": "1e-5x"}
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  s:\n    params:\n      params.yaml:\n        d: 1e-05\n"
    )
    assert load_lock(tmp_path / "dvc.lock")["s"]["params"]["params.yaml"]["d"] == 1e-05
