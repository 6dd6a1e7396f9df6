"""The package modules a script or module imports, found statically: its import closure.

A DVC stage depends on exactly the closure of its entry script (``tests/test_pipeline.py`` compares the two)
and a checkpoint's code fingerprint hashes the closure of the trainer, so an edit elsewhere (a report
caption, a help string) neither re-runs a training stage nor discards a half-trained run.

Every ``import`` and ``from ... import`` in a file counts, also those inside functions (the package imports
lazily), and so does a string constant naming a package module (``importlib.import_module`` tables such as
``smoothnet.data``'s exports). Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` too.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

PACKAGE = "smoothnet"
REPO_ROOT = Path(__file__).resolve().parents[1]


def module_file(name: str, root: Path = REPO_ROOT) -> Path | None:
    """The file of package module ``name`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``), or None."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # submodules
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith(PACKAGE + ".") and node.value.replace(".", "").isidentifier():
                names.add(node.value)
    return names


def import_closure(*entries: str | os.PathLike, root: Path = REPO_ROOT) -> list[str]:
    """Repo-relative POSIX paths of ``entries`` (files or dotted module names) and every package file
    they import, transitively, sorted."""
    todo: list[Path] = []
    for entry in entries:
        path = module_file(str(entry), root) if "/" not in str(entry) else None
        todo.append(path if path is not None else root / entry)
    seen: set[Path] = set()
    while todo:
        path = todo.pop().resolve()
        if path in seen:
            continue
        seen.add(path)
        for name in _imported_names(path):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # the parents' __init__.py run first
                found = module_file(".".join(parts[:depth]), root)
                if found is not None and found.resolve() not in seen:
                    todo.append(found)
    return sorted(p.relative_to(root.resolve()).as_posix() for p in seen)
