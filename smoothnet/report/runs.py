"""Run records as the report sees them: which kind (real or not a result), which experiment, which number.

Records come from :func:`smoothnet.records.find_records`. Profiles "paper" and "improved" are real results;
"quick" and "fixture" are not and are never rendered together with real ones (:func:`collect_runs`
keeps one kind and counts what it left out). Accuracies are fractions in records and percent here.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoothnet.profiles import NOT_A_RESULT_PROFILES, REAL_PROFILES
from smoothnet.records import find_records, load_record, record_hash

KINDS = ("auto", "real", "quick")
# The report's sections, in the order they are rendered (one module of smoothnet.report each).
SECTIONS = ("privacy_utility", "architectures", "ablation", "literature", "curves")

# report.metric -> (record field under results, words for captions)
METRICS: dict[str, tuple[str, str]] = {
    "test_at_best_val": ("test_accuracy_at_best_val", "test accuracy at the best-validation epoch"),
    "best_val": ("best_val_accuracy", "best validation accuracy"),
    "final_test": ("final_test_accuracy", "test accuracy after the last epoch"),
    "final_val": ("final_val_accuracy", "validation accuracy after the last epoch"),
}

FIELD_TO_METRIC = {field: key for key, (field, _) in METRICS.items()}

SHORT_HASH = 8


class ReportInputError(ValueError):
    """Bad report input: unknown option values or records that cannot be classified."""


@dataclass(frozen=True)
class ReportOptions:
    """The ``report`` section of params.yaml.

    metric: which accuracy is the main number (see :data:`METRICS`); the paper does not say whether it
        reported validation or test accuracy, so the default is test accuracy at the best-validation epoch.
    improved_metric: the same for study "improved", which trains on all 50,000 images (no validation split).
    kind: "real" or "quick" records; "auto" renders real ones when any exist, else quick/fixture ones.
    architecture_epsilon: the budget of the architecture table and bar chart (the paper's epsilon 7).
    runs, out, published: default folders/files of the CLI (its flags override them).
    sections: which sections to render (:data:`SECTIONS`); the ablation pipeline renders only "ablation".
    """

    metric: str = "test_at_best_val"
    improved_metric: str = "final_test"
    kind: str = "auto"
    architecture_epsilon: float = 7.0
    runs: str | tuple[str, ...] = "runs"
    out: str = "paper"
    published: str = "paper/published.yaml"
    sections: tuple[str, ...] = SECTIONS

    @classmethod
    def from_params(cls, section: dict[str, Any] | None) -> ReportOptions:
        """Options from params.yaml's ``report`` section; unknown keys or values raise a clear error.

        Metrics may be named by their key in :data:`METRICS` or by the record field (e.g.
        ``test_accuracy_at_best_val``).
        """
        section = dict(section or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(section) - known)
        if unknown:
            raise ReportInputError(f"params report: unknown key(s) {unknown}; valid keys: {sorted(known)}")
        for key in ("metric", "improved_metric"):
            if key in section:
                section[key] = FIELD_TO_METRIC.get(section[key], section[key])
        options = cls(**section)
        for key in ("metric", "improved_metric"):
            if getattr(options, key) not in METRICS:
                valid = sorted(METRICS) + sorted(FIELD_TO_METRIC)
                raise ReportInputError(f"params report.{key}={getattr(options, key)!r}; valid: {valid}")
        if options.kind not in KINDS:
            raise ReportInputError(f"params report.kind={options.kind!r}; valid: {list(KINDS)}")
        if not options.architecture_epsilon > 0:
            raise ReportInputError("params report.architecture_epsilon must be > 0")
        options = options.with_sections(options.sections)
        return options

    def with_sections(self, sections: str | list[str] | tuple[str, ...]) -> ReportOptions:
        """These options rendering only ``sections``; an unknown or empty choice raises a clear error."""
        chosen = (sections,) if isinstance(sections, str) else tuple(sections)
        unknown = [name for name in chosen if name not in SECTIONS]
        if unknown or not chosen:
            raise ReportInputError(
                f"report sections {list(chosen)}: unknown {unknown or 'none chosen'}; valid: {list(SECTIONS)}"
            )
        return dataclasses.replace(self, sections=chosen)


@dataclass(frozen=True)
class Run:
    """One loaded record with the keys the report groups by."""

    path: str  # relative to the repository root, POSIX separators
    hash: str
    record: dict[str, Any]

    @property
    def short(self) -> str:
        return self.hash[:SHORT_HASH]

    @property
    def study(self) -> str:
        return str(self.record["params"].get("study", "main"))

    @property
    def profile(self) -> str:
        return self.record["profile"]

    @property
    def dataset(self) -> str:
        return self.record["dataset"]["name"]

    @property
    def model(self) -> str:
        return self.record["model"]["name"]

    @property
    def options(self) -> dict[str, Any]:
        return self.record["model"]["options"]

    @property
    def private(self) -> bool:
        return self.record["privacy"]["private"]

    @property
    def target_epsilon(self) -> float | None:
        value = self.record["privacy"]["target_epsilon"]
        return None if value is None else float(value)

    @property
    def epsilon(self) -> float | None:
        value = self.record["privacy"]["epsilon"]
        return None if value is None else float(value)

    @property
    def seed(self) -> int:
        return self.record["training"]["seed"]

    @property
    def run_id(self) -> str:
        return self.record["run_id"]

    def accuracy(self, metric: str) -> float | None:
        """The run's accuracy in percent under ``metric`` (a key of :data:`METRICS`), None if not recorded."""
        value = self.record["results"][METRICS[metric][0]]
        return None if value is None else 100.0 * float(value)


@dataclass(frozen=True)
class RunSet:
    """The records a report renders: one kind only, plus what was left out."""

    runs: tuple[Run, ...]
    kind: str  # "real" or "quick"
    left_out: tuple[Run, ...]

    @property
    def profiles(self) -> tuple[str, ...]:
        return tuple(sorted({r.profile for r in self.runs}))

    @property
    def label(self) -> str | None:
        """The banner for records that are not results (None for real ones)."""
        if self.kind == "real":
            return None
        if self.profiles == ("fixture",):
            return "QUICK PROFILE — not a result (fixture records)"
        return "QUICK PROFILE — not a result"


def _kind(profile: str, where: str) -> str:
    if profile in REAL_PROFILES:
        return "real"
    if profile in NOT_A_RESULT_PROFILES:
        return "quick"
    raise ReportInputError(
        f"{where}: unknown profile {profile!r}; valid: {', '.join(REAL_PROFILES + NOT_A_RESULT_PROFILES)}"
    )


def _check_accuracies(record: dict[str, Any], path: Path) -> None:
    """Refuse a record whose accuracies are not fractions (1e308 rendered as ``inf ± nan``)."""
    results = record["results"]
    entries = [("results", results)] + [
        (f"results.history[{i}]", h) for i, h in enumerate(results["history"]) if isinstance(h, dict)
    ]
    for where, entry in entries:
        for key, value in entry.items():
            if "accuracy" in key and value is not None:
                if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                    raise ReportInputError(
                        f"{path}: {where}.{key} = {value!r} is not an accuracy in [0, 1] (the record is "
                        "corrupt or edited: re-train the run or restore the record)"
                    )


def repo_path(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path`` relative to the repository ``root``, POSIX-style, as the report manifest cites files."""
    return Path(os.path.relpath(Path(path).resolve(), Path(root).resolve())).as_posix()


def collect_runs(
    runs_dir: str | os.PathLike | list | tuple, root: str | os.PathLike = ".", kind: str = "auto"
) -> RunSet:
    """Load every record under ``runs_dir`` and keep one kind (real or quick/fixture), never both.

    ``kind="auto"`` keeps real records when any exist, else the quick/fixture ones. Record paths are
    stored relative to ``root`` (the repository root), as the report manifest lists them.
    """
    if kind not in KINDS:
        raise ReportInputError(f"kind={kind!r}; valid: {list(KINDS)}")
    root = Path(root).resolve()
    loaded = []
    for path in find_records(runs_dir):
        record = load_record(path)
        _check_accuracies(record, path)
        loaded.append(Run(repo_path(path, root), record_hash(record), record))
    by_kind = {"real": [], "quick": []}
    for run in loaded:
        by_kind[_kind(run.profile, run.path)].append(run)
    chosen = kind if kind != "auto" else ("real" if by_kind["real"] or not by_kind["quick"] else "quick")
    other = "quick" if chosen == "real" else "real"
    return RunSet(tuple(by_kind[chosen]), chosen, tuple(by_kind[other]))


@dataclass(frozen=True)
class Summary:
    """Mean and spread of one configuration over seeds (percent). ``std`` is the sample std (0 for n=1)."""

    mean: float
    std: float
    n: int
    runs: tuple[Run, ...]
    values: tuple[float, ...]

    def cell(self) -> str:
        """Table text: ``73.21 ± 0.40 (n=3)``."""
        if self.n == 1:
            return f"{self.mean:.2f} (n=1)"
        return f"{self.mean:.2f} ± {self.std:.2f} (n={self.n})"


def summarize(runs: list[Run] | tuple[Run, ...], metric: str) -> Summary | None:
    """Summary of ``runs`` under ``metric``; None when no run has the number (shown as missing)."""
    pairs = sorted(((r.seed, r.path, r) for r in runs), key=lambda t: (t[0], t[1]))
    kept = [(r, r.accuracy(metric)) for _, _, r in pairs]
    kept = [(r, v) for r, v in kept if v is not None]
    if not kept:
        return None
    values = [v for _, v in kept]
    mean = math.fsum(values) / len(values)
    std = (
        math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    )
    return Summary(mean, std, len(values), tuple(r for r, _ in kept), tuple(values))


def same_epsilon(a: float | None, b: float | None) -> bool:
    """Targets compared with a tolerance (YAML may give 7 or 7.0)."""
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def select(runs, *, study=None, dataset=None, model=None, private=None, epsilon=None) -> list[Run]:
    """Runs matching every given criterion (``epsilon`` is the target epsilon; ignored for non-private)."""
    out = []
    for run in runs:
        if study is not None and run.study != study:
            continue
        if dataset is not None and run.dataset != dataset:
            continue
        if model is not None and run.model != model:
            continue
        if private is not None and run.private != private:
            continue
        if epsilon is not None and run.private and not same_epsilon(run.target_epsilon, epsilon):
            continue
        out.append(run)
    return out


def hashes_text(runs) -> str:
    """``abcd1234, ...`` sorted; "none" when empty."""
    shorts = sorted({r.short for r in runs})
    return ", ".join(shorts) if shorts else "none"


def privacy_text(runs) -> str:
    """The δ and accountant(s) of the private runs, for axis labels and captions."""
    private = [r for r in runs if r.private]
    deltas = sorted(
        {r.record["privacy"]["delta"] for r in private if r.record["privacy"]["delta"] is not None}
    )
    accountants = sorted(
        {r.record["privacy"]["accountant"] for r in private if r.record["privacy"]["accountant"]}
    )
    delta = "δ = " + ", ".join(f"{d:g}" for d in deltas) if deltas else "δ: no private runs"
    acc = ("ε by the " + "/".join(a.upper() for a in accountants) + " accountant") if accountants else ""
    return delta + (f"; {acc}" if acc else "")
