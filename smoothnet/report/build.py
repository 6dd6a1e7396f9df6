"""Render the whole report: figures, tables, README and the manifest the audit checks.

``render_report`` is deterministic: the same records and published.yaml give byte-identical files.
The manifest maps every record (path relative to the repository root) to its ``record_hash`` and every
output file to its sha256, so the audit can tell whether the rendered report is stale.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from smoothnet.io import atomic_write_json, atomic_write_text, sha256_file
from smoothnet.report import ablation, architectures, curves, literature, privacy_utility
from smoothnet.report.context import Context, Section
from smoothnet.report.published import load_published
from smoothnet.report.runs import SECTIONS, ReportOptions, collect_runs, repo_path

MANIFEST = "report_manifest.json"
README = "README.md"
BUILDERS = {
    "privacy_utility": privacy_utility,
    "architectures": architectures,
    "ablation": ablation,
    "literature": literature,
    "curves": curves,
}
GENERATED_SUFFIXES = (".png", ".pdf", ".md", ".tex")


@dataclass(frozen=True)
class ReportResult:
    """What a render wrote: the manifest's content and where it is."""

    manifest_path: Path
    manifest: dict
    left_out: int  # records of the other kind (quick vs real), not rendered


def render_report(
    runs_dir: str | os.PathLike,
    published_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: ReportOptions | None = None,
    root: str | os.PathLike = ".",
) -> ReportResult:
    """Render every figure and table from the records under ``runs_dir`` into ``out_dir``.

    Args:
        runs_dir: folder searched for ``record.json`` files.
        published_path: ``paper/published.yaml``.
        out_dir: report folder (``paper``): ``figures/``, ``tables/``, ``README.md``, ``report_manifest.json``.
        options: the params ``report`` section; defaults to :class:`ReportOptions`.
        root: repository root; manifest paths are relative to it.
    """
    options = options or ReportOptions()
    published = load_published(published_path)  # fails before anything is written
    runset = collect_runs(runs_dir, root=root, kind=options.kind)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for orphan in out_dir.glob(".rendering-*"):  # left by a killed render
        shutil.rmtree(orphan, ignore_errors=True)
    # Everything is rendered into a temporary folder beside out_dir and swapped in only when complete:
    # a failing figure leaves the previous report whole, never half of a new one.
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".rendering-"))
    try:
        figures_dir, tables_dir = staging / "figures", staging / "tables"
        figures_dir.mkdir()
        tables_dir.mkdir()
        ctx = Context(runset, published, options, figures_dir, tables_dir)
        rendered = (BUILDERS[name].render(ctx) for name in SECTIONS if name in options.sections)
        sections = [s for s in rendered if s is not None]
        written = [p for s in sections for p in s.paths]
        _remove_stale(figures_dir, tables_dir, written)
        atomic_write_text(staging / README, _readme(ctx, sections))
        written.append(staging / README)

        final = {p: out_dir / p.relative_to(staging) for p in written}  # where each file will live
        manifest = {
            "profile": "+".join(runset.profiles) if runset.profiles else "none",
            "records": {r.path: r.hash for r in sorted(runset.runs, key=lambda r: r.path)},
            "outputs": dict(sorted((repo_path(final[p], root), sha256_file(p)) for p in written)),
        }
        atomic_write_json(staging / MANIFEST, manifest)
        _swap_in(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ReportResult(out_dir / MANIFEST, manifest, len(runset.left_out))


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Move the rendered folders and files from ``staging`` into ``out_dir``, the manifest last (a crash
    between two renames leaves a manifest that does not match: the audit calls the report stale)."""
    for name in ("figures", "tables"):
        target = out_dir / name
        if target.exists():
            os.replace(target, staging / f"{name}.previous")  # removed with the staging folder
        os.replace(staging / name, target)
    os.replace(staging / README, out_dir / README)
    os.replace(staging / MANIFEST, out_dir / MANIFEST)


def _remove_stale(figures_dir: Path, tables_dir: Path, written: list[Path]) -> None:
    # figures/ and tables/ belong to the report: a figure no longer produced (e.g. no ablation runs now)
    # must not linger looking current.
    keep = {p.resolve() for p in written}
    for folder in (figures_dir, tables_dir):
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix in GENERATED_SUFFIXES and path.resolve() not in keep:
                path.unlink()


def _readme(ctx: Context, sections: list[Section]) -> str:
    banner = ctx.banner
    lines = ["# SmoothNets reproduction: figures and tables", ""]
    lines += [
        "Generated by `smoothnet report` from the run records; do not edit by hand. Published numbers come "
        "from `paper/published.yaml` (each with its source). `report_manifest.json` lists the records "
        "(sha256 of their canonical JSON) and the sha256 of every file here, so `smoothnet audit` can tell "
        "whether this report is stale.",
        "",
    ]
    if banner:
        lines += [
            f"> **{banner}.** These records come from the quick/fixture profile: they exercise the "
            "pipeline and are not results of the paper's experiment.",
            "",
        ]
    lines += [
        f"- Records rendered: {len(ctx.runs)} ({ctx.runset.kind}; profiles: "
        f"{', '.join(ctx.runset.profiles) or 'none'}).",
        f"- Main number: {ctx.metric_words('main')}. The paper does not say whether it reported "
        "validation or test accuracy; `report.metric` in params.yaml selects another.",
    ]
    if ctx.runset.left_out:
        other = "quick/fixture" if ctx.runset.kind == "real" else "real"
        lines.append(
            f"- Not rendered: {len(ctx.runset.left_out)} {other} record(s); real results and quick-profile "
            "runs are never mixed (`report.kind` chooses)."
        )
    if tuple(ctx.options.sections) != SECTIONS:
        lines.append(f"- Sections rendered: {', '.join(ctx.options.sections)} (`--sections`).")
    if "ablation" in ctx.options.sections and not any(s.title.startswith("Ablations") for s in sections):
        lines.append(
            "- No ablation run records (study 'ablation') here: the ablation grid is its own pipeline, "
            "`ablations/dvc.yaml`, whose report stage renders `ablations/report/`."
        )
    lines.append("")
    for section in sections:
        lines += [f"## {section.title}" + (f" — {banner}" if banner else ""), ""]
        for stem in section.figures:
            lines += [
                f"![{stem}](figures/{stem}.png)",
                "",
                f"PDF: [figures/{stem}.pdf](figures/{stem}.pdf)",
                "",
            ]
        for table in section.tables:
            lines += [table.to_markdown(), f"LaTeX: [tables/{table.name}.tex](tables/{table.name}.tex)", ""]
        if not section.tables:
            lines += [f"_{c}_" for c in section.caption] + [""]
    return "\n".join(lines).rstrip() + "\n"
