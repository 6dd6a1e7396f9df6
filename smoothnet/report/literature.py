"""Table 6: literature baselines (Tramer & Boneh, Papernot, De et al.), reproduced vs published.

A row per published entry that names a registry model (study "literature" or "improved" runs of that
model on the same dataset at the published epsilon), then a row per other literature-study configuration
so no record is dropped silently.
"""

from __future__ import annotations

from smoothnet.report.context import Context, Section, dataset_label
from smoothnet.report.runs import Run, privacy_text, same_epsilon, select, summarize
from smoothnet.report.tables import MISSING, Table, fmt

TABLE = "literature_baselines"


def render(ctx: Context) -> Section:
    """Write the literature baselines table (Markdown, LaTeX)."""
    pub = ctx.published
    metric = ctx.metric_for("literature")
    lit_runs = select(ctx.runs, study="literature")
    table = Table(
        name=TABLE,
        title="Literature baselines: reproduced vs published",
        columns=[
            "Model",
            "Dataset",
            "Published (%)",
            "Published ε",
            "Reproduced DP (%)",
            "ε spent",
            "Δ vs published (pp)",
            "Non-DP (%)",
            "Source",
        ],
        align="llrrrrrrl",
    )
    used: list[Run] = []
    covered: set[tuple[str, str, float | None]] = set()
    missing = []
    for entry in (e for e in pub.literature if e.model):
        number = entry.number
        runs = select(lit_runs, model=entry.model, dataset=entry.dataset)
        dp = summarize(select(runs, private=True, epsilon=number.epsilon), metric)
        non_dp = summarize(select(runs, private=False), metric)
        recipe = ""
        if dp is None:
            # De et al.'s WRN-16-4 is reproduced by the improved recipe (study "improved"), not the paper's.
            improved = select(ctx.runs, study="improved", model=entry.model, dataset=entry.dataset)
            dp = summarize(select(improved, private=True, epsilon=number.epsilon), ctx.metric_for("improved"))
            recipe = " ‡" if dp else ""
        covered.add((entry.model, entry.dataset, number.epsilon))
        covered.add((entry.model, entry.dataset, None))
        spent = [r.epsilon for r in dp.runs if r.epsilon is not None] if dp else []
        table.rows.append(
            [
                f"{entry.label} [{entry.model}]",
                dataset_label(entry.dataset),
                fmt(number.accuracy, 1),
                f"{number.epsilon:g}",
                dp.cell() + recipe if dp else MISSING,
                f"{sum(spent) / len(spent):.3f}" if spent else MISSING,
                fmt(dp.mean - number.accuracy if dp else None, 2, True),
                non_dp.cell() if non_dp else MISSING,
                number.describe(pub.sources),
            ]
        )
        used += list(dp.runs if dp else []) + list(non_dp.runs if non_dp else [])
        if dp is None:
            missing.append(f"{entry.label} at ε = {number.epsilon:g}")
    extra = {}
    for run in lit_runs:
        key = (run.model, run.dataset, run.target_epsilon if run.private else None)
        if key not in covered and not any(
            k[0] == key[0] and k[1] == key[1] and key[2] is not None and same_epsilon(k[2], key[2])
            for k in covered
        ):
            extra.setdefault(key, []).append(run)
    for (model, dataset, eps), runs in sorted(
        extra.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)
    ):
        summary = summarize(runs, metric)
        spent = [r.epsilon for r in runs if r.epsilon is not None]
        table.rows.append(
            [
                model,
                dataset_label(dataset),
                MISSING,
                MISSING if eps is None else f"{eps:g}",
                summary.cell() if summary and eps is not None else MISSING,
                f"{sum(spent) / len(spent):.3f}" if spent else MISSING,
                MISSING,
                summary.cell() if summary and eps is None else MISSING,
                "not in published.yaml",
            ]
        )
        used += list(summary.runs) if summary else []
    table.notes = [
        f"Reproduced: {ctx.metric_words('literature')}; study 'literature'; mean ± std over seeds. "
        f"{privacy_text(used)}. Published numbers are test accuracy on the official test set.",
    ]
    if any(row[4].endswith("‡") for row in table.rows):
        table.notes.append(
            f"‡ from the improved recipe (study 'improved'; {ctx.metric_words('improved')}), "
            "which is how the package reproduces this entry."
        )
    if missing:
        table.notes.append("— = missing run record(s): " + "; ".join(missing) + ".")
    table.notes.append(ctx.records_line(used))
    paths = table.write(ctx.tables_dir)
    return Section(title="Literature baselines", caption=table.notes, tables=[table], paths=paths, runs=used)
