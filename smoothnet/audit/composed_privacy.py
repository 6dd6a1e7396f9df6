"""Audit of runs whose epsilon composes private feature statistics with DP-SGD.

A record with ``privacy.dp_statistics`` (:mod:`smoothnet.privacy.dp_statistics`) claims
``privacy.epsilon`` for the *composition* of the statistics' Gaussian releases and DP-SGD's
Poisson-subsampled Gaussian steps. This module re-derives that claim with an accountant independent of
the one that trained the run: Google's ``dp-accounting``, fed a ``GaussianDpEvent`` per release composed
with a ``PoissonSampledDpEvent`` per DP-SGD step (RDP for runs accounted with RDP, PLD for PRV), and checks

- the statistics were noised (noise multiplier > 0) and their releases are in the composition;
- the composed epsilon re-derived independently equals ``privacy.epsilon`` (within 0.01 under RDP; PLD and
  PRV, both numerical, within 2 %) and stays within the target;
- the recorded components and total equal their recomputation under the run's own accountant;
- DP-SGD's sigma is the one the calibration with the statistics' cost as prior picks for the target.

The DP-SGD-only checks of :mod:`smoothnet.audit.privacy_checks` (epsilon from the SGD history alone, sigma
calibrated without a prior) do not apply to such a record; :func:`apply_composed_privacy` replaces them by
these checks, and leaves every other record's checks untouched.
"""

from __future__ import annotations

from typing import Any

from smoothnet.audit.checks import FAIL, PASS, SKIP, Check, check_maker, short
from smoothnet.privacy.accounting import (
    OPACUS_EPSILON_TOLERANCE,
    compute_epsilon,
    epsilon_table,
    noise_for_target,
)
from smoothnet.privacy.dp_statistics import RELEASES

EPSILON_TOLERANCE = 0.01  # RDP vs RDP: the same bound from two implementations
PLD_RELATIVE_TOLERANCE = 0.02  # PRV (Opacus) vs PLD (dp-accounting): both numerical, agree to about 1 %
# privacy_checks' checks that assume epsilon comes from DP-SGD's history alone
SUPERSEDED = ("epsilon re-derived", "epsilon by accountant", "noise calibration", "epsilon within target")


_check = check_maker("privacy")


def independent_composed_epsilon(
    statistics_sigma: float,
    releases: int,
    sgd_history: list[tuple[float, float, int]],
    delta: float,
    accountant: str = "rdp",
) -> float:
    """Epsilon of ``releases`` Gaussian mechanisms (noise multiplier ``statistics_sigma``) composed with
    DP-SGD's ``[(sigma, q, steps), ...]``, from dp-accounting (RdpAccountant for ``rdp``, PLD otherwise)."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    if accountant == "rdp":
        acc = rdp_privacy_accountant.RdpAccountant()
    else:
        acc = pld_privacy_accountant.PLDAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(statistics_sigma), releases))
    for sigma, q, steps in sgd_history:
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        acc.compose(dp_accounting.SelfComposedDpEvent(event, int(steps)))
    return float(acc.get_epsilon(delta))


def check_composed_privacy(record: dict[str, Any]) -> list[Check]:
    """The composition checks of one record; ``[]`` when it released no private statistics."""
    privacy = record.get("privacy", {})
    stats = privacy.get("dp_statistics")
    options = (record.get("model") or {}).get("options") or {}
    if not privacy.get("private"):
        return []
    if stats is None:
        if options.get("input_norm") == "dp_bn":  # the model released statistics: their cost must be counted
            return [
                _check(
                    "statistics accounted",
                    "privacy.dp_statistics",
                    FAIL,
                    "model.options.input_norm is dp_bn but the record has no privacy.dp_statistics: the "
                    "statistics' releases are not in the claimed epsilon",
                )
            ]
        return []
    sigma_bn, releases = stats.get("noise_multiplier"), stats.get("releases")
    if not (
        isinstance(sigma_bn, int | float) and sigma_bn > 0 and isinstance(releases, int) and releases > 0
    ):
        return [
            _check(
                "statistics noised",
                "privacy.dp_statistics.noise_multiplier",
                FAIL,
                f"statistics released with noise multiplier {sigma_bn!r} x {releases!r} releases: not private",
            )
        ]
    checks = [
        _check("statistics noised", "privacy.dp_statistics", PASS, f"{releases} releases at sigma {sigma_bn}")
    ]
    # What the code releases, not what the record says it released.
    n_train = (record.get("dataset") or {}).get("n_train")
    mismatches = [
        f"{what} = {got!r}, expected {want!r}"
        for what, got, want in (
            ("releases", releases, RELEASES),
            ("noise_multiplier", sigma_bn, options.get("bn_noise_multiplier")),
            ("n", stats.get("n"), n_train),
        )
        if got != want
    ]
    if mismatches:
        checks.append(
            _check(
                "statistics as configured",
                "privacy.dp_statistics",
                FAIL,
                "; ".join(mismatches) + " (model.options, dataset.n_train, the code's two releases)",
            )
        )
    prior = [(float(sigma_bn), 1.0, 1)] * releases
    if [list(map(float, s)) for s in stats.get("history", [])] != [list(s) for s in prior]:
        checks.append(
            _check(
                "statistics history",
                "privacy.dp_statistics.history",
                FAIL,
                f"history {short(stats.get('history'))} is not {releases} x (sigma {sigma_bn}, q 1, 1 step)",
            )
        )
    sgd = [(float(s), float(q), int(n)) for s, q, n in privacy.get("accountant_history", [])]
    delta, accountant = privacy["delta"], privacy.get("accountant", "rdp")
    recorded = privacy.get("epsilon")
    independent = independent_composed_epsilon(sigma_bn, releases, sgd, delta, accountant)
    tolerance = (
        EPSILON_TOLERANCE
        if accountant == "rdp"
        else max(EPSILON_TOLERANCE, PLD_RELATIVE_TOLERANCE * independent)
    )
    ok = isinstance(recorded, int | float) and abs(recorded - independent) <= tolerance
    checks.append(
        _check(
            "composed epsilon (dp-accounting)",
            "privacy.epsilon",
            PASS if ok else FAIL,
            f"recorded {recorded!r}, dp-accounting {'RDP' if accountant == 'rdp' else 'PLD'} gives "
            f"{independent:.4f} for statistics + DP-SGD (tolerance {tolerance:.3g})",
            independent=independent,
        )
    )
    checks += _recorded_composition(privacy, prior, sgd, delta, accountant)
    checks += _target_checks(record, prior, independent)
    return checks


def _recorded_composition(privacy, prior, sgd, delta, accountant) -> list[Check]:
    composition = privacy.get("composition") or {}

    def eps(history):
        return compute_epsilon(delta=delta, accountant=accountant, history=history)

    expected = {
        "components.dp_statistics": eps(prior),
        "components.dp_sgd": eps(sgd),
        "total_epsilon": eps([*prior, *sgd]),
    }
    components = composition.get("components", {})
    recorded = {
        "components.dp_statistics": components.get("dp_statistics"),
        "components.dp_sgd": components.get("dp_sgd"),
        "total_epsilon": composition.get("total_epsilon"),
    }
    bad = [
        f"{k} = {recorded[k]!r} (re-derived {v:.4f})"
        for k, v in expected.items()
        if not (isinstance(recorded[k], int | float) and abs(recorded[k] - v) <= EPSILON_TOLERANCE)
    ]
    epsilon = privacy.get("epsilon")
    if isinstance(epsilon, int | float) and abs(epsilon - expected["total_epsilon"]) > EPSILON_TOLERANCE:
        bad.append(f"privacy.epsilon = {epsilon!r} is not the composed total {expected['total_epsilon']:.4f}")
    if bad:
        return [_check("composition recorded", "privacy.composition", FAIL, "; ".join(bad))]
    return [
        _check(
            "composition recorded",
            "privacy.composition",
            PASS,
            f"statistics {expected['components.dp_statistics']:.3f} + DP-SGD {expected['components.dp_sgd']:.3f} "
            f"-> {expected['total_epsilon']:.3f} ({accountant})",
        )
    ]


def _target_checks(record, prior, independent) -> list[Check]:
    privacy = record["privacy"]
    target = privacy.get("target_epsilon")
    if target is None:
        configured = (record.get("params") or {}).get("noise_multiplier")
        ok = configured is not None and privacy.get("noise_multiplier") == configured
        return [
            _check("composed epsilon within target", "privacy.target_epsilon", SKIP, "fixed-sigma run"),
            _check(
                "noise calibration",
                "privacy.noise_multiplier",
                PASS if ok else FAIL,
                f"fixed sigma {privacy.get('noise_multiplier')!r}; params.noise_multiplier {configured!r}",
            ),
        ]
    checks = [
        _check(
            "composed epsilon within target",
            "privacy.epsilon",
            PASS if privacy["epsilon"] <= target + OPACUS_EPSILON_TOLERANCE else FAIL,
            f"composed epsilon {privacy['epsilon']:.4f} vs target {target} (independent {independent:.4f})",
        )
    ]
    try:
        sigma = noise_for_target(
            target,
            privacy["delta"],
            privacy["sample_rate"],
            epochs=record["training"]["epochs"],
            accountant=privacy.get("accountant", "rdp"),
            prior=prior,
        )
    except Exception as exc:  # noqa: BLE001 - any calibration failure is the finding
        return [
            *checks,
            _check("composed calibration", "privacy.noise_multiplier", FAIL, f"cannot calibrate: {exc}"),
        ]
    ok = abs(sigma - privacy["noise_multiplier"]) <= 1e-9 * max(1.0, sigma)
    checks.append(
        _check(
            "composed calibration",
            "privacy.noise_multiplier",
            PASS if ok else FAIL,
            f"DP-SGD sigma {privacy['noise_multiplier']!r}; calibrating with the statistics' cost as prior gives "
            f"{sigma!r}",
        )
    )
    return checks


def apply_composed_privacy(
    record: dict[str, Any], checks: list[Check], epsilons: dict[str, float] | None
) -> tuple[list[Check], dict[str, float] | None]:
    """``checks`` and the re-derived ``epsilons`` table (from privacy_checks) for a record; when the record
    released private statistics, the DP-SGD-only epsilon checks are replaced by the composition checks and
    the table by the composed epsilon under each accountant. Unchanged otherwise."""
    composed = check_composed_privacy(record)
    if not composed:
        return checks, epsilons
    privacy = record["privacy"]
    stats = privacy["dp_statistics"]
    if any(c.status == FAIL and c.name == "statistics noised" for c in composed):
        table = epsilons
    else:
        prior = [(float(stats["noise_multiplier"]), 1.0, 1)] * int(stats["releases"])
        sgd = [tuple(s) for s in privacy.get("accountant_history", [])]
        table = epsilon_table(history=[*prior, *sgd], delta=privacy["delta"])
    kept = [
        c
        if c.group != "privacy" or c.name not in SUPERSEDED
        else _check(c.name, c.field, SKIP, "superseded by the composed-privacy checks (private statistics)")
        for c in checks
    ]
    if table is not epsilons:
        composed += _composed_by_accountant(privacy, table)
    return kept + composed, table


def _composed_by_accountant(privacy: dict[str, Any], table: dict[str, float]) -> list[Check]:
    """The recorded ``epsilon_by_accountant`` against the composed table (what the DP-SGD-only check it
    supersedes verified for other records)."""
    checks = []
    for name, value in sorted((privacy.get("epsilon_by_accountant") or {}).items()):
        field = f"privacy.epsilon_by_accountant.{name}"
        if name not in table:
            checks.append(
                _check("composed epsilon by accountant", field, FAIL, f"unknown accountant {name!r}")
            )
            continue
        ok = isinstance(value, int | float) and abs(value - table[name]) <= EPSILON_TOLERANCE
        checks.append(
            _check(
                "composed epsilon by accountant",
                field,
                PASS if ok else FAIL,
                f"recorded {short(value)}, composed re-derivation {table[name]:.4f}",
            )
        )
    return checks
