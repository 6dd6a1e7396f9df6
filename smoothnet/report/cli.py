"""``smoothnet report``: render the paper's figures and tables from stored run records."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = "Render the paper's figures and tables from run records next to the published numbers."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the report options."""
    parser.add_argument(
        "--runs",
        nargs="+",
        default=None,
        help="folders searched for record.json files (default: report.runs in params, else runs)",
    )
    parser.add_argument("--published", default=None, help="published numbers (default: paper/published.yaml)")
    parser.add_argument("--out", default=None, help="output folder (default: paper): figures/, tables/, ...")
    parser.add_argument(
        "--params",
        default=None,
        help="params.yaml whose 'report' section sets the options (metric, improved_metric, kind, "
        "architecture_epsilon, runs, out, published); flags override it",
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        default=None,
        help="render only these sections (privacy_utility architectures ablation literature curves; "
        "default: report.sections in params, else all)",
    )
    parser.add_argument(
        "--root",
        default=".",
        help="repository root; the other paths and the manifest's are relative to it (default .)",
    )


def main(args: argparse.Namespace) -> int:
    """Render the report; a clear message and exit code 2 on bad input."""
    from smoothnet.params import ParamsError, load_params
    from smoothnet.records import RecordError
    from smoothnet.report.build import render_report
    from smoothnet.report.published import PublishedError
    from smoothnet.report.runs import ReportInputError, ReportOptions

    start = time.perf_counter()
    root = Path(args.root)

    def at(path):
        """``path`` under ``--root`` unless absolute (a list of paths element-wise)."""
        if isinstance(path, (list, tuple)):
            return [at(p) for p in path]
        return str(path if Path(path).is_absolute() else root / path)

    try:
        section = load_params(at(args.params)).get("report") if args.params else None
        options = ReportOptions.from_params(section)
        if args.sections:
            options = options.with_sections(args.sections)
        runs = at(args.runs or options.runs)
        published = at(args.published or options.published)
        out = at(args.out or options.out)
        result = render_report(runs, published, out, options, root=args.root)
    except (ParamsError, PublishedError, RecordError, ReportInputError) as exc:
        print(f"smoothnet report: {exc}", file=sys.stderr)
        return 2
    manifest = result.manifest
    print(
        f"report: {len(manifest['records'])} record(s) (profile {manifest['profile']}), "
        f"{len(manifest['outputs'])} file(s) in {out} in {time.perf_counter() - start:.1f} s; "
        f"manifest {result.manifest_path}"
    )
    if result.left_out:
        print(
            f"report: {result.left_out} record(s) of the other kind (real vs quick) not rendered",
            file=sys.stderr,
        )
    return 0
