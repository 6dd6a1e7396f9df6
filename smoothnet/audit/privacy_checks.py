"""Re-derive a run's privacy claim from its record alone, under four accountants.

What a record claims (``privacy.*``) and what is re-derived here:

- the accountant history (``accountant_history``, else one segment ``(noise_multiplier, sample_rate, steps)``)
  agrees with the scalar fields;
- the sample rate is Opacus' ``1 / len(loader) = 1 / ceil(n_train / logical_batch_size)``, the rate its
  Poisson sampler draws with; the steps an epoch are what that loader yields (``int(1 / q)``, one fewer
  than ``ceil(n_train / batch)`` for many sizes) and ``planned_steps`` is epochs times that;
- delta is below 1/n_train (a failure otherwise: such a delta allows releasing an example outright);
- the record says where the noise came from: ``os_entropy`` runs are releasable, ``seeded`` ones are
  reproducible but not for release (noted), a record without the field predates it (re-train);
- a DP run's history carries no raw training statistics (train loss/accuracy are not private);
- the noise multiplier is the one ``make_private_with_epsilon`` picks for the target (or the fixed one
  in the run's params);
- ``epsilon`` equals the recomputation under the record's own accountant (within 0.01), every entry of
  ``epsilon_by_accountant`` equals its recomputation, and epsilon does not exceed the target;
- Opacus RDP, Opacus PRV, dp-accounting RDP and dp-accounting PLD agree within their known gaps:
  the two RDP implementations match, RDP is never tighter than PRV/PLD, PRV and PLD agree within a few %.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from smoothnet.audit.checks import FAIL, PASS, SKIP, WARN, Check, check_maker, short
from smoothnet.privacy.accounting import (
    ACCOUNTANTS,
    OPACUS_ACCOUNTANTS,
    OPACUS_EPSILON_TOLERANCE,
    AccountingError,
    epsilon_table,
    noise_for_target,
)

EPSILON_TOLERANCE = 0.01  # recorded vs re-derived epsilon, same accountant
TARGET_TOLERANCE = OPACUS_EPSILON_TOLERANCE  # epsilon may exceed the target by Opacus' bisection precision
# Opacus RDP vs dp-accounting RDP: the same bound over different grids of orders; at large q and few steps
# the grids' best orders differ (measured: 7.998 vs 8.009 at q = 1/5, 15 steps).
RDP_IMPLEMENTATION_ABS, RDP_IMPLEMENTATION_REL = 0.01, 0.01
ORDER_SLACK = 0.02  # RDP must not be tighter than PRV/PLD by more than this
TIGHT_ABS, TIGHT_REL = 0.02, 0.03  # PRV vs PLD: |prv - pld| <= TIGHT_ABS + TIGHT_REL * max(prv, pld)

GROUP = "privacy"


@lru_cache(maxsize=256)
def _table(history: tuple[tuple[float, float, int], ...], delta: float) -> dict[str, float]:
    return epsilon_table(history=list(history), delta=delta, accountants=ACCOUNTANTS)


@lru_cache(maxsize=64)
def _calibrated_sigma(target: float, delta: float, q: float, epochs: int, accountant: str) -> float:
    return noise_for_target(target, delta, q, epochs=epochs, accountant=accountant)


_check = check_maker(GROUP)


def record_history(record: dict[str, Any]) -> list[tuple[float, float, int]]:
    """The accountant history a record claims: ``privacy.accountant_history`` or its one-segment equivalent."""
    privacy = record["privacy"]
    stored = privacy.get("accountant_history")
    if stored:
        return [(float(s), float(q), int(n)) for s, q, n in stored]
    return [(float(privacy["noise_multiplier"]), float(privacy["sample_rate"]), int(privacy["steps"]))]


def check_privacy(
    record: dict[str, Any], epsilon_tolerance: float = EPSILON_TOLERANCE
) -> tuple[list[Check], dict[str, float] | None]:
    """Every privacy check of one record, and the re-derived epsilon table (``None`` for non-private runs).

    ``epsilon_tolerance``: how far a recorded epsilon may be from its re-derivation (params ``audit``).
    """
    privacy = record["privacy"]
    if not privacy["private"]:
        return _non_private(privacy), None

    checks: list[Check] = []
    missing = [
        k for k in ("noise_multiplier", "sample_rate", "delta", "accountant") if privacy.get(k) is None
    ]
    if missing:
        for key in missing:
            checks.append(_check("claim complete", f"privacy.{key}", FAIL, f"DP run without privacy.{key}"))
        return checks, None
    sigma, q, delta, steps = (
        float(privacy["noise_multiplier"]),
        float(privacy["sample_rate"]),
        float(privacy["delta"]),
        int(privacy["steps"]),
    )
    checks += _history_checks(record, sigma, q, steps)
    checks += _sample_rate_checks(record, q)
    checks.append(_delta_check(record, delta))
    checks.append(_noise_source_check(privacy))
    checks.append(_raw_statistics_check(record))
    checks.append(_calibration_check(record, sigma, q, delta))

    try:
        table = _table(tuple(record_history(record)), delta)
    except (AccountingError, ValueError, TypeError) as exc:
        checks.append(
            _check("epsilon re-derived", "privacy.accountant_history", FAIL, f"cannot account: {exc}")
        )
        return checks, None

    checks += _epsilon_checks(privacy, table, epsilon_tolerance)
    checks += _consistency_checks(table)
    return checks, table


def _non_private(privacy: dict[str, Any]) -> list[Check]:
    claimed = {
        k: privacy.get(k)
        for k in ("epsilon", "noise_multiplier", "target_epsilon")
        if privacy.get(k) is not None
    }
    if claimed or privacy.get("epsilon_by_accountant"):
        return [
            _check(
                "non-private run claims no guarantee",
                "privacy.epsilon",
                FAIL,
                f"run is marked non-private but records privacy values {short(claimed or privacy['epsilon_by_accountant'])}",
            )
        ]
    return [
        _check("privacy checks", "privacy.private", SKIP, "non-private run: no privacy claim to re-derive")
    ]


def _history_checks(record: dict[str, Any], sigma: float, q: float, steps: int) -> list[Check]:
    stored = record["privacy"].get("accountant_history")
    if not stored:
        return [
            _check(
                "history",
                "privacy.accountant_history",
                PASS,
                "no stored history; accounted as one segment (noise_multiplier, sample_rate, steps)",
            )
        ]
    try:
        history = [(float(s), float(r), int(n)) for s, r, n in stored]
    except (TypeError, ValueError) as exc:
        return [
            _check(
                "history", "privacy.accountant_history", FAIL, f"malformed history {short(stored)} ({exc})"
            )
        ]
    checks = []
    total = sum(n for _, _, n in history)
    if total != steps:
        checks.append(
            _check(
                "history",
                "privacy.steps",
                FAIL,
                f"privacy.steps = {steps} but the history sums to {total} steps",
            )
        )
    for column, (name, claimed) in enumerate((("noise_multiplier", sigma), ("sample_rate", q))):
        used = {segment[column] for segment in history}
        if used != {claimed}:
            message = f"privacy.{name} = {claimed!r} but the accountant history used {sorted(used)}"
            checks.append(_check("history", f"privacy.{name}", FAIL, message))
    return checks or [
        _check("history", "privacy.accountant_history", PASS, f"{len(history)} segment(s), {total} steps")
    ]


def _sample_rate_checks(record: dict[str, Any], q: float) -> list[Check]:
    n_train = record["dataset"]["n_train"]
    batch = record["training"]["logical_batch_size"]
    if n_train <= 0 or batch <= 0:
        return [
            _check("sample rate", "dataset.n_train", FAIL, f"n_train={n_train}, logical_batch_size={batch}")
        ]
    batches = math.ceil(n_train / batch)
    expected = 1.0 / batches
    if not math.isclose(q, expected, rel_tol=1e-9):
        return [
            _check(
                "sample rate",
                "privacy.sample_rate",
                FAIL,
                f"privacy.sample_rate = {q!r}, but Opacus' q = 1/len(loader) = 1/ceil({n_train}/{batch}) = "
                f"1/{batches} = {expected!r}",
            )
        ]
    checks = [
        _check(
            "sample rate", "privacy.sample_rate", PASS, f"q = 1/{batches} (n_train {n_train}, batch {batch})"
        )
    ]
    epochs = record["training"]["epochs"]
    planned = record["privacy"]["planned_steps"]
    per_epoch = record["privacy"].get("steps_per_epoch")
    if per_epoch is None:  # records before steps_per_epoch: the batch count of the plain loader
        per_epoch, source = batches, f"ceil({n_train}/{batch})"
    else:
        poisson = record["privacy"].get("sampling") == "poisson"
        yielded = int(1 / expected) if poisson else batches  # Opacus' Poisson loader yields int(1/q) batches
        source = "privacy.steps_per_epoch"
        if per_epoch != yielded:
            checks.append(
                _check(
                    "steps per epoch",
                    "privacy.steps_per_epoch",
                    FAIL,
                    f"privacy.steps_per_epoch = {per_epoch}, but the {'Poisson' if poisson else 'shuffling'} "
                    f"loader at q = 1/{batches} yields {yielded} batches an epoch",
                )
            )
    if planned != epochs * per_epoch:
        checks.append(
            _check(
                "planned steps",
                "privacy.planned_steps",
                FAIL,
                f"privacy.planned_steps = {planned}, but {epochs} epochs x {per_epoch} batches ({source}) = "
                f"{epochs * per_epoch}",
            )
        )
    return checks


def _delta_check(record: dict[str, Any], delta: float) -> Check:
    n_train = record["dataset"]["n_train"]
    if not 0 < delta < 1:
        return _check("delta", "privacy.delta", FAIL, f"delta = {delta!r} is not in (0, 1)")
    if n_train > 0 and delta >= 1 / n_train:
        return _check(
            "delta",
            "privacy.delta",
            FAIL,
            f"delta = {delta:g} >= 1/n_train = {1 / n_train:.3g}: no meaningful guarantee (an algorithm that "
            "publishes one random example is (0, 1/n)-DP); use delta < 1/n, e.g. 1e-5 for 50,000 examples",
        )
    return _check("delta", "privacy.delta", PASS, f"delta = {delta:g} < 1/n_train = {1 / n_train:.3g}")


def _noise_source_check(privacy: dict[str, Any]) -> Check:
    source = privacy.get("noise_source")
    if source == "os_entropy":
        return _check(
            "noise source", "privacy.noise_source", PASS, "noise and sampling from OS entropy: releasable"
        )
    if source == "seeded":
        return _check(
            "noise source",
            "privacy.noise_source",
            WARN,
            "reproducible, not for release: noise and sampling are derived from the public seed and run id "
            "(anyone can regenerate them); train with secure_noise: true for a model to release",
        )
    return _check(
        "noise source",
        "privacy.noise_source",
        FAIL,
        f"privacy.noise_source = {source!r}: expected 'seeded' or 'os_entropy' (a record without it was written "
        "before runs had their own noise streams; re-train it)",
    )


RAW_TRAINING_STATISTICS = ("train_loss", "train_accuracy")


def _raw_statistics_check(record: dict[str, Any]) -> Check:
    history = (record.get("results") or {}).get("history") or []
    leaked = sorted({k for entry in history for k in entry if k in RAW_TRAINING_STATISTICS})
    if leaked:
        return _check(
            "no raw training statistics",
            "results.history",
            FAIL,
            f"a DP run's history records {leaked}: raw means over private examples (no clipping, no noise) "
            "that its epsilon does not cover; re-train with the current trainer",
        )
    return _check(
        "no raw training statistics",
        "results.history",
        PASS,
        "history holds held-out metrics and accounting only",
    )


def _calibration_check(record: dict[str, Any], sigma: float, q: float, delta: float) -> Check:
    privacy = record["privacy"]
    target = privacy.get("target_epsilon")
    accountant = privacy["accountant"]
    if target is None:
        fixed = (record.get("params") or {}).get("noise_multiplier")
        if fixed is None:
            return _check(
                "noise calibration",
                "privacy.noise_multiplier",
                FAIL,
                "DP run with neither a target epsilon nor a fixed noise_multiplier in its params",
            )
        if float(fixed) != sigma:
            return _check(
                "noise calibration",
                "privacy.noise_multiplier",
                FAIL,
                f"privacy.noise_multiplier = {sigma!r} but the run's params fix noise_multiplier = {fixed!r}",
            )
        return _check(
            "noise calibration", "privacy.noise_multiplier", PASS, f"fixed sigma {sigma!r} as in params"
        )
    if accountant not in OPACUS_ACCOUNTANTS:
        return _check(
            "noise calibration",
            "privacy.accountant",
            FAIL,
            f"privacy.accountant = {accountant!r}; the trainer calibrates with Opacus 'rdp' or 'prv'",
        )
    epochs = record["training"]["epochs"]
    try:
        expected = _calibrated_sigma(float(target), delta, q, int(epochs), accountant)
    except (AccountingError, ValueError) as exc:
        return _check("noise calibration", "privacy.target_epsilon", FAIL, f"cannot calibrate: {exc}")
    if not math.isclose(sigma, expected, rel_tol=1e-9):
        return _check(
            "noise calibration",
            "privacy.noise_multiplier",
            FAIL,
            f"privacy.noise_multiplier = {sigma!r}, but make_private_with_epsilon(target {target}, delta {delta:g}, "
            f"{epochs} epochs, q {q:.6g}, {accountant}) picks {expected!r}",
            expected=expected,
        )
    return _check(
        "noise calibration",
        "privacy.noise_multiplier",
        PASS,
        f"sigma {sigma!r} is what make_private_with_epsilon picks for epsilon {target} ({accountant})",
    )


def _epsilon_checks(privacy: dict[str, Any], table: dict[str, float], tolerance: float) -> list[Check]:
    checks = []
    accountant = privacy["accountant"]
    recorded = privacy.get("epsilon")
    if accountant not in OPACUS_ACCOUNTANTS:
        checks.append(
            _check(
                "epsilon re-derived",
                "privacy.accountant",
                FAIL,
                f"privacy.accountant = {accountant!r} is not a guarantee this audit accepts (use 'rdp' or 'prv'; "
                "GDP can underestimate epsilon)",
            )
        )
    elif recorded is None:
        checks.append(
            _check("epsilon re-derived", "privacy.epsilon", FAIL, "DP run without a recorded epsilon")
        )
    else:
        derived = table[accountant]
        ok = abs(float(recorded) - derived) <= tolerance
        checks.append(
            _check(
                "epsilon re-derived",
                "privacy.epsilon",
                PASS if ok else FAIL,
                f"recorded {float(recorded):.4f}, re-derived {derived:.4f} ({accountant}) from noise_multiplier, "
                f"sample_rate, steps and delta" + ("" if ok else f": differs by more than {tolerance}"),
                recorded=recorded,
                rederived=derived,
            )
        )
    for name, value in sorted((privacy.get("epsilon_by_accountant") or {}).items()):
        field = f"privacy.epsilon_by_accountant.{name}"
        if name not in table:
            checks.append(
                _check(
                    "epsilon by accountant",
                    field,
                    FAIL,
                    f"unknown accountant {name!r} (accepted: {', '.join(ACCOUNTANTS)}; GDP is never a guarantee)",
                )
            )
            continue
        ok = value is not None and abs(float(value) - table[name]) <= tolerance
        checks.append(
            _check(
                "epsilon by accountant",
                field,
                PASS if ok else FAIL,
                f"recorded {short(value)}, re-derived {table[name]:.4f}",
            )
        )
    target = privacy.get("target_epsilon")
    if target is None:
        checks.append(
            _check("epsilon within target", "privacy.target_epsilon", SKIP, "fixed-sigma run: no target")
        )
    elif accountant in table:
        spent = max(table[accountant], float(recorded) if recorded is not None else 0.0)
        ok = spent <= float(target) + TARGET_TOLERANCE
        checks.append(
            _check(
                "epsilon within target",
                "privacy.epsilon",
                PASS if ok else FAIL,
                f"epsilon {spent:.4f} {'<=' if ok else '>'} target {float(target)} (+{TARGET_TOLERANCE})",
            )
        )
    return checks


def _consistency_checks(table: dict[str, float]) -> list[Check]:
    rdp, prv, dpa_rdp, pld = (table[k] for k in ("rdp", "prv", "dpa_rdp", "dpa_pld"))
    summary = ", ".join(f"{k} {v:.4f}" for k, v in table.items())
    problems = []
    if abs(rdp - dpa_rdp) > RDP_IMPLEMENTATION_ABS + RDP_IMPLEMENTATION_REL * max(rdp, dpa_rdp):
        problems.append(f"Opacus RDP {rdp:.4f} and dp-accounting RDP {dpa_rdp:.4f} disagree")
    if rdp < max(prv, pld) - ORDER_SLACK:
        problems.append(
            f"RDP {rdp:.4f} is tighter than PRV/PLD ({prv:.4f}/{pld:.4f}), impossible for a valid bound"
        )
    if abs(prv - pld) > TIGHT_ABS + TIGHT_REL * max(prv, pld):
        problems.append(f"PRV {prv:.4f} and PLD {pld:.4f} differ by more than {TIGHT_REL:.0%} + {TIGHT_ABS}")
    if problems:
        return [
            _check(
                "accountants agree", "privacy.epsilon_by_accountant", FAIL, "; ".join(problems), table=table
            )
        ]
    return [_check("accountants agree", "privacy.epsilon_by_accountant", PASS, summary, table=table)]
