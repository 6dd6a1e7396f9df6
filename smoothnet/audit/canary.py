"""Empirical privacy audit with one training run (Steinke, Nasr & Jagielski 2023, arXiv 2305.08846).

The experiment, on a small multinomial logistic regression (no bias) trained through the package's own
``smoothnet.training.dp.make_private`` (by default its clipping module with Opacus' optimizer, Poisson
sampler and accountant). q, the steps and sigma come from public values only: the training set has one
slot per real example and per canary, an excluded canary's slot holding a null example (zero gradient).

1. ``m`` canaries, each included in the training set independently with probability 1/2 (``S_i``).
   Canary ``i`` is the input ``scale * e_{d + i}`` (a feature no real example and no other canary uses)
   with a random label: its clipped per-sample gradient lies in its own weight column (plus the shared
   bias), so it acts as a gradient-space (Dirac) canary inside the real Opacus pipeline. This is the
   white-box DP-SGD threat model where the audit is strongest.
2. Train on real data + included canaries. Score each canary by how far training moved its weight
   column towards its label: ``<W_T[:, j] - W_0[:, j], onehot(y) - 1/K>``.
3. Guess "included" for the ``k`` highest scores and "excluded" for the ``k`` lowest (``k`` fixed in
   advance; choosing it after seeing the scores would void the confidence level), abstain otherwise.
4. If training is (eps, delta)-DP, the number of correct guesses ``W`` out of ``r = 2k`` satisfies
   (their main theorem and its delta > 0 form, as in the p-value code of their paper)
   ``P[W >= v] <= P[Binomial(r, e^eps / (1 + e^eps)) >= v] + 2 m delta * max_{i<=v} P[v > Binom >= v - i] / i``.
   The lower bound is the largest eps whose p-value is still below ``1 - confidence``. The binomial
   tail is exact (``scipy.stats.binom``), so the bound never overstates; with delta = 0 it is the
   one-sided Clopper-Pearson bound on the guessing accuracy mapped through ``log(p / (1 - p))``.

5. Noise-variance test: an excluded canary's column moves by noise alone, so under the claimed sigma its
   score is exactly N(0, T (lr sigma C / B)^2 (K - 1) / K); a one-sided chi-square test on the excluded
   scores rejects under-noising (the membership bound alone cannot see 0.5x noise at this size).

A correct DP run must give a bound below the claimed epsilon (up to the 5 % chance the 95 % bound
allows) and pass the variance test (false alarm 1e-4); the same run with the noise switched off must
give a bound above the claim, and a run with half the claimed noise must fail.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

BOUND_BISECTION_STEPS = 60


class CanaryAuditError(ValueError):
    """Invalid canary-audit settings."""


@dataclass(frozen=True)
class CanaryConfig:
    """One canary audit. Claim: training is (target_epsilon, delta)-DP under ``accountant``."""

    num_canaries: int = 1000
    num_real: int = 1000
    num_features: int = 20
    num_classes: int = 10
    batch_size: int = 250  # logical batch; Opacus' q = 1 / ceil(N / batch_size)
    epochs: int = 5
    lr: float = 2.0
    max_grad_norm: float = 1.0
    canary_scale: float = 10.0
    target_epsilon: float = 2.0
    delta: float = 1e-5
    accountant: str = "rdp"
    guesses_per_side: int = 100  # k: r = 2k guesses
    confidence: float = 0.95
    seed: int = 0
    noise: bool = True  # False trains the same run with sigma = 0 (the broken run the audit must catch)
    noise_scale: float = 1.0  # < 1 trains with that fraction of the claimed sigma (an under-noising bug)
    method: str = "fast"  # per-sample method of the package's make_private
    variance_level: float = 1e-4  # false-alarm rate of the noise-variance test on a correct run

    def validate(self) -> None:
        """Raise :class:`CanaryAuditError` naming the bad setting, before any training."""
        positive = ("num_canaries", "num_real", "num_features", "num_classes", "batch_size", "epochs")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise CanaryAuditError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.num_classes < 2:
            raise CanaryAuditError("num_classes must be at least 2")
        if not 0 < self.guesses_per_side or 2 * self.guesses_per_side > self.num_canaries:
            raise CanaryAuditError(
                f"guesses_per_side={self.guesses_per_side}: need 0 < 2k <= num_canaries ({self.num_canaries})"
            )
        if not 0 < self.confidence < 1:
            raise CanaryAuditError(f"confidence must be in (0, 1), got {self.confidence}")
        if not (self.target_epsilon > 0 and 0 < self.delta < 1):
            raise CanaryAuditError(
                f"need target_epsilon > 0 and delta in (0, 1), got {self.target_epsilon}, {self.delta}"
            )
        for name in ("lr", "max_grad_norm", "canary_scale"):
            if not getattr(self, name) > 0:
                raise CanaryAuditError(f"{name} must be > 0, got {getattr(self, name)}")
        if not (self.noise_scale > 0 and 0 < self.variance_level < 1):
            raise CanaryAuditError(
                f"need noise_scale > 0 and variance_level in (0, 1), got {self.noise_scale}, {self.variance_level}"
            )
        if self.accountant not in ("rdp", "prv"):
            raise CanaryAuditError(f"accountant must be 'rdp' or 'prv', got {self.accountant!r}")


# ----------------------------------------------------------------------------- the bound


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[>= v correct of r guesses] for an (epsilon, delta)-DP algorithm with m canaries (upper bound)."""
    from scipy import stats

    if not 0 <= v <= r <= m:
        raise CanaryAuditError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    p = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of epsilon-DP randomized response
    beta = float(stats.binom.sf(v - 1, r, p))  # P[Binomial(r, p) >= v]
    if delta == 0 or v == 0:
        return min(beta, 1.0)
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, p)  # P[B = v-1], P[B = v-2], ..., P[B = 0]
    alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))  # max_i P[v > B >= v - i] / i
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """Largest epsilon rejected at ``confidence``: training is not (epsilon, delta)-DP, with that confidence.

    Bisection keeps ``p_value(eps_low) < 1 - confidence <= p_value(eps_high)``; returns ``eps_low``
    (0 when even epsilon = 0 cannot be rejected), so the result errs low, never high.
    """
    level = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < level:
        low, high = high, 2 * high
        if high > 1e4:
            return math.inf
    for _ in range(BOUND_BISECTION_STEPS):
        mid = (low + high) / 2
        if p_value(m, r, v, mid, delta) < level:
            low = mid
        else:
            high = mid
    return low


def guess_and_count(scores: np.ndarray, included: np.ndarray, k: int) -> tuple[int, int]:
    """Guess included for the top ``k`` scores, excluded for the bottom ``k``; return ``(r, correct)``."""
    order = np.argsort(scores, kind="stable")
    bottom, top = order[:k], order[-k:]
    correct = int(included[top].sum()) + int((~included[bottom]).sum())
    return 2 * k, correct


# ----------------------------------------------------------------------------- the training run


def _make_data(config: CanaryConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    d, m, k = config.num_features, config.num_canaries, config.num_classes
    centers = rng.normal(0.0, 1.0, size=(k, d))
    real_y = rng.integers(0, k, size=config.num_real)
    real_x = centers[real_y] + rng.normal(0.0, 1.0, size=(config.num_real, d))
    real_x = np.concatenate([real_x, np.zeros((config.num_real, m))], axis=1)
    canary_x = np.zeros((m, d + m))
    canary_x[np.arange(m), d + np.arange(m)] = config.canary_scale
    canary_y = rng.integers(0, k, size=m)
    included = rng.random(m) < 0.5
    return {
        "real_x": real_x,
        "real_y": real_y,
        "canary_x": canary_x,
        "canary_y": canary_y,
        "included": included,
    }


def _public_schedule(config: CanaryConfig) -> tuple[int, float, int, float]:
    """(slots, q, planned steps, sigma) from public values only: never from which canaries were drawn.

    The training set has ``num_real + num_canaries`` slots; an excluded canary's slot holds a null example
    (zero input to a bias-free layer: zero gradient, the same update as the example being absent), so the
    batch count and hence q, T and sigma cannot depend on the secret inclusion bits.
    """
    slots = config.num_real + config.num_canaries
    batches = math.ceil(slots / config.batch_size)
    sample_rate = 1.0 / batches
    steps = config.epochs * int(1 / sample_rate)  # what Opacus' Poisson loader yields
    sigma = noise_for_target_epochs(config, sample_rate)
    return slots, sample_rate, steps, sigma


def noise_for_target_epochs(config: CanaryConfig, sample_rate: float) -> float:
    """The sigma the package's make_private calibrates for the claim (planned epochs at ``sample_rate``)."""
    from smoothnet.training.dp import calibrate_noise

    return calibrate_noise(config.target_epsilon, config.delta, sample_rate, config.epochs, config.accountant)


def train_with_canaries(config: CanaryConfig) -> dict[str, Any]:
    """Train once through the package's ``make_private`` (its clipping module, Opacus' optimizer and
    accountant) on real data + included canaries; return scores and the run's facts."""
    import torch

    from smoothnet.privacy.accounting import compute_epsilon
    from smoothnet.training.dp import make_private, random_streams

    config.validate()
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    data = _make_data(config, rng)
    canary_x = np.where(data["included"][:, None], data["canary_x"], 0.0)  # null examples when excluded
    x = np.concatenate([data["real_x"], canary_x])
    y = np.concatenate([data["real_y"], data["canary_y"]])
    slots, sample_rate, planned, sigma = _public_schedule(config)
    noise_multiplier = sigma * config.noise_scale if config.noise else 0.0

    dataset = torch.utils.data.TensorDataset(
        torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    )
    model = torch.nn.Linear(x.shape[1], config.num_classes, bias=False)
    initial = model.weight.detach().clone()
    setup = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=config.lr),
        dataset,
        method=config.method,
        logical_batch_size=config.batch_size,
        max_grad_norm=config.max_grad_norm,
        epochs=config.epochs,
        accountant=config.accountant,
        delta=config.delta,
        target_epsilon=None,
        noise_multiplier=noise_multiplier,
        streams=random_streams(config.seed, "canary-audit", secure=False),
    )
    if setup.sample_rate != sample_rate or setup.steps_per_epoch * config.epochs != planned:
        raise CanaryAuditError(
            f"make_private sampled at q = {setup.sample_rate} for {setup.steps_per_epoch} steps an epoch; the "
            f"public schedule says q = {sample_rate}, {planned // config.epochs} steps"
        )
    started = time.perf_counter()
    taken = 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for _ in range(config.epochs):
            for xb, yb in setup.loader:
                if len(yb):
                    setup.backward(setup.model(xb), yb, 1)
                else:  # an empty Poisson batch still takes its noisy step
                    model.weight.grad = torch.zeros_like(model.weight)
                setup.optimizer.step()
                setup.optimizer.zero_grad(set_to_none=True)
                taken += 1
    seconds = time.perf_counter() - started

    moved = (model.weight.detach() - initial).double().numpy()[:, config.num_features :]  # (classes, m)
    direction = np.eye(config.num_classes)[data["canary_y"]] - 1.0 / config.num_classes  # (m, classes)
    scores = np.einsum("mc,cm->m", direction, moved)
    with torch.no_grad():
        real = torch.tensor(data["real_x"], dtype=torch.float32)
        accuracy = float((model(real).argmax(1).numpy() == data["real_y"]).mean())
    # Under the claimed sigma an excluded canary's column moves by noise alone: each of its entries by
    # N(0, T (lr sigma C / B)^2), so its score is N(0, that * (K - 1) / K).
    claimed_score_variance = (
        taken
        * (config.lr * sigma * config.max_grad_norm / setup.expected_batch_size) ** 2
        * (config.num_classes - 1)
        / config.num_classes
    )
    claimed = compute_epsilon(sigma, sample_rate, taken, config.delta, config.accountant)
    return {
        "scores": scores,
        "included": data["included"],
        "n_train": slots,
        "sample_rate": sample_rate,
        "steps": taken,
        "planned_steps": planned,
        "noise_multiplier": noise_multiplier,
        "calibrated_noise_multiplier": sigma,
        "claimed_epsilon": float(claimed),
        "claimed_score_variance": claimed_score_variance,
        "method": setup.method,
        "train_accuracy_real": accuracy,
        "train_seconds": seconds,
    }


def noise_variance_test(scores: np.ndarray, claimed_variance: float, level: float) -> dict[str, Any]:
    """One-sided chi-square test that the excluded canaries' scores have at least the claimed variance.

    Under the claimed noise, sum(s^2) / v ~ chi-square(n) exactly; under-noising by a factor f scales the
    statistic by f^2 (0.5x noise: by 1/4, rejected at any sensible level with a few hundred canaries).
    """
    from scipy import stats

    n = len(scores)
    statistic = float(np.sum(scores**2) / claimed_variance)
    p_low = float(stats.chi2.cdf(statistic, n))
    return {
        "excluded_canaries": n,
        "claimed_variance": claimed_variance,
        "observed_variance": float(np.mean(scores**2)),
        "variance_ratio": statistic / n,
        "p_value": p_low,
        "level": level,
        "rejected": bool(p_low < level),
    }


def audit_run(config: CanaryConfig) -> dict[str, Any]:
    """Train one run and turn its canary scores into the epsilon lower bound (JSON-ready dict)."""
    run = train_with_canaries(config)
    m, k = config.num_canaries, config.guesses_per_side
    r, correct = guess_and_count(run["scores"], run["included"], k)
    bound = epsilon_lower_bound(m, r, correct, config.delta, config.confidence)
    included = run["included"]
    variance = noise_variance_test(
        run["scores"][~included], run["claimed_score_variance"], config.variance_level
    )
    return {
        "method": run["method"],
        "noise_scale": config.noise_scale if config.noise else 0.0,
        "noise": config.noise,
        "noise_multiplier": run["noise_multiplier"],
        "calibrated_noise_multiplier": run["calibrated_noise_multiplier"],
        "sample_rate": run["sample_rate"],
        "steps": run["steps"],
        "n_train": run["n_train"],
        "canaries_included": int(included.sum()),
        "guesses": r,
        "correct": correct,
        "accuracy_of_guesses": correct / r,
        "epsilon_lower_bound": bound,
        "claimed_epsilon": run["claimed_epsilon"],
        "bound_below_claim": bool(bound < run["claimed_epsilon"]),
        "noise_variance_test": variance,
        "passed": bool(bound < run["claimed_epsilon"] and not variance["rejected"]),
        "mean_score_included": float(run["scores"][included].mean()),
        "mean_score_excluded": float(run["scores"][~included].mean()),
        "train_accuracy_real": run["train_accuracy_real"],
        "train_seconds": round(run["train_seconds"], 3),
    }


def run_canary_audit(config: CanaryConfig) -> dict[str, Any]:
    """The DP run and the same run with the noise switched off; ``passed`` when the audit separates them.

    Passed means: the DP run's lower bound stays below its claimed epsilon and its excluded canaries show
    the claimed noise variance, AND the no-noise run's bound exceeds the claim (the audit is able to catch a
    broken run). ``config.noise_scale`` < 1 makes the DP arm an under-noised run, which must fail.
    """
    config.validate()
    dp = audit_run(replace(config, noise=True))
    no_noise = audit_run(replace(config, noise=False))
    claim = config.target_epsilon
    return {
        "method": "Steinke, Nasr & Jagielski 2023, one training run, exact binomial tail",
        "config": {k: v for k, v in asdict(config).items() if k != "noise"},
        "claimed_epsilon": claim,
        "dp": dp,
        "no_noise": no_noise,
        "dp_bound_below_claim": bool(dp["epsilon_lower_bound"] < claim),
        "no_noise_bound_above_claim": bool(no_noise["epsilon_lower_bound"] > claim),
        "dp_noise_variance_as_claimed": not dp["noise_variance_test"]["rejected"],
        "passed": bool(dp["passed"] and no_noise["epsilon_lower_bound"] > claim),
    }
