"""Figure 4 and Table 4: SmoothNet ablations (study "ablation") beside the thesis study values.

Heatmaps: width x depth for each connection type (and block configuration), and norm x pool for each
(connection, width, depth); DP on the top row, non-private below. Every ablation configuration is a row
of the table, with the thesis entry it is compared against named (the thesis leaves some attributes
unstated; see paper/published.yaml). Nothing is rendered when no ablation records exist.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import seaborn as sns

from smoothnet.report.context import Context, Section, dataset_label, options_text
from smoothnet.report.published import ThesisEntry
from smoothnet.report.runs import Run, privacy_text, same_epsilon, select, summarize
from smoothnet.report.style import finish_figure, new_figure, save_figure
from smoothnet.report.tables import MISSING, Table, fmt

TABLE = "ablation"
FIG_WIDTH_DEPTH = "ablation_width_depth"
FIG_NORM_POOL = "ablation_norm_pool"

# Defaults of smoothnet.models.smoothnet.smoothnet() (tests/test_report.py checks they agree), so a record
# that leaves an option at its default is placed where it belongs.
SMOOTHNET_DEFAULTS = {
    "connection": "dense",
    "width": 8.0,
    "depth": 5.0,
    "norm": "group",
    "norm_groups": 8,
    "pool": "max",
    "activation": "selu",
}
ATTRS = ("connection", "width", "depth", "norm", "norm_groups", "pool", "activation")
SHORT_RUN_EPOCHS = 30  # the thesis study runs had 15 or 30 epochs; longer runs compare with its benchmark
# The thesis study's recipe: its runs are compared with the thesis entries (literature.py), not in this grid.
THESIS_RECIPE = {"logical_batch_size": 128, "lr": 0.1, "momentum": 0.0, "lr_schedule": "step", "lr_step_size": 1,
                 "lr_gamma": 0.7}  # fmt: skip
# What a run may change from that recipe and still be compared, as a variant: the StepLR step, every epoch in
# the study's text and every 10 epochs in DPBenchmark's committed code.
THESIS_VARIABLE = ("lr_step_size",)


def architecture(run: Run) -> tuple | None:
    """The SmoothNet configuration of a run as a tuple in :data:`ATTRS` order; None for other models."""
    if not run.model.startswith("smoothnet"):
        return None
    opts = {**SMOOTHNET_DEFAULTS, **(run.options if run.model == "smoothnet" else {})}
    opts["width"], opts["depth"] = float(opts["width"]), float(opts["depth"])
    return tuple(opts[a] for a in ATTRS)


def thesis_recipe_changes(run: Run) -> dict | None:
    """How ``run``'s training differs from :data:`THESIS_RECIPE`: ``{}`` for the recipe itself, the changed
    settings (only :data:`THESIS_VARIABLE` ones) for a variant of it, None for another recipe."""
    params = run.record["params"]
    changed = {k: params.get(k) for k, v in THESIS_RECIPE.items() if not _same_setting(params.get(k), v)}
    return changed if set(changed) <= set(THESIS_VARIABLE) else None


def _same_setting(value, expected) -> bool:
    if isinstance(expected, str):
        return value == expected
    return isinstance(value, int | float) and abs(value - expected) <= 1e-9


def thesis_match(
    entries: tuple[ThesisEntry, ...], arch: tuple, long_run: bool, unstated_matches_any: bool = False
) -> ThesisEntry | None:
    """The most specific thesis entry whose attributes all equal ``arch`` (file order breaks ties).

    An attribute the thesis does not state (null) is taken to be SmoothNet's default, or, with
    ``unstated_matches_any``, to match any value (a run that varies what the thesis leaves open).
    """
    attrs = dict(zip(ATTRS, arch, strict=True))
    best, best_score = None, -1
    for entry in entries:
        if (entry.run == "long") != long_run:
            continue
        ok = all(
            (value is None and unstated_matches_any)
            or _equal(SMOOTHNET_DEFAULTS[k] if value is None else value, attrs[k])
            for k, value in entry.attributes.items()
        )
        score = sum(v is not None for v in entry.attributes.values())
        if ok and score > best_score:
            best, best_score = entry, score
    return best


def render(ctx: Context) -> Section | None:
    """Write the ablation table and heatmaps; None when there are no ablation records.

    Runs of the thesis study's recipe (or a variant of it) are left to the thesis table: averaging them with
    the grid's runs of the same architecture would mix two training recipes in one cell.
    """
    runs = [r for r in select(ctx.runs, study="ablation") if thesis_recipe_changes(r) is None]
    if not runs:
        return None
    metric = ctx.metric_for("ablation")
    by_arch: dict[tuple, list[Run]] = defaultdict(list)
    others: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        arch = architecture(run)
        if arch is None:
            others[(run.model, options_text(run.options), run.dataset)].append(run)
        else:
            by_arch[(arch, run.dataset)].append(run)
    epsilons = sorted({r.target_epsilon for r in runs if r.private and r.target_epsilon is not None})

    cells = {}  # (arch, dataset, eps) -> (dp summary, non-dp summary, thesis entry)
    for (arch, dataset), members in sorted(by_arch.items(), key=lambda kv: (kv[0][1], str(kv[0][0]))):
        non_dp = summarize(select(members, private=False), metric)
        long_run = max(r.record["training"]["epochs"] for r in members) > SHORT_RUN_EPOCHS
        thesis = thesis_match(ctx.published.thesis, arch, long_run) if dataset == "cifar10" else None
        for eps in epsilons or [None]:
            dp = summarize([r for r in members if r.private and same_epsilon(r.target_epsilon, eps)], metric)
            cells[(arch, dataset, eps)] = (dp, non_dp, thesis, members)

    used = sorted({r.path: r for r in runs}.values(), key=lambda r: r.path)
    table = _table(ctx, cells, others, metric, used)
    paths = table.write(ctx.tables_dir)
    figures = []
    for stem, rows_attr, cols_attr, panel_attrs in (
        (FIG_WIDTH_DEPTH, "width", "depth", ("connection", "norm", "norm_groups", "pool", "activation")),
        (FIG_NORM_POOL, "norm", "pool", ("connection", "width", "depth", "norm_groups", "activation")),
    ):
        written = _heatmaps(ctx, cells, stem, rows_attr, cols_attr, panel_attrs, table.notes)
        if written:
            figures.append(stem)
            paths += written
    return Section(
        title="Ablations (SmoothNet components)",
        caption=table.notes,
        figures=figures,
        tables=[table],
        paths=paths,
        runs=used,
    )


def _arch_text(arch: tuple) -> list[str]:
    a = dict(zip(ATTRS, arch, strict=True))
    norm = f"group({a['norm_groups']})" if a["norm"] == "group" else a["norm"]
    return [a["connection"], f"{a['width']:g}", f"{a['depth']:g}", norm, a["pool"], a["activation"]]


def _table(ctx: Context, cells, others, metric, used) -> Table:
    table = Table(
        banner=ctx.banner,
        name=TABLE,
        title="SmoothNet ablations: reproduced accuracy beside the thesis study",
        columns=[
            "Connection",
            "Width",
            "Depth",
            "Norm",
            "Pool",
            "Activation",
            "Dataset",
            "Params",
            "ε",
            "DP (%)",
            "Non-DP (%)",
            "Thesis DP (%)",
            "Thesis non-DP (%)",
            "Thesis entry",
        ],
        align="llrrllllrrrrrl",
    )
    missing = []
    for (arch, dataset, eps), (dp, non_dp, thesis, members) in cells.items():
        params = sorted({r.record["model"]["num_parameters"] for r in members})
        table.rows.append(
            _arch_text(arch)
            + [
                dataset,
                " / ".join(f"{p:,}" for p in params),
                MISSING if eps is None else f"{eps:g}",
                dp.cell() if dp else MISSING,
                non_dp.cell() if non_dp else MISSING,
                fmt(thesis.dp.accuracy, 1) if thesis else MISSING,
                fmt(thesis.non_dp, 1) if thesis else MISSING,
                thesis.name if thesis else MISSING,
            ]
        )
        for kind, summary in (("DP", dp), ("non-DP", non_dp)):
            if summary is None and not (kind == "DP" and eps is None):
                where = " ".join(_arch_text(arch)) + (
                    f" ε={eps:g}" if kind == "DP" and eps is not None else ""
                )
                missing.append(f"{where} {kind}")
    for (model, opts, dataset), members in sorted(others.items()):
        dp = summarize(select(members, private=True), metric)
        non_dp = summarize(select(members, private=False), metric)
        table.rows.append(
            [
                f"{model}({opts})",
                "",
                "",
                "",
                "",
                "",
                dataset,
                MISSING,
                MISSING,
                dp.cell() if dp else MISSING,
                non_dp.cell() if non_dp else MISSING,
                MISSING,
                MISSING,
                MISSING,
            ]
        )
    thesis_src = (
        ctx.published.thesis[0].dp.describe(ctx.published.sources) if ctx.published.thesis else "none"
    )
    table.notes = [
        f"Reproduced: {ctx.metric_words('ablation')}; study 'ablation'; mean ± std over seeds. "
        f"{privacy_text(used)}.",
        f"Thesis: {thesis_src}; short study runs (15/30 epochs) are compared with runs of ≤ {SHORT_RUN_EPOCHS} "
        "epochs, the long benchmark runs with longer ones; 'Thesis entry' names the entry compared "
        "(norm/pool read from the thesis' naming, an unstated activation taken as SmoothNet's SELU).",
    ]
    if missing:
        table.notes.append("— = missing run record(s): " + "; ".join(missing) + ".")
    repeats = _same_seed_repeats(cells)
    if repeats:
        table.notes.append(
            "n counts runs, and these cells have runs of one seed (the grids overlap): "
            + "; ".join(repeats)
            + ". Without privacy such runs are the same computation (equal by construction, not agreeing "
            "replicates); with privacy they share the initialisation and differ in noise and sampling, "
            "which are derived from the run id, so their ± understates the spread over seeds."
        )
    table.notes.append(ctx.records_line(used))
    return table


def _same_seed_repeats(cells) -> list[str]:
    """Cells (DP and non-DP separately) holding two or more runs of the same seed, named with their runs."""
    found = {}
    for (arch, _, _), (_, _, _, members) in cells.items():
        for private, kind in ((True, "DP"), (False, "non-DP")):
            runs = [r for r in members if r.private == private]
            if len({r.seed for r in runs}) < len(runs):
                found[(arch, kind)] = (
                    " ".join(_arch_text(arch)) + f" {kind} ({', '.join(sorted(r.run_id for r in runs))})"
                )
    return list(found.values())


def row_colour_limits(panels: dict[tuple, dict]) -> list[tuple[float, float] | None]:
    """The colour scale (min, max mean accuracy) of the DP row and of the non-private row of a heatmap
    figure, None for a row without records.

    One scale a row, not one for the figure: non-private accuracies sit 10-20 points above DP ones, and a
    shared scale would paint the DP differences, the point of the figure, in one colour.
    """
    limits = []
    for pos in (0, 1):
        values = [
            cell[pos].mean for panel in panels.values() for cell in panel.values() if cell[pos] is not None
        ]
        limits.append((min(values), max(values)) if values else None)
    return limits


def _heatmaps(ctx: Context, cells, stem, rows_attr, cols_attr, panel_attrs, notes):
    index = {a: i for i, a in enumerate(ATTRS)}
    panels: dict[tuple, dict] = defaultdict(dict)
    for (arch, dataset, eps), value in cells.items():
        key = (dataset, eps) + tuple(arch[index[a]] for a in panel_attrs)
        panels[key][(arch[index[rows_attr]], arch[index[cols_attr]])] = value
    panels = {k: v for k, v in panels.items() if len(v) >= 2}  # a single cell compares nothing
    if not panels:
        return []
    keys = sorted(panels, key=str)
    # Panel titles name what differs between panels; what all panels share goes into the figure title.
    varying = [i for i in range(len(keys[0])) if len({k[i] for k in keys}) > 1]
    names = ("dataset", "ε") + tuple(panel_attrs)
    common = [f"{names[i]}={_show(keys[0][i])}" for i in range(2, len(names)) if i not in varying]
    limits = row_colour_limits(panels)
    sizes = [(len({r for r, _ in panels[k]}), len({c for _, c in panels[k]})) for k in keys]
    width = sum(1.25 * c + 1.3 for _, c in sizes) + 0.8
    height = 2 * (0.75 * max(r for r, _ in sizes) + 1.4)
    fig, axes = new_figure(
        width,
        height,
        nrows=2,
        ncols=len(keys),
        squeeze=False,
        gridspec_kw={"width_ratios": [c for _, c in sizes]},
    )
    # The shared colorbar takes space from the axes, which tight_layout cannot handle: lay out by hand.
    fig.subplots_adjust(wspace=0.45, hspace=0.75)
    for col, key in enumerate(keys):
        cellmap = panels[key]
        rows = sorted({r for r, _ in cellmap}, key=_sort_key)
        cols = sorted({c for _, c in cellmap}, key=_sort_key)
        dataset, eps = key[0], key[1]
        title = ", ".join(f"{names[i]}={_show(key[i])}" for i in varying if i >= 2)
        for row_i, pos in enumerate((0, 1)):  # row 0: DP, row 1: non-private
            ax = axes[row_i][col]
            data = np.full((len(rows), len(cols)), np.nan)
            annot = np.full((len(rows), len(cols)), "", dtype=object)
            for i, r in enumerate(rows):
                for j, c in enumerate(cols):
                    value = cellmap.get((r, c))
                    summary = value[pos] if value else None
                    thesis = value[2] if value else None
                    thesis_value = (thesis.dp.accuracy if pos == 0 else thesis.non_dp) if thesis else None
                    text = f"{summary.mean:.1f}" if summary else MISSING
                    if summary and summary.n > 1:
                        text += f"±{summary.std:.1f}"
                    if thesis_value is not None:
                        text += f"\n(thesis {thesis_value:.1f})"
                    annot[i, j] = text
                    if summary:
                        data[i, j] = summary.mean
            ax.set_facecolor("#f0f0f0")  # cells without a record
            sns.heatmap(
                data,
                ax=ax,
                annot=annot,
                fmt="",
                cmap="viridis",
                vmin=(limits[pos] or (0.0, 100.0))[0],
                vmax=(limits[pos] or (0.0, 100.0))[1],
                cbar=False,
                linewidths=0.5,
                linecolor="white",
                annot_kws={"fontsize": 6.5},
                xticklabels=[_show(c) for c in cols],
                yticklabels=[_show(r) for r in rows],
            )
            for i in range(len(rows)):
                for j in range(len(cols)):
                    if np.isnan(data[i, j]):
                        ax.text(
                            j + 0.5,
                            i + 0.5,
                            annot[i, j].replace(MISSING, "— no run", 1),
                            ha="center",
                            va="center",
                            fontsize=6.5,
                            color="#555555",
                        )
            ax.set_xlabel(cols_attr)
            ax.set_ylabel(rows_attr)
            budget = (
                f"DP, ε = {eps:g}" if (pos == 0 and eps is not None) else ("non-private" if pos else "DP")
            )
            ax.set_title(
                f"{budget}, {dataset_label(dataset)}" + (f"\n{title}" if title else ""), fontsize=7.5
            )
            ax.tick_params(axis="y", rotation=0)
            ax.grid(False)
    for row_i, label in enumerate(("DP accuracy (%)", "non-private accuracy (%)")):
        row = axes[row_i].tolist()
        if limits[row_i] and row[0].collections:
            fig.colorbar(row[0].collections[0], ax=row, fraction=0.025, pad=0.02, label=label)
    what = f"{rows_attr} × {cols_attr}" + (f" ({', '.join(common)})" if common else "")
    fig_notes = [
        f"Cells: reproduced accuracy (%) mean±std over seeds; (thesis …) = thesis value, see Table "
        f"'{TABLE}'; — = no run record."
    ] + notes
    finish_figure(fig, f"SmoothNet ablation: {what}", fig_notes, ctx.banner, int(14 * width), tight=False)
    return save_figure(fig, ctx.figures_dir, stem)


def _equal(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b)
    return a == b


def _sort_key(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
