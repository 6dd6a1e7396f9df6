"""Table 2 and Figure 3: architectures at the paper's budget (epsilon 7), DP and non-DP, per dataset.

The paper's central claim is that the accuracy lost to DP-SGD depends on the architecture; the table
gives model, parameters, DP and non-DP accuracy (mean ± std over seeds, n), the DP drop, the published
value and the difference, and the bar chart shows DP beside non-DP for every architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

from smoothnet.report.context import Context, Section, dataset_label, model_label, options_key
from smoothnet.report.published import PublishedNumber
from smoothnet.report.runs import Run, Summary, privacy_text, select, summarize
from smoothnet.report.style import COLORS, finish_figure, new_figure, save_figure
from smoothnet.report.tables import MISSING, Table, fmt

TABLE = "architectures_eps7"
FIGURE = "dp_vs_nondp"


@dataclass
class Cell:
    """One (model, dataset) row of the architecture table."""

    model: str
    label: str
    dataset: str
    params: str
    dp: Summary | None
    non_dp: Summary | None
    published: PublishedNumber | None


def _rows(ctx: Context) -> list[Cell]:
    """One row per (model, options, dataset): the listed architectures in order (a missing row when never
    run), then every other main-study configuration, so nothing is dropped silently."""
    eps = ctx.options.architecture_epsilon
    metric = ctx.metric_for("main")
    main = select(ctx.runs, study="main")
    configs: dict[tuple[str, str], dict] = {}
    for run in sorted(main, key=lambda r: (r.model, options_key(r.options))):
        configs.setdefault((run.model, options_key(run.options)), run.options)
    listed = [a.model for a in ctx.published.architectures]
    order = [(m, None) for m in listed]
    order += sorted(k for k in configs if k[0] not in listed)
    rows = []
    for model, key in order:
        keys = [key] if key is not None else sorted(k for m, k in configs if m == model) or [None]
        arch = ctx.published.architecture(model)
        for opts_key in keys:
            opts = configs[(model, opts_key)] if opts_key is not None else {}
            label = model_label(ctx.published.label(model), model, opts)
            runs = [r for r in main if r.model == model and options_key(r.options) == opts_key]
            datasets = list(arch.datasets) if arch else []
            datasets += sorted({r.dataset for r in runs} - set(datasets))
            for dataset in datasets:
                in_ds = select(runs, dataset=dataset)
                dp = summarize(select(in_ds, private=True, epsilon=eps), metric)
                non_dp = summarize(select(in_ds, private=False), metric)
                counts = sorted({r.record["model"]["num_parameters"] for r in in_ds})
                params = " / ".join(f"{c:,}" for c in counts) if counts else MISSING
                published = arch.published.get(dataset) if arch and not opts else None
                rows.append(Cell(model, label, dataset, params, dp, non_dp, published))
    return rows


def render(ctx: Context) -> Section:
    """Write the architecture table (Markdown, LaTeX) and the DP-vs-non-DP bar chart (PDF, PNG)."""
    eps = ctx.options.architecture_epsilon
    rows = _rows(ctx)
    used: list[Run] = [r for c in rows for s in (c.dp, c.non_dp) if s for r in s.runs]
    table = Table(
        banner=ctx.banner,
        name=TABLE,
        title=f"Architectures at ε = {eps:g}: DP and non-DP accuracy, DP drop, published value",
        columns=[
            "Model",
            "Dataset",
            "Params",
            f"DP ε={eps:g} (%)",
            "Non-DP (%)",
            "DP drop (pp)",
            "Published DP (%)",
            "Δ vs published (pp)",
        ],
        align="llrrrrrr",
    )
    missing, marks = [], {}
    for c in rows:
        drop = c.non_dp.mean - c.dp.mean if c.dp and c.non_dp else None
        pub_text = MISSING
        diff = None
        if c.published is not None:
            mark = ""
            if c.published.note:
                mark = marks.setdefault(c.published.note, "†" * (len(marks) + 1))
            pub_text = f"{c.published.accuracy:.1f}{mark}"
            diff = c.dp.mean - c.published.accuracy if c.dp else None
        table.rows.append(
            [
                c.label,
                dataset_label(c.dataset),
                c.params,
                c.dp.cell() if c.dp else MISSING,
                c.non_dp.cell() if c.non_dp else MISSING,
                fmt(drop, 2),
                pub_text,
                fmt(diff, 2, True),
            ]
        )
        for kind, summary in (("DP", c.dp), ("non-DP", c.non_dp)):
            if summary is None:
                missing.append(f"{c.label} / {dataset_label(c.dataset)} {kind}")
    notes = [
        f"Accuracy: {ctx.metric_words('main')}; study 'main'; mean ± sample std over seeds (n runs). "
        f"DP drop = non-DP − DP. {privacy_text(used)}.",
    ]
    sources = sorted({c.published.describe(ctx.published.sources) for c in rows if c.published})
    if sources:
        notes.append("Published: " + "; ".join(sources) + ".")
    notes.append(
        "Published DP (%) — : the paper's per-architecture accuracies were not recovered from the paper's sources; "
        "only SmoothNet's are known."
    )
    notes.extend(f"{mark} {note}" for note, mark in marks.items())
    if missing:
        notes.append("— = missing run record(s): " + "; ".join(missing) + ".")
    notes.append(ctx.records_line(used))
    table.notes = notes

    paths = table.write(ctx.tables_dir)
    paths += _bar_chart(ctx, rows, notes)
    return Section(
        title=f"Architectures at ε = {eps:g}",
        caption=notes,
        figures=[FIGURE],
        tables=[table],
        paths=paths,
        runs=used,
    )


def _bar_chart(ctx: Context, rows: list[Cell], notes: list[str]):
    eps = ctx.options.architecture_epsilon
    datasets = list(dict.fromkeys(c.dataset for c in rows)) or ["cifar10"]
    widths = [max(3.0, 0.62 * sum(1 for c in rows if c.dataset == d) + 1.2) for d in datasets]
    fig, axes = new_figure(
        sum(widths) + 0.4,
        4.2,
        ncols=len(datasets),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
        sharey=True,
    )
    bar = 0.38
    for ax, dataset in zip(axes[0], datasets, strict=True):
        cells = [c for c in rows if c.dataset == dataset]
        xs = list(range(len(cells)))
        for offset, key, color, name in (
            (-bar / 2, "dp", COLORS["dp"], f"DP (ε = {eps:g})"),
            (bar / 2, "non_dp", COLORS["non_dp"], "non-private"),
        ):
            labelled = False  # the legend entry goes on the first bar drawn (the first cell may be missing)
            for x, c in zip(xs, cells, strict=True):
                summary = getattr(c, key)
                if summary is None:
                    ax.text(
                        x + offset,
                        1.5,
                        "missing",
                        rotation=90,
                        ha="center",
                        va="bottom",
                        fontsize=6.5,
                        color="#b00020",
                    )
                    continue
                ax.bar(
                    x + offset,
                    summary.mean,
                    bar,
                    yerr=summary.std if summary.n > 1 else None,
                    capsize=2,
                    color=color,
                    edgecolor="black",
                    linewidth=0.4,
                    label=None if labelled else name,
                )
                labelled = True
                top = summary.mean + summary.std
                if key == "dp" and c.published is not None:
                    top = max(top, c.published.accuracy)
                ax.text(
                    x + offset,
                    top + 1.5,
                    f"{summary.mean:.1f}",
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    rotation=90,
                )
        pubs = [(x, c.published.accuracy) for x, c in zip(xs, cells, strict=True) if c.published]
        if pubs:
            ax.scatter(
                [p[0] - bar / 2 for p in pubs],
                [p[1] for p in pubs],
                marker="_",
                s=260,
                linewidths=2.2,
                color="#d55e00",
                zorder=5,
                label="published DP",
            )
        ax.set_xticks(xs, [c.label for c in cells], rotation=30, ha="right")
        ax.set_title(dataset_label(dataset))
        ax.set_ylim(0, 100)
        ax.set_xlim(-0.7, len(cells) - 0.3)
        ax.grid(axis="x", visible=False)
    axes[0][0].set_ylabel("accuracy (%)")
    handles, labels = [], []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        axes[0][-1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    finish_figure(
        fig,
        f"DP vs non-private accuracy by architecture (ε = {eps:g})",
        notes,
        ctx.banner,
        width_chars=int(16 * (sum(widths) + 0.4)),
    )
    return save_figure(fig, ctx.figures_dir, FIGURE)
