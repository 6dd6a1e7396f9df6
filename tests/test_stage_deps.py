"""Each DVC stage depends on exactly the package code its entry script imports (``smoothnet.closure``).

Too many dependencies re-run stages for unrelated edits (a help string re-running 64 training stages);
too few let a stored result go stale without DVC noticing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from smoothnet.closure import import_closure

ROOT = Path(__file__).resolve().parents[1]
DVC_FILES = ["dvc.yaml", "ablations/dvc.yaml"]
CODE_DIRS = ("smoothnet", "pipelines")


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
