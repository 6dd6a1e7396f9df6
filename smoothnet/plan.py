"""``smoothnet plan``: what ``dvc repro`` would run, read from DVC's own stage status, also on a fresh clone.

``dvc repro --dry`` stops on a clone that has not prepared its data yet (DVC 3.67's run-cache lookup
hashes the absent ``data/prepared/<dataset>``), and ``dvc status`` lists every stored stage as changed
because that data is absent. This asks DVC, stage by stage, whether anything changed *besides* data that
is merely not on this machine (DVC's ``--allow-missing`` rule), then adds the stages downstream of those.
"""

from __future__ import annotations

import argparse
import sys

HELP = "List the DVC stages that `dvc repro` would run (not stored or stale), without running anything."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``smoothnet plan``."""
    parser.add_argument(
        "targets",
        nargs="*",
        default=["dvc.yaml"],
        help="dvc.yaml files or stages (default dvc.yaml, as dvc repro)",
    )
    parser.add_argument("--root", default=".", help="repository root (default .)")


def plan(root: str = ".", targets: list[str] | None = None) -> dict[str, list[str]]:
    """``{"stale": [...], "downstream": [...], "missing_data": [...]}`` stage names, in pipeline order.

    ``stale``: stages with no stored result, or whose code, params or inputs changed since it was stored;
    ``downstream``: stages that would re-run after them; ``missing_data``: stored stages whose only change
    is that an input or output is not on this machine (``dvc repro`` restores or re-prepares it first).
    """
    import networkx as nx
    from dvc.repo import Repo

    with Repo(root) as repo, repo.lock:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        wanted = {
            stage
            for target in targets or ["dvc.yaml"]
            for stage in repo.stage.collect(target, with_deps=True)
        }
        order = [stage for stage in reversed(list(nx.topological_sort(graph))) if stage in wanted]
        stale, missing = [], []
        for stage in order:
            upstream = list(graph.successors(stage))
            if stage.changed(allow_missing=True, upstream=upstream):
                stale.append(stage)
            elif stage.changed():
                missing.append(stage)
        after = {down for stage in stale for down in nx.ancestors(graph, stage)} & wanted
        downstream = [stage for stage in order if stage in after and stage not in stale]
        return {
            "stale": [s.addressing for s in stale],
            "downstream": [s.addressing for s in downstream],
            "missing_data": [s.addressing for s in missing if s not in after],
        }


def main(args: argparse.Namespace) -> int:
    """Print the plan; exit 0 when nothing would run, 1 otherwise (as ``dvc status -q``)."""
    from dvc.exceptions import DvcException

    try:
        result = plan(args.root, args.targets)
    except DvcException as exc:
        print(f"smoothnet plan: {exc}", file=sys.stderr)
        return 2
    for stage in result["stale"]:
        print(f"run       {stage}")
    for stage in result["downstream"]:
        print(f"then      {stage}")
    for stage in result["missing_data"]:
        print(f"no data   {stage}  (stored; its data is not on this machine yet, dvc repro prepares it)")
    print(
        f"plan: {len(result['stale'])} stage(s) not stored or stale, {len(result['downstream'])} downstream "
        f"of them, {len(result['missing_data'])} stored with data to prepare"
    )
    return 1 if result["stale"] or result["downstream"] else 0
