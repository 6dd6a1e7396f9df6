"""``smoothnet quick``: run the whole DVC pipeline on the quick profile, in a separate workspace.

The workspace is a copy of the project's pipeline files (dvc.yaml, pipelines/, smoothnet/, paper/published.yaml,
the embedded data sample) with ``params.quick.yaml`` as its ``params.yaml``, initialised as a DVC project
without git. ``dvc repro`` there runs the same DAG as the full reproduction: prepare -> train -> report -> audit.
Nothing it produces lands in the project's own runs/ or paper/, so quick outputs never mix with results.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

HELP = "Run the full DVC pipeline end to end on the quick profile (tiny budgets, embedded data; minutes on a CPU)."

# The pipeline's definitions only: never the project's records (runs/, ablations/runs/) or locks, which the
# quick report and audit would otherwise pick up and fail on (their params are not the quick profile's).
COPIED = ("dvc.yaml", "pipelines", "smoothnet", "paper/published.yaml", "data/sample", "ablations/dvc.yaml")


def project_root() -> Path:
    """The repository root (where dvc.yaml and params.quick.yaml live)."""
    return Path(__file__).resolve().parents[1]


def make_workspace(workspace: Path, root: Path | None = None, params_file: str = "params.quick.yaml") -> Path:
    """Create (or refresh) the quick-profile workspace; earlier outputs there are kept so DVC can skip work."""
    root = root or project_root()
    if not (root / params_file).exists():
        raise SystemExit(f"{root / params_file} not found: run from a checkout of the project")
    workspace.mkdir(parents=True, exist_ok=True)
    for relative in COPIED:
        source, target = root / relative, workspace / relative
        if source.is_dir():
            shutil.copytree(
                source,
                target,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
            )
        elif source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    shutil.copy2(root / params_file, workspace / "params.yaml")
    (workspace / "QUICK_PROFILE.md").write_text(
        "# Quick profile workspace\n\nOutputs here come from `params.quick.yaml` (tiny budgets, small models, the "
        "embedded data sample). They are smoke-test outputs, NOT results, and are never stored as results.\n",
        encoding="utf-8",
    )
    if not (workspace / ".dvc").exists():
        _dvc(workspace, "init", "--no-scm", "-q")
        _dvc(workspace, "config", "core.analytics", "false")
    return workspace


def run_quick(workspace: Path, targets: list[str] | None = None) -> int:
    """``dvc repro`` in the workspace, with the workspace's own copy of the package first on the path."""
    return _dvc(workspace, "repro", *(targets or []), check=False)


def _dvc(workspace: Path, *args: str, check: bool = True) -> int:
    # dvc.yaml's commands call `python`: make it this interpreter (the project's venv) even when not activated.
    env = {
        **os.environ,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(workspace) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    env.setdefault("DVC_NO_ANALYTICS", "1")
    completed = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=workspace, env=env, check=False)
    if check and completed.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed in {workspace} (exit {completed.returncode})")
    return completed.returncode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``smoothnet quick``."""
    parser.add_argument("--dir", default="quick", help="workspace folder (default ./quick, git-ignored)")
    parser.add_argument("targets", nargs="*", help="DVC stages to reproduce (default: the whole pipeline)")


def main(args: argparse.Namespace) -> int:
    """Build the workspace and reproduce the pipeline there; print where the outputs are."""
    workspace = make_workspace(Path(args.dir).resolve())
    code = run_quick(workspace, args.targets)
    if code == 0:
        print(
            f"\nQuick profile done (NOT results): figures and tables in {workspace / 'paper'}, "
            f"audit in {workspace / 'audit' / 'audit.md'}, run records in {workspace / 'runs'}"
        )
    return code
