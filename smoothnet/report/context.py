"""What every figure/table builder receives, and what it hands back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smoothnet.report.published import Published
from smoothnet.report.runs import METRICS, ReportOptions, Run, RunSet, hashes_text
from smoothnet.report.tables import Table

DATASET_LABELS = {"cifar10": "CIFAR-10", "imagenette": "ImageNette"}


def dataset_label(name: str) -> str:
    """Display name of a dataset."""
    return DATASET_LABELS.get(name, name)


def options_text(options: dict[str, Any]) -> str:
    """Model options as a short, stable string (``width=2, depth=1``); empty for none."""
    return ", ".join(
        f"{k}={options[k]:g}" if isinstance(options[k], float) else f"{k}={options[k]}"
        for k in sorted(options)
    )


def model_label(label: str, model: str, options: dict[str, Any]) -> str:
    """One name per model across figures and tables: ``label`` (the published display name) with its
    options; the configurable SmoothNet as ``SmoothNet [connection] W<10 x width>D<10 x depth> (other
    options)``, the paper's naming (width 8, depth 5 is its W80D50)."""
    opts = dict(options)
    if model == "smoothnet" and opts:
        head = "SmoothNet"
        if "connection" in opts:
            head += f" {opts.pop('connection')}"
        if "width" in opts or "depth" in opts:
            head += f" W{10 * float(opts.pop('width', 8.0)):g}D{10 * float(opts.pop('depth', 5.0)):g}"
        return f"{head} ({options_text(opts)})" if opts else head
    return f"{label} ({options_text(opts)})" if opts else label


def options_key(options: dict[str, Any]) -> str:
    """A hashable, order-independent key for model options."""
    return json.dumps(options, sort_keys=True)


@dataclass(frozen=True)
class Context:
    """Inputs of one report render."""

    runset: RunSet
    published: Published
    options: ReportOptions
    figures_dir: Path
    tables_dir: Path

    @property
    def runs(self) -> tuple[Run, ...]:
        return self.runset.runs

    @property
    def banner(self) -> str | None:
        return self.runset.label

    def metric_for(self, study: str) -> str:
        """The report.metric key used for runs of ``study``."""
        return self.options.improved_metric if study == "improved" else self.options.metric

    def metric_words(self, study: str = "main") -> str:
        """Caption text naming the metric and the option that selects it."""
        key = self.metric_for(study)
        option = "report.improved_metric" if study == "improved" else "report.metric"
        return f"{METRICS[key][1]} ({option}={key})"

    def records_line(self, runs) -> str:
        """Caption/footer line naming the records by short hash."""
        return f"Built from {len({r.hash for r in runs})} run record(s) [sha256/8]: {hashes_text(runs)}."


@dataclass
class Section:
    """One figure/table group of the report, for the README and the manifest."""

    title: str
    caption: list[str]
    figures: list[str] = field(default_factory=list)  # stems under figures/
    tables: list[Table] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
