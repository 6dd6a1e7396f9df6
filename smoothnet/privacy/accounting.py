"""Privacy accounting for DP-SGD with Poisson sampling: four accountants, one interface.

``compute_epsilon`` turns a training history into epsilon at a given delta under one of

- ``"rdp"``: Opacus' RDP accountant (what the paper used, Opacus 1.1.1's default then);
- ``"prv"``: Opacus' PRV accountant (Gopi et al. 2021; today's Opacus default), returns its upper bound;
- ``"dpa_rdp"``: Google's ``dp-accounting`` RdpAccountant, an independent RDP implementation;
- ``"dpa_pld"``: Google's ``dp-accounting`` PLDAccountant (privacy-loss distributions), independent of PRV.

A history is what Opacus' accountants record: a list of ``(noise_multiplier, sample_rate, steps)``
segments, one per change of sigma or q (a resumed run with unchanged settings is still one segment).
Each step is one Poisson-subsampled Gaussian mechanism; both libraries are fed exactly that event.

Accounting facts this module relies on and callers must respect:

- Opacus' sample rate is ``q = 1 / len(data_loader)``, not ``batch_size / N`` (CIFAR-10 40k at batch 256:
  ``len = ceil(40000 / 256) = 157``, ``q = 1/157`` while ``256/40000 = 1/156.25``). Use :func:`opacus_sample_rate`.
- The accountants assume Poisson sampling. A shuffled loader with fixed batches is *not* covered by these
  numbers; a run that did not sample with Poisson has no valid epsilon from this module.
- The noise std is ``sigma * C`` on the summed clipped gradients; only sigma enters the accounting.
- Opacus' GDP accountant can underestimate epsilon (CLT approximation); it is deliberately not offered here
  and must never be recorded as the guarantee.
- ``get_noise_multiplier(epochs=E)`` converts epochs with ``int(E / q)``, which can come out one step short
  (e.g. ``int(3 / (1/75)) == 224``); a run then trains ``E * len(loader)`` steps, a hair more than planned.
  Prefer passing ``steps``.
- RDP is looser than PRV/PLD: at the paper's setting (q = 1/157, 28,260 steps, sigma 1.0132) RDP gives
  6.99 while PRV/PLD give about 6.47. PRV and PLD are both numerical and agree to about 1 %.
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from collections.abc import Iterable, Sequence

ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv", "dpa_rdp", "dpa_pld")
OPACUS_ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")
# Opacus' default precision of the noise-multiplier bisection (opacus.accountants.utils).
OPACUS_EPSILON_TOLERANCE = 0.01

Segment = tuple[float, float, int]


class AccountingError(ValueError):
    """Invalid accounting input: unknown accountant, out-of-range sigma, q, delta or steps."""


def opacus_sample_rate(n_examples: int, batch_size: int) -> float:
    """Opacus' sample rate for a loader over ``n_examples`` with ``batch_size``: ``1 / len(loader)``."""
    if n_examples <= 0 or batch_size <= 0:
        raise AccountingError(f"need positive n_examples and batch_size, got {n_examples} and {batch_size}")
    return 1.0 / math.ceil(n_examples / batch_size)


def normalize_history(history: Iterable[Sequence[float]]) -> list[Segment]:
    """Validate ``[(sigma, q, steps), ...]`` and return it as a list of typed tuples (zero-step segments dropped)."""
    segments: list[Segment] = []
    for i, segment in enumerate(history):
        if len(segment) != 3:
            raise AccountingError(
                f"history segment {i} must be (noise_multiplier, sample_rate, steps), got {segment!r}"
            )
        sigma, q, steps = segment
        if steps != int(steps) or int(steps) < 0:
            raise AccountingError(f"history segment {i}: steps must be a non-negative integer, got {steps!r}")
        if not (_is_real(sigma) and sigma >= 0 and math.isfinite(sigma)):
            raise AccountingError(
                f"history segment {i}: noise_multiplier must be finite and >= 0, got {sigma!r}"
            )
        if not (_is_real(q) and 0 < q <= 1):
            raise AccountingError(f"history segment {i}: sample_rate must be in (0, 1], got {q!r}")
        if int(steps) > 0:
            segments.append((float(sigma), float(q), int(steps)))
    return segments


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_delta(delta: float) -> None:
    if not (_is_real(delta) and 0 < delta < 1):
        raise AccountingError(f"delta must be in (0, 1), got {delta!r}")


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise AccountingError(f"unknown accountant {accountant!r}; choose one of {', '.join(ACCOUNTANTS)}")


def compute_epsilon(
    noise_multiplier: float | None = None,
    sample_rate: float | None = None,
    steps: int | None = None,
    delta: float = 1e-5,
    accountant: str = "rdp",
    *,
    history: Iterable[Sequence[float]] | None = None,
) -> float:
    """Epsilon at ``delta`` after DP-SGD with Poisson sampling, under ``accountant``.

    Pass either ``noise_multiplier, sample_rate, steps`` (one segment) or ``history=[(sigma, q, steps), ...]``.
    Zero steps spend nothing (0.0); any step with ``noise_multiplier == 0`` is not private (``inf``).
    """
    _check_accountant(accountant)
    _check_delta(delta)
    if history is None:
        if noise_multiplier is None or sample_rate is None or steps is None:
            raise AccountingError(
                "pass noise_multiplier, sample_rate and steps, or history=[(sigma, q, steps), ...]"
            )
        history = [(noise_multiplier, sample_rate, steps)]
    elif noise_multiplier is not None or sample_rate is not None or steps is not None:
        raise AccountingError("pass either a history or noise_multiplier/sample_rate/steps, not both")
    segments = normalize_history(history)
    if not segments:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in segments):
        return math.inf
    if accountant in OPACUS_ACCOUNTANTS:
        return _opacus_epsilon(segments, delta, accountant)
    return _dp_accounting_epsilon(segments, delta, accountant)


def _opacus_epsilon(segments: list[Segment], delta: float, accountant: str) -> float:
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = list(segments)
    with warnings.catch_warnings():
        # "Optimal order is the largest alpha": the bound is still valid, only possibly loose.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        # PRV at sample rate 1 (a plain Gaussian release) takes log(0) in a branch it then discards.
        warnings.filterwarnings(
            "ignore", message="divide by zero encountered in log", category=RuntimeWarning
        )
        return float(acc.get_epsilon(delta=delta))


def _dp_accounting_epsilon(segments: list[Segment], delta: float, accountant: str) -> float:
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    if accountant == "dpa_rdp":
        acc = rdp_privacy_accountant.RdpAccountant()
    else:
        acc = pld_privacy_accountant.PLDAccountant()
    absl = logging.getLogger("absl")
    absl.addFilter(_drop_unconverged_order)
    try:
        for sigma, q, steps in segments:
            event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
            acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
        return float(acc.get_epsilon(delta))
    finally:
        absl.removeFilter(_drop_unconverged_order)


def _drop_unconverged_order(record: logging.LogRecord) -> bool:
    """Drop dp-accounting's "_compute_log_a_frac failed to converge" warning. Harmless: the RDP order whose
    series did not converge is left out of the minimum over orders, so epsilon stays a valid upper bound
    (the other orders, including every integer one, still count)."""
    return "_compute_log_a_frac failed to converge" not in record.getMessage()


def epsilon_table(
    noise_multiplier: float | None = None,
    sample_rate: float | None = None,
    steps: int | None = None,
    delta: float = 1e-5,
    accountants: Sequence[str] = ACCOUNTANTS,
    *,
    history: Iterable[Sequence[float]] | None = None,
) -> dict[str, float]:
    """Epsilon under each of ``accountants`` for the same history, e.g. ``{"rdp": 6.99, "prv": 6.48, ...}``.

    Expected ordering for the Poisson-subsampled Gaussian: ``rdp ~= dpa_rdp >= prv ~= dpa_pld``.
    """
    for name in accountants:
        _check_accountant(name)
    if history is not None:
        history = normalize_history(history)
    return {
        name: compute_epsilon(noise_multiplier, sample_rate, steps, delta, name, history=history)
        for name in accountants
    }


def noise_for_target(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    accountant: str = "rdp",
    epsilon_tolerance: float = OPACUS_EPSILON_TOLERANCE,
    prior: Iterable[Sequence[float]] = (),
) -> float:
    """The noise multiplier that reaches at most ``target_epsilon`` after ``steps`` (or ``epochs``) steps.

    ``prior``: segments already spent before DP-SGD (e.g. the Gaussian releases of private feature
    statistics, :mod:`smoothnet.privacy.dp_statistics`); the sigma returned makes the *composition* of
    ``prior`` and DP-SGD reach at most ``target_epsilon``. With a prior, every accountant runs the bisection
    below (Opacus' ``get_noise_multiplier`` cannot take one).

    For ``"rdp"``/``"prv"`` this calls ``opacus.accountants.utils.get_noise_multiplier`` with the same
    arguments as ``PrivacyEngine.make_private_with_epsilon`` (which passes ``epochs`` and
    ``q = 1/len(loader)``), so it returns the very same sigma. For the dp-accounting accountants the same
    bisection (same bracket, same stopping rule) runs over :func:`compute_epsilon`. The returned sigma
    always satisfies ``epsilon(sigma) <= target_epsilon``; it is at most ``epsilon_tolerance`` looser.
    """
    _check_accountant(accountant)
    _check_delta(delta)
    if not (_is_real(target_epsilon) and target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise AccountingError(f"target_epsilon must be a positive finite number, got {target_epsilon!r}")
    if not (_is_real(sample_rate) and 0 < sample_rate <= 1):
        raise AccountingError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if (steps is None) == (epochs is None):
        raise AccountingError("pass exactly one of steps or epochs")
    if steps is not None and (steps != int(steps) or steps <= 0):
        raise AccountingError(f"steps must be a positive integer, got {steps!r}")
    if epochs is not None and not epochs > 0:
        raise AccountingError(f"epochs must be positive, got {epochs!r}")

    prior = normalize_history(prior)
    if accountant in OPACUS_ACCOUNTANTS and not prior:
        from opacus.accountants.utils import get_noise_multiplier

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    epochs=epochs,
                    steps=steps,
                    accountant=accountant,
                    epsilon_tolerance=epsilon_tolerance,
                )
            )
    if steps is None:
        steps = int(epochs / sample_rate)  # Opacus' conversion, kept for comparability

    if prior and compute_epsilon(delta=delta, accountant=accountant, history=prior) >= target_epsilon:
        raise AccountingError(
            f"target epsilon {target_epsilon} is already spent before DP-SGD starts (prior {prior})"
        )

    def eps(sigma: float) -> float:
        return compute_epsilon(
            delta=delta, accountant=accountant, history=[*prior, (sigma, sample_rate, steps)]
        )

    sigma_low, sigma_high, eps_high = 0.0, 10.0, math.inf
    while eps_high > target_epsilon:
        sigma_high *= 2
        if sigma_high > 1e6:
            raise AccountingError(f"target epsilon {target_epsilon} is unreachable (sigma would exceed 1e6)")
        eps_high = eps(sigma_high)
    while target_epsilon - eps_high > epsilon_tolerance:
        sigma = (sigma_low + sigma_high) / 2
        value = eps(sigma)
        if value < target_epsilon:
            sigma_high, eps_high = sigma, value
        else:
            sigma_low = sigma
    return sigma_high
