"""Sanity of a record's results: accuracies are fractions, the run finished its planned steps, DP runs
sampled with Poisson (the accountants' assumption), the model has no BatchNorm (not DP-compatible), and
the summary accuracies are the ones in the per-epoch history, and the history itself is consistent
(epochs 1..n, steps never decreasing, its last steps and epsilon equal the record's).
"""

from __future__ import annotations

import math
from typing import Any

from smoothnet.audit.checks import FAIL, PASS, Check, check_maker

GROUP = "sanity"
SUMMARY_FIELDS = (
    "best_val_accuracy",
    "final_val_accuracy",
    "test_accuracy_at_best_val",
    "final_test_accuracy",
)


_check = check_maker(GROUP)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_sanity(record: dict[str, Any]) -> list[Check]:
    """All sanity checks of one record."""
    return (
        _accuracy_ranges(record)
        + _history_agrees(record)
        + _history_consistent(record)
        + _steps(record)
        + _sampling(record)
        + _batchnorm(record)
    )


def _accuracy_ranges(record: dict[str, Any]) -> list[Check]:
    results = record["results"]
    bad = []
    for key, value in results.items():
        if "accuracy" in key and value is not None and not (_is_number(value) and 0.0 <= value <= 1.0):
            bad.append(
                _check(
                    "accuracy in [0, 1]",
                    f"results.{key}",
                    FAIL,
                    f"results.{key} = {value!r} is not in [0, 1]",
                )
            )
    for i, entry in enumerate(results["history"]):
        for key, value in entry.items() if isinstance(entry, dict) else []:
            if "accuracy" in key and value is not None and not (_is_number(value) and 0.0 <= value <= 1.0):
                field = f"results.history[{i}].{key}"
                bad.append(_check("accuracy in [0, 1]", field, FAIL, f"{field} = {value!r} is not in [0, 1]"))
    return bad or [_check("accuracy in [0, 1]", "results", PASS, "every accuracy is a fraction in [0, 1]")]


def _history_agrees(record: dict[str, Any]) -> list[Check]:
    """Summary accuracies must be values of the per-epoch history (best-val epoch, last epoch)."""
    results = record["results"]
    history = [h for h in results["history"] if isinstance(h, dict)]
    if not history:
        return [
            _check("results match history", "results.history", FAIL, "the record has no per-epoch history")
        ]
    scored = [h for h in history if _is_number(h.get("val_accuracy"))]
    best = max(scored, key=lambda h: (h["val_accuracy"], -h.get("epoch", 0))) if scored else history[-1]
    last = history[-1]
    expected = {
        "best_val_accuracy": best.get("val_accuracy") if scored else None,
        "test_accuracy_at_best_val": best.get("test_accuracy"),
        "final_val_accuracy": last.get("val_accuracy"),
        "final_test_accuracy": last.get("test_accuracy"),
    }
    bad = []
    for key, want in expected.items():
        got = results.get(key)
        if want is None and got is None:
            continue
        if want is None or got is None or not math.isclose(float(got), float(want), rel_tol=0, abs_tol=1e-12):
            bad.append(
                _check(
                    "results match history",
                    f"results.{key}",
                    FAIL,
                    f"results.{key} = {got!r} but the per-epoch history gives {want!r} (edited?)",
                )
            )
    return bad or [_check("results match history", "results", PASS, "summary accuracies equal the history's")]


def _history_consistent(record: dict[str, Any]) -> list[Check]:
    """One history entry per completed epoch, numbered 1..n, steps never decreasing; the last entry's steps
    and epsilon are the record's (a deleted or duplicated epoch, or an edited total, fails)."""
    history = [h for h in record["results"]["history"] if isinstance(h, dict)]
    if not history:
        return []  # reported by _history_agrees
    privacy, n = record["privacy"], record["training"]["epochs_completed"]
    field, bad = "results.history", []
    epochs = [h.get("epoch") for h in history]
    if epochs != list(range(1, n + 1)):
        bad.append(f"epochs are {_span(epochs)}, expected 1..{n} (training.epochs_completed)")
    steps = [h.get("steps") for h in history]
    if not all(_is_number(s) for s in steps) or any(b < a for a, b in zip(steps, steps[1:], strict=False)):
        bad.append("steps are missing or decrease between epochs")
    elif steps[-1] != privacy["steps"]:
        bad.append(f"the last epoch's steps {steps[-1]} != privacy.steps {privacy['steps']}")
    last_eps = history[-1].get("epsilon")
    if privacy["private"] and (
        not _is_number(last_eps)
        or not _is_number(privacy["epsilon"])
        or not math.isclose(last_eps, privacy["epsilon"], rel_tol=1e-9, abs_tol=1e-12)
    ):
        bad.append(f"the last epoch's epsilon {last_eps!r} != privacy.epsilon {privacy['epsilon']!r}")
    if bad:
        return [_check("history consistent", field, FAIL, "; ".join(bad) + " (edited?)")]
    return [
        _check("history consistent", field, PASS, f"epochs 1..{n}; last steps and epsilon equal the record's")
    ]


def _span(values: list[Any]) -> str:
    return repr(values) if len(values) <= 6 else f"{values[:3]!r}...{values[-3:]!r} ({len(values)} entries)"


def _steps(record: dict[str, Any]) -> list[Check]:
    privacy, training = record["privacy"], record["training"]
    if training["epochs_completed"] != training["epochs"]:
        return [
            _check(
                "planned steps",
                "training.epochs_completed",
                FAIL,
                f"incomplete run: {training['epochs_completed']} of {training['epochs']} epochs",
            )
        ]
    if privacy["steps"] != privacy["planned_steps"]:
        return [
            _check(
                "planned steps",
                "privacy.steps",
                FAIL,
                f"privacy.steps = {privacy['steps']} but planned_steps = {privacy['planned_steps']}",
            )
        ]
    return [_check("planned steps", "privacy.steps", PASS, f"{privacy['steps']} steps as planned")]


def _sampling(record: dict[str, Any]) -> list[Check]:
    privacy = record["privacy"]
    if not privacy["private"]:
        return []
    if privacy["sampling"] != "poisson":
        return [
            _check(
                "Poisson sampling",
                "privacy.sampling",
                FAIL,
                f"privacy.sampling = {privacy['sampling']!r}: the accountants' epsilon assumes Poisson sampling",
            )
        ]
    return [_check("Poisson sampling", "privacy.sampling", PASS, "Poisson sampling")]


def _batchnorm(record: dict[str, Any]) -> list[Check]:
    if record["model"]["has_batchnorm"]:
        return [
            _check(
                "no BatchNorm",
                "model.has_batchnorm",
                FAIL,
                "the model has BatchNorm (mixes examples: not DP)",
            )
        ]
    return [_check("no BatchNorm", "model.has_batchnorm", PASS, "no BatchNorm")]
