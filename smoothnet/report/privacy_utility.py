"""Figure 1 and its table: SmoothNet accuracy vs epsilon on CIFAR-10, reproduced beside published.

Series: the paper-faithful reproduction (study "main", mean ± std over seeds, every seed as a dot), the
published curve, the literature points, the non-private reproduction as a reference line, and the
"improved" recipe runs (study "improved", one series per model) when they exist.
"""

from __future__ import annotations

from collections import defaultdict

from smoothnet.report.context import Context, Section, dataset_label, options_key
from smoothnet.report.context import model_label as model_name
from smoothnet.report.runs import Run, Summary, privacy_text, same_epsilon, select, summarize
from smoothnet.report.style import COLORS, MARKERS, finish_figure, new_figure, save_figure
from smoothnet.report.tables import MISSING, Table, fmt

STEM = "privacy_utility_cifar10"


def _improved_series(ctx: Context) -> dict[str, list[Run]]:
    """Improved-recipe runs on the curve's dataset, grouped by model and options, labelled."""
    runs = select(ctx.runs, study="improved", dataset=ctx.published.curve_dataset, private=True)
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.model, options_key(run.options))].append(run)
    series = {}
    for (model, _), members in sorted(groups.items()):
        label = "Improved recipe: " + model_name(ctx.published.label(model), model, members[0].options)
        series[label] = members
    return series


def _reproduced_runs(ctx: Context) -> tuple[list[Run], str | None]:
    """Main-study runs of the published model; without any, and only for quick/fixture records, those of the
    configurable ``smoothnet`` (the quick profile's stand-in, the configuration with the most runs)."""
    pub = ctx.published
    runs = select(ctx.runs, study="main", dataset=pub.curve_dataset)
    exact = [r for r in runs if r.model == pub.curve_model]
    if exact:
        return exact, None
    if any(r.profile in ("paper", "improved") for r in runs):
        return [], None  # real results: a different network never stands in for the published one
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.model == "smoothnet":
            groups[options_key(run.options)].append(run)
    if not groups:
        return [], None
    key = max(sorted(groups), key=lambda k: len(groups[k]))
    return groups[key], model_name(ctx.published.label("smoothnet"), "smoothnet", groups[key][0].options)


def _by_epsilon(runs: list[Run], metric: str) -> dict[float, Summary]:
    eps_values = sorted({r.target_epsilon for r in runs if r.target_epsilon is not None})
    out = {}
    for eps in eps_values:
        summary = summarize([r for r in runs if same_epsilon(r.target_epsilon, eps)], metric)
        if summary is not None:
            out[eps] = summary
    return out


def render(ctx: Context) -> Section:
    """Write the privacy-utility figure (PDF, PNG) and table (Markdown, LaTeX)."""
    pub = ctx.published
    model_label = pub.label(pub.curve_model)
    data_label = dataset_label(pub.curve_dataset)
    main, stand_in = _reproduced_runs(ctx)
    if stand_in:
        model_label = stand_in
    private = [r for r in main if r.private]
    non_private = summarize([r for r in main if not r.private], ctx.metric_for("main"))
    reproduced = _by_epsilon(private, ctx.metric_for("main"))
    improved = {
        label: _by_epsilon(runs, ctx.metric_for("improved")) for label, runs in _improved_series(ctx).items()
    }
    published = dict(pub.curve)
    literature = [e for e in pub.literature if e.dataset == pub.curve_dataset]

    used = list(private) + (list(non_private.runs) if non_private else [])
    for series in improved.values():
        for summary in series.values():
            used.extend(summary.runs)
    missing = [eps for eps in published if not any(same_epsilon(eps, e) for e in reproduced)]
    no_metric = [r for r in private if r.accuracy(ctx.metric_for("main")) is None]

    # ---- table ----
    epsilons = sorted(set(published) | set(reproduced) | {e for s in improved.values() for e in s})
    columns = [
        "ε (target)",
        "Published (%)",
        f"Reproduced {model_label} (%)",
        "ε spent",
        "Δ vs published (pp)",
    ]
    columns += [f"{label} (%)" for label in improved]
    table = Table(
        banner=ctx.banner,
        name=STEM,
        title=f"{model_label} on {data_label}: accuracy vs privacy budget, reproduced and published",
        columns=columns,
    )
    for eps in epsilons:
        pub_value = next((v.accuracy for e, v in published.items() if same_epsilon(e, eps)), None)
        summary = next((s for e, s in reproduced.items() if same_epsilon(e, eps)), None)
        spent = [r.epsilon for r in summary.runs if r.epsilon is not None] if summary else []
        spent_text = f"{sum(spent) / len(spent):.3f}" if spent else MISSING
        diff = summary.mean - pub_value if summary and pub_value is not None and not stand_in else None
        row = [
            f"{eps:g}",
            fmt(pub_value, 1),
            summary.cell() if summary else MISSING,
            spent_text,
            fmt(diff, 2, True),
        ]
        for series in improved.values():
            s = next((s for e, s in series.items() if same_epsilon(e, eps)), None)
            row.append(s.cell() if s else MISSING)
        table.rows.append(row)
    table.rows.append(
        ["∞ (non-private)", MISSING, non_private.cell() if non_private else MISSING, MISSING, MISSING]
        + [MISSING] * len(improved)
    )
    table.notes.extend(_notes(ctx, missing, non_private, no_metric, used, bool(improved)))
    if stand_in:
        table.notes.insert(
            0,
            f"No main-study run of {pub.curve_model}: the reproduced series is {stand_in} (the configurable "
            f"SmoothNet), a different network; Δ vs published is not computed.",
        )

    # ---- figure ----
    fig, ax = new_figure(8.6, 4.6)
    curve_eps = sorted(published)
    ax.plot(
        curve_eps,
        [published[e].accuracy for e in curve_eps],
        ls="--",
        marker="o",
        color=COLORS["published"],
        label=pub.curve_label + (" (metric not stated)" if pub.curve[0][1].metric == "unknown" else ""),
        zorder=3,
    )
    if reproduced:
        _mean_and_std(
            ax,
            reproduced,
            marker="o",
            color=COLORS["reproduced"],
            label=f"Reproduced {model_label}, mean ± std over seeds",
        )
        for eps in sorted(reproduced):
            ax.scatter(
                [eps] * reproduced[eps].n,
                reproduced[eps].values,
                s=10,
                alpha=0.45,
                color=COLORS["reproduced"],
                zorder=4,
                linewidths=0,
            )
    else:
        missing_text = f"no paper-recipe run of {model_label} yet" if improved else "no reproduced runs yet"
        ax.text(0.02, 0.04, missing_text, transform=ax.transAxes, fontsize=8, color="#555555")
    if non_private:
        ax.axhline(
            non_private.mean,
            ls=":",
            color=COLORS["reproduced"],
            lw=1.2,
            label=f"Reproduced {model_label} non-private (n={non_private.n})",
        )
    for i, (label, series) in enumerate(improved.items()):
        _mean_and_std(
            ax,
            series,
            marker="D",
            ls="-.",
            color=COLORS["improved"][i % len(COLORS["improved"])],
            label=label,
        )
    for i, entry in enumerate(literature):
        n = entry.number
        ax.scatter(
            [n.epsilon],
            [n.accuracy],
            marker=MARKERS[i % len(MARKERS)],
            s=42,
            zorder=5,
            color=COLORS["literature"][i % len(COLORS["literature"])],
            edgecolors="black",
            linewidths=0.5,
            label=f"{entry.label}: {n.accuracy:.1f} % at ε = {n.epsilon:g}",
        )
    values = [p.accuracy for p in published.values()] + [e.number.accuracy for e in literature]
    values += [v for s in reproduced.values() for v in s.values]
    values += [s.mean for series in improved.values() for s in series.values()]
    if non_private:
        values.append(non_private.mean)
    ax.set_ylim(max(0.0, min(values) - 5), min(100.0, max(values) + 4))
    all_eps = [e for e in epsilons] + [e.number.epsilon for e in literature]
    ax.set_xlim(0, max(all_eps) + 0.8)
    pub_delta = pub.curve[0][1].delta
    shown = private + [r for series in improved.values() for s in series.values() for r in s.runs]
    run_deltas = sorted({r.record["privacy"]["delta"] for r in shown} - {None})
    deltas = f"δ = {pub_delta:g}"
    if run_deltas and run_deltas != [pub_delta]:
        deltas = f"published δ = {pub_delta:g}, reproduced runs δ = {', '.join(f'{d:g}' for d in run_deltas)}"
    ax.set_xlabel(f"privacy budget ε ({deltas}; target ε of the reproduced runs)")
    ax.set_ylabel(f"{data_label} accuracy (%)")
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: _legend_rank(labels[i]))
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        frameon=False,
        fontsize=7.5,
    )
    finish_figure(fig, f"{model_label} on {data_label}: privacy–utility trade-off", table.notes, ctx.banner)
    paths = save_figure(fig, ctx.figures_dir, STEM)
    paths += table.write(ctx.tables_dir)
    return Section(
        title=f"Privacy–utility: {model_label} on {data_label}",
        caption=table.notes,
        figures=[STEM],
        tables=[table],
        paths=paths,
        runs=used,
    )


def _mean_and_std(ax, series: dict[float, Summary], **style) -> None:
    """One series over epsilon: the mean over seeds with the sample std as error bars."""
    xs = sorted(series)
    ax.errorbar(
        xs, [series[e].mean for e in xs], yerr=[series[e].std for e in xs], capsize=3, zorder=4, **style
    )


def _legend_rank(label: str) -> int:
    """Legend order: reproduced, published, improved, then the literature points in file order."""
    for rank, prefix in enumerate(("Reproduced", "SmoothNet", "Improved")):
        if label.startswith(prefix):
            return rank
    return 3


def _notes(ctx: Context, missing, non_private, no_metric, used, has_improved) -> list[str]:
    pub = ctx.published
    notes = [
        f"Reproduced: {ctx.metric_words('main')}, study 'main', profile(s) "
        f"{', '.join(ctx.runset.profiles) or 'none'}; {privacy_text(used)}.",
        f"Published: {pub.curve[0][1].describe(pub.sources, ', '.join(f'{e:g}' for e, _ in pub.curve))}; "
        "the paper does not state validation or test.",
    ]
    if has_improved:
        notes.append(f"Improved recipe (study 'improved'): {ctx.metric_words('improved')}.")
    if missing:
        notes.append(
            "— = missing: no run record for ε = " + ", ".join(f"{e:g}" for e in missing) + " (paper recipe)."
        )
    if non_private is None:
        notes.append("— = missing: no non-private run record of this model.")
    if no_metric:
        notes.append(
            f"{len(no_metric)} record(s) lack the chosen metric and count as missing: "
            + ", ".join(sorted(r.short for r in no_metric))
            + "."
        )
    notes.append(ctx.records_line(used))
    return notes
