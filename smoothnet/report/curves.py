"""Figure 5: training curves of every run (validation/test accuracy and epsilon spent vs epoch).

Small multiples, one panel per run, one figure per study so each stays readable; every panel is titled
with its record's short hash. The same per-epoch metrics are in each run's DVCLive folder for
``dvc plots show``.
"""

from __future__ import annotations

import math

from matplotlib.ticker import MaxNLocator

from smoothnet.report.context import Context, Section, dataset_label, model_label
from smoothnet.report.runs import Run
from smoothnet.report.style import COLORS, finish_figure, new_figure, save_figure

STUDY_ORDER = ("main", "ablation", "literature", "improved")
NCOLS = 4


def _series(run: Run, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for entry in run.record["results"]["history"]:
        value = entry.get(key) if isinstance(entry, dict) else None
        if value is None or entry.get("epoch") is None:
            continue
        xs.append(float(entry["epoch"]))
        ys.append(100.0 * float(value) if key.endswith("accuracy") else float(value))
    return xs, ys


def _panel_title(ctx: Context, run: Run) -> str:
    budget = f"ε={run.target_epsilon:g}" if run.private and run.target_epsilon is not None else "non-private"
    if run.private and run.target_epsilon is None:
        budget = "DP (fixed σ)"
    return f"{_model_text(ctx, run)} · {dataset_label(run.dataset)}\n{budget} · seed {run.seed} · {run.short}"


def _model_text(ctx: Context, run: Run) -> str:
    """Model name, with ablation options compact enough for a panel title (``SmoothNet dense W10D50``)."""
    return model_label(ctx.published.label(run.model), run.model, run.options)


def render(ctx: Context) -> Section | None:
    """Write one small-multiples figure per study that has records; None when there are no records."""
    studies = sorted(
        {r.study for r in ctx.runs}, key=lambda s: (STUDY_ORDER.index(s) if s in STUDY_ORDER else 9, s)
    )
    if not studies:
        return None
    stems, paths = [], []
    for study in studies:
        runs = sorted(
            (r for r in ctx.runs if r.study == study),
            key=lambda r: (r.dataset, r.model, not r.private, r.target_epsilon or 0.0, r.seed, r.path),
        )
        ncols = min(NCOLS, len(runs))
        nrows = math.ceil(len(runs) / ncols)
        panel_w, panel_h, gap_w, gap_h, left, right, top, bottom = 2.4, 1.55, 0.75, 0.75, 0.6, 0.55, 0.75, 0.5
        width = left + right + ncols * panel_w + (ncols - 1) * gap_w
        height = top + bottom + nrows * panel_h + (nrows - 1) * gap_h
        fig, axes = new_figure(width, height, nrows=nrows, ncols=ncols, squeeze=False, sharey=True)
        # Fixed layout (tight_layout over dozens of twin axes costs seconds per figure).
        fig.subplots_adjust(
            left=left / width,
            right=1 - right / width,
            bottom=bottom / height,
            top=1 - top / height,
            wspace=gap_w / panel_w,
            hspace=gap_h / panel_h,
        )
        max_eps = max((e for r in runs for e in _series(r, "epsilon")[1]), default=1.0)
        handles, twin0 = {}, None
        for k, ax in enumerate(axes.ravel()):
            if k >= len(runs):
                ax.set_visible(False)
                continue
            run = runs[k]
            for key, color, name in (
                ("val_accuracy", COLORS["val"], "validation accuracy (%)"),
                ("test_accuracy", COLORS["test"], "test accuracy (%)"),
            ):
                xs, ys = _series(run, key)
                if xs:
                    (line,) = ax.plot(xs, ys, color=color, lw=1.2, marker="." if len(xs) < 15 else None)
                    handles[name] = line
            ax.set_ylim(0, 100)
            ax.set_yticks([0, 25, 50, 75, 100])
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
            # An explicit title position skips matplotlib's costly automatic placement over twin axes.
            ax.set_title(_panel_title(ctx, run), fontsize=7, y=1.0, pad=3)
            ax.tick_params(labelsize=6.5)
            if k % ncols == 0:
                ax.set_ylabel("accuracy (%)", fontsize=7)
            ax.set_xlabel("epoch", fontsize=7, labelpad=1)
            xs, ys = _series(run, "epsilon")
            if run.private and xs:
                twin = ax.twinx()
                if twin0 is None:
                    twin0 = twin
                    twin.set_ylim(0, max_eps * 1.1 if max_eps > 0 else 1.0)
                    twin.yaxis.set_major_locator(MaxNLocator(nbins=4))
                else:
                    twin.sharey(twin0)
                (line,) = twin.plot(xs, ys, color=COLORS["epsilon"], ls="--", lw=1.0)
                handles["ε spent (right axis, shared scale)"] = line
                twin.tick_params(labelsize=6.5, colors=COLORS["epsilon"])
                twin.grid(False)
                if k % ncols == ncols - 1 or k == len(runs) - 1:
                    twin.set_ylabel("ε", fontsize=7, color=COLORS["epsilon"])
                else:
                    twin.tick_params(labelright=False)
            if not run.record["results"]["history"]:
                ax.text(
                    0.5,
                    0.5,
                    "no per-epoch history",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    fontsize=7,
                    color="#b00020",
                )
        if handles:
            fig.legend(
                list(handles.values()),
                list(handles),
                loc="upper center",
                ncols=len(handles),
                bbox_to_anchor=(0.5, 1 - 0.05 / height),
                frameon=False,
                fontsize=7.5,
            )
        notes = [
            f"Study '{study}': every run, one panel each, titled with the short hash of its record. "
            "Accuracy on the left axis (%), ε spent so far on the right (private runs; δ and accountant as "
            "recorded in each record).",
            ctx.records_line(runs),
        ]
        finish_figure(
            fig,
            f"Training curves, study '{study}'",
            notes,
            ctx.banner,
            width_chars=int(15 * width),
            tight=False,
        )
        stem = f"training_curves_{study}"
        paths += save_figure(fig, ctx.figures_dir, stem)
        stems.append(stem)
    return Section(
        title="Training curves",
        caption=[f"One figure per study; {ctx.records_line(ctx.runs)}"],
        figures=stems,
        paths=paths,
        runs=list(ctx.runs),
    )
