"""The run record: one JSON file per training run, enough to audit the run without rerunning it.

A record is a plain JSON object (schema below; :class:`RunRecord` is its typed form). The training engine
writes it, the report renders from it, the audit re-derives its privacy claim from it. ``validate_record``
checks that every required field is present with the right type, and names the missing ones.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from smoothnet.io import atomic_write_json, canonical_json, loads_json, sha256_bytes

SCHEMA_VERSION = 1
RECORD_FILENAME = "record.json"

# Required fields, as "section.key" -> accepted types. ``None`` inside a tuple means nullable.
REQUIRED_FIELDS: dict[str, tuple[type | None, ...]] = {
    "schema_version": (int,),
    "run_id": (str,),
    "profile": (str,),  # "paper", "improved", "quick", "fixture"
    "stage": (str,),  # DVC stage that produced it, e.g. "train@cifar10-smoothnet_w80d50-eps7-s0"
    "params": (dict,),  # the run's resolved parameters exactly as read from params.yaml
    "model.name": (str,),
    "model.options": (dict,),
    "model.num_parameters": (int,),
    "model.has_batchnorm": (bool,),
    "dataset.name": (str,),
    "dataset.fingerprint": (dict,),  # per split, see smoothnet.data
    "dataset.manifest_sha256": (str,),
    "dataset.n_train": (int,),
    "dataset.n_val": (int,),
    "dataset.n_test": (int,),
    "privacy.private": (bool,),
    "privacy.target_epsilon": (float, int, None),
    "privacy.delta": (float, int, None),
    "privacy.noise_multiplier": (float, int, None),
    "privacy.max_grad_norm": (float, int, None),
    "privacy.sample_rate": (float, int, None),
    "privacy.steps": (int,),
    "privacy.planned_steps": (int,),
    "privacy.sampling": (str,),  # "poisson" or "shuffle"
    "privacy.accountant": (str, None),  # "rdp", "prv" (or None for non-private runs)
    "privacy.epsilon": (float, int, None),  # reported by the accountant above
    "privacy.epsilon_by_accountant": (dict,),  # {"rdp": .., "prv": ..}
    "privacy.grad_sample_mode": (str, None),
    "training.epochs": (int,),
    "training.epochs_completed": (int,),
    "training.logical_batch_size": (int,),
    "training.physical_batch_size": (int,),
    "training.seed": (int,),
    "results.best_val_accuracy": (float, int, None),
    "results.final_val_accuracy": (float, int, None),
    "results.test_accuracy_at_best_val": (float, int, None),
    "results.final_test_accuracy": (float, int, None),
    "results.history": (list,),
    "performance.wall_time_s": (float, int),
    "performance.images_per_second": (float, int),
    "performance.peak_memory_bytes": (int,),
    "performance.device": (str,),
    "environment.python": (str,),
    "environment.torch": (str,),
    "environment.opacus": (str,),
    "environment.cuda": (str, None),
    "environment.cudnn": (int, str, None),
    "environment.git_revision": (str, None),
    "environment.git_dirty": (bool, None),
}


# Written by the trainer for DP runs and checked by the audit (smoothnet.audit.privacy_checks), not required
# here so that records of older code still load (the audit fails them instead): the sampler's steps per
# epoch, where the noise came from ("seeded": reproducible, not for release; "os_entropy": releasable).
AUDITED_PRIVACY_FIELDS: dict[str, tuple[type | None, ...]] = {
    "privacy.steps_per_epoch": (int,),
    "privacy.noise_source": (str, None),
}


class RecordError(ValueError):
    """A run record is missing fields, has wrong types, or cannot be read."""


def get_field(record: dict[str, Any], dotted: str) -> Any:
    """Value at ``"section.key"``; raises KeyError when absent."""
    value: Any = record
    for part in dotted.split("."):
        value = value[part]
    return value


def validate_record(record: dict[str, Any], where: str = "record") -> None:
    """Raise :class:`RecordError` naming every missing or mistyped field."""
    problems = []
    for dotted, types in REQUIRED_FIELDS.items():
        try:
            value = get_field(record, dotted)
        except (KeyError, TypeError):
            problems.append(f"missing field {dotted!r}")
            continue
        allowed = tuple(t for t in types if t is not None)
        if value is None and None in types:
            continue
        if isinstance(value, bool) and bool not in allowed:
            problems.append(f"field {dotted!r} has type bool, expected {_names(types)}")
        elif not isinstance(value, allowed):
            problems.append(f"field {dotted!r} has type {type(value).__name__}, expected {_names(types)}")
    if record.get("schema_version") not in (None, SCHEMA_VERSION) and "schema_version" in record:
        problems.append(f"schema_version {record['schema_version']} != {SCHEMA_VERSION}")
    if problems:
        raise RecordError(f"{where}: " + "; ".join(problems))


def _names(types: tuple[type | None, ...]) -> str:
    return " or ".join("null" if t is None else t.__name__ for t in types)


def write_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Validate and atomically write ``record`` as canonical JSON."""
    validate_record(record, where=str(path))
    atomic_write_json(path, record)


def load_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate one record."""
    try:
        record = loads_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise RecordError(f"{path}: cannot read run record ({exc})") from exc
    if not isinstance(record, dict):
        raise RecordError(f"{path}: a run record is a JSON object, got {type(record).__name__}")
    validate_record(record, where=str(path))
    return record


def record_hash(record: dict[str, Any]) -> str:
    """sha256 of the record's canonical JSON: what reports cite and the audit compares."""
    return sha256_bytes(canonical_json(record).encode("utf-8"))


def find_records(roots: str | os.PathLike | list | tuple) -> list[Path]:
    """Every ``record.json`` under ``roots`` (one folder or several), sorted by path; missing folders are empty."""
    if isinstance(roots, (list, tuple)):
        return sorted({path for root in roots for path in find_records(root)})
    root = Path(roots)
    if not root.exists():
        return []
    return sorted(root.rglob(RECORD_FILENAME))


# ----------------------------------------------------------------------------- the typed record
# What the trainer builds; ``to_dict`` gives exactly the JSON object above (a test round-trips every
# stored record through ``from_dict``). Values are plain JSON types; training computes them.


@dataclass
class ModelSection:
    """``model``: the architecture trained."""

    name: str
    options: dict[str, Any]
    num_parameters: int
    has_batchnorm: bool


@dataclass
class DatasetSection:
    """``dataset``: which prepared arrays, and how many examples per split."""

    name: str
    fingerprint: dict[str, Any]
    manifest_sha256: str
    n_train: int
    n_val: int
    n_test: int


@dataclass
class PrivacySection:
    """``privacy``: the DP-SGD claim (all accounting fields None / empty for a non-private run)."""

    private: bool
    target_epsilon: float | None
    delta: float | None
    noise_multiplier: float | None
    max_grad_norm: float | None
    sample_rate: float | None
    steps: int
    planned_steps: int
    sampling: str  # "poisson" or "shuffle"
    accountant: str | None
    epsilon: float | None
    epsilon_by_accountant: dict[str, float]
    grad_sample_mode: str | None
    method_choice: dict[str, Any] | None
    expected_batch_size: float | None
    accountant_history: list[list[float | int]]
    steps_per_epoch: int  # what the loader yielded (Opacus: int(1/q) batches)
    noise_source: str | None  # seeded (reproducible, not for release) or os_entropy
    # Only for runs that released private feature statistics before DP-SGD.
    dp_statistics: dict[str, Any] | None = None
    composition: dict[str, Any] | None = None


@dataclass
class TrainingSection:
    """``training``: the optimisation as run."""

    epochs: int
    epochs_completed: int
    logical_batch_size: int
    physical_batch_size: int
    seed: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    lr_schedule: str
    lr_schedule_detail: dict[str, Any]
    augmentation_multiplicity: int
    ema_decay: float | None
    train_on_validation: bool
    channels_last: bool
    autocast_bf16: bool
    world_size: int = 1


@dataclass
class ResultsSection:
    """``results``: held-out accuracies and the per-epoch history."""

    best_epoch: int | None
    best_val_accuracy: float | None
    final_val_accuracy: float | None
    test_accuracy_at_best_val: float | None
    final_test_accuracy: float | None
    final_test_accuracy_ema: float | None
    history: list[dict[str, Any]]

    @classmethod
    def from_history(cls, history: list[dict[str, Any]]) -> ResultsSection:
        """Best epoch by validation accuracy (first on ties; the last epoch without validation) and final."""
        best, final = best_epoch(history), (history[-1] if history else {})
        return cls(
            best_epoch=best.get("epoch"),
            best_val_accuracy=best.get("val_accuracy"),
            final_val_accuracy=final.get("val_accuracy"),
            test_accuracy_at_best_val=best.get("test_accuracy"),
            final_test_accuracy=final.get("test_accuracy"),
            final_test_accuracy_ema=final.get("test_accuracy_ema"),
            history=history,
        )


@dataclass
class PerformanceSection:
    """``performance``: wall time, throughput and memory (never compared between re-runs)."""

    wall_time_s: float
    images_per_second: float
    peak_memory_bytes: int
    device: str


@dataclass
class RunRecord:
    """One run's record, typed; :meth:`to_dict` is what ``record.json`` holds."""

    run_id: str
    profile: str
    stage: str
    params: dict[str, Any]
    model: ModelSection
    dataset: DatasetSection
    privacy: PrivacySection
    training: TrainingSection
    results: ResultsSection
    performance: PerformanceSection
    environment: dict[str, Any]  # library versions, git revision and dirtiness
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON object (the optional privacy sections only where present)."""
        record = asdict(self)
        for optional in _OPTIONAL_PRIVACY:
            if record["privacy"][optional] is None:
                del record["privacy"][optional]
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> RunRecord:
        """The typed view of a validated record (raises TypeError on unknown or missing keys)."""
        sections = {
            "model": ModelSection,
            "dataset": DatasetSection,
            "privacy": PrivacySection,
            "training": TrainingSection,
            "results": ResultsSection,
            "performance": PerformanceSection,
        }
        values = {key: value for key, value in record.items()}
        for key, section in sections.items():
            values[key] = section(**record[key])
        return cls(**values)


_OPTIONAL_PRIVACY = ("dp_statistics", "composition")


def best_epoch(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch with the best validation accuracy (first on ties); the last epoch without validation."""
    scored = [h for h in history if h.get("val_accuracy") is not None]
    if not scored:
        return history[-1] if history else {}
    return max(scored, key=lambda h: (h["val_accuracy"], -h["epoch"]))
