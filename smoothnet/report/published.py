"""``paper/published.yaml``: every published number the report compares against, validated on load.

The file is the only home of published numbers (docs/design.md). Each number carries its source, what it
measures (validation / test / unknown), its privacy budget and the accountant where known. Loading checks
all of that and names the entry and the fix when something is missing, before anything is rendered.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smoothnet.yamlio import load_yaml

METRICS = ("validation", "test", "unknown")
# Display names of models outside the architecture table (names only; no numbers live here).
MODEL_LABELS = {
    "smoothnet": "SmoothNet",
    "wrn16_4": "WRN-16-4",
    "tramer_boneh_cnn": "Tramer-Boneh CNN",
    "papernot_tempered_sigmoid_cnn": "Tempered-sigmoid CNN",
    "scatternet_linear": "ScatterNet + linear",
    "scatternet_cnn": "ScatterNet + CNN",
}


class PublishedError(ValueError):
    """published.yaml is missing, malformed, or an entry lacks its source/metric/budget."""


@dataclass(frozen=True)
class PublishedNumber:
    """One published accuracy (percent) and what it measures."""

    accuracy: float
    epsilon: float | None
    delta: float | None
    metric: str
    accountant: str | None
    source: str
    note: str | None = None

    def describe(self, sources: dict[str, dict[str, Any]], epsilon_text: str | None = None) -> str:
        """Short provenance text: source, metric, budget (``epsilon_text`` overrides the ε shown)."""
        src = sources[self.source]
        ref = f"arXiv {src['arxiv']}" if src.get("arxiv") else src.get("repository_file", self.source)
        budget = f"ε = {self.epsilon:g}" if self.epsilon is not None else "non-private"
        if epsilon_text is not None:
            budget = f"ε = {epsilon_text}"
        if self.delta is not None:
            budget += f", δ = {self.delta:g}"
        acc = f", {self.accountant.upper()}" if self.accountant else ""
        metric = "metric not stated" if self.metric == "unknown" else f"{self.metric} accuracy"
        return f"{self.source} ({ref}; {metric}; {budget}{acc})"


@dataclass(frozen=True)
class Architecture:
    """A row group of the architecture table: a model, its datasets, its published values."""

    model: str
    label: str
    datasets: tuple[str, ...]
    published: dict[str, PublishedNumber]


@dataclass(frozen=True)
class LiteratureEntry:
    """A literature point on the privacy-utility figure (and a row of the baselines table if ``model``)."""

    id: str
    label: str
    dataset: str
    number: PublishedNumber
    model: str | None = None
    # model options a run must have to reproduce this entry (e.g. input_norm: dp_bn for Tramer & Boneh's
    # ScatterNets); runs of the model with other options are shown as separate rows
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ThesisEntry:
    """One thesis study result (validation accuracy, percent) with the architecture it describes."""

    name: str
    run: str  # "short" (15/30-epoch study) or "long" (final benchmark)
    attributes: dict[str, Any]  # connection, width, depth, norm, pool, activation; None = not stated
    dp: PublishedNumber
    non_dp: float


@dataclass(frozen=True)
class Published:
    """The parsed published.yaml."""

    sources: dict[str, dict[str, Any]]
    curve_label: str
    curve_model: str
    curve_dataset: str
    curve: tuple[tuple[float, PublishedNumber], ...]  # (epsilon, number), sorted by epsilon
    architectures: tuple[Architecture, ...]
    literature: tuple[LiteratureEntry, ...]
    thesis: tuple[ThesisEntry, ...] = field(default_factory=tuple)

    def architecture(self, model: str) -> Architecture | None:
        """The architecture entry of ``model``, if listed."""
        return next((a for a in self.architectures if a.model == model), None)

    def label(self, model: str) -> str:
        """Display name of a model: its label in the architectures list, else a known name, else itself."""
        arch = self.architecture(model)
        return arch.label if arch else MODEL_LABELS.get(model, model)


THESIS_ATTRIBUTES = ("connection", "width", "depth", "norm", "pool", "activation")


def load_published(path: str | os.PathLike) -> Published:
    """Read and validate ``published.yaml``; :class:`PublishedError` names the bad entry and the fix."""
    path = Path(path)
    if not path.exists():
        raise PublishedError(
            f"{path}: published numbers file not found (pass --published paper/published.yaml)"
        )
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PublishedError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise PublishedError(f"{path}: expected a mapping at the top level")
    for key in ("sources", "privacy_utility", "architectures", "literature"):
        if key not in data:
            raise PublishedError(f"{path}: missing top-level section {key!r}")
    sources = data["sources"]
    if not isinstance(sources, dict) or not sources:
        raise PublishedError(f"{path}: 'sources' must map source keys to citations")

    def number(entry: dict[str, Any], where: str, defaults: dict[str, Any] | None = None, acc_key="accuracy"):
        merged = {**(defaults or {}), **entry}
        missing = [
            k for k in (acc_key, "epsilon", "delta", "metric", "accountant", "source") if k not in merged
        ]
        if missing:
            raise PublishedError(
                f"{path}: {where} lacks {missing} (every number states them; null if unknown)"
            )
        if merged["source"] not in sources:
            raise PublishedError(
                f"{path}: {where} cites unknown source {merged['source']!r}; add it to 'sources' "
                f"(known: {', '.join(sorted(sources))})"
            )
        if merged["metric"] not in METRICS:
            raise PublishedError(f"{path}: {where} metric {merged['metric']!r} is not one of {METRICS}")
        accuracy = merged[acc_key]
        if not isinstance(accuracy, (int, float)) or isinstance(accuracy, bool) or not 0 <= accuracy <= 100:
            raise PublishedError(f"{path}: {where} accuracy {accuracy!r} must be a percentage in [0, 100]")
        return PublishedNumber(
            accuracy=float(accuracy),
            epsilon=None if merged["epsilon"] is None else float(merged["epsilon"]),
            delta=None if merged["delta"] is None else float(merged["delta"]),
            metric=merged["metric"],
            accountant=merged["accountant"],
            source=merged["source"],
            note=merged.get("note"),
        )

    pu = data["privacy_utility"]
    curve_defaults = {k: pu.get(k) for k in ("delta", "metric", "accountant", "source")}
    curve = []
    for i, point in enumerate(pu.get("points") or []):
        curve.append((float(point["epsilon"]), number(point, f"privacy_utility.points[{i}]", curve_defaults)))
    if not curve:
        raise PublishedError(f"{path}: privacy_utility.points is empty")

    architectures = []
    for i, arch in enumerate(data["architectures"]):
        for key in ("model", "label", "datasets"):
            if key not in arch:
                raise PublishedError(f"{path}: architectures[{i}] lacks {key!r}")
        published = {
            ds: number(value, f"architectures[{i}].published.{ds}")
            for ds, value in (arch.get("published") or {}).items()
        }
        architectures.append(Architecture(arch["model"], arch["label"], tuple(arch["datasets"]), published))

    literature = []
    for i, entry in enumerate(data["literature"]):
        for key in ("id", "label", "dataset"):
            if key not in entry:
                raise PublishedError(f"{path}: literature[{i}] lacks {key!r}")
        literature.append(
            LiteratureEntry(
                entry["id"],
                entry["label"],
                entry["dataset"],
                number(entry, f"literature[{i}]"),
                entry.get("model"),
                dict(entry.get("options") or {}),
            )
        )

    thesis = []
    thesis_section = data.get("thesis") or {}
    defaults = thesis_section.get("defaults") or {}
    for i, entry in enumerate(thesis_section.get("entries") or []):
        where = f"thesis.entries[{i}] ({entry.get('name', '?')})"
        missing = [k for k in ("name", "run", "dp", "non_dp", *THESIS_ATTRIBUTES) if k not in entry]
        if missing:
            raise PublishedError(
                f"{path}: {where} lacks {missing} (null for attributes the thesis does not state)"
            )
        if entry["run"] not in ("short", "long"):
            raise PublishedError(f"{path}: {where} run must be 'short' or 'long', not {entry['run']!r}")
        attributes = {k: entry[k] for k in THESIS_ATTRIBUTES}
        for k in ("width", "depth"):
            attributes[k] = float(attributes[k])
        thesis.append(
            ThesisEntry(
                entry["name"],
                entry["run"],
                attributes,
                number(entry, where, defaults, "dp"),
                float(entry["non_dp"]),
            )
        )

    return Published(
        sources=sources,
        curve_label=pu.get("label", "published"),
        curve_model=pu["model"],
        curve_dataset=pu["dataset"],
        curve=tuple(sorted(curve, key=lambda p: p[0])),
        architectures=tuple(architectures),
        literature=tuple(literature),
        thesis=tuple(thesis),
    )
