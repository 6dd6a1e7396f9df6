"""Empirical privacy audit with one training run (Steinke, Nasr & Jagielski 2023, arXiv 2305.08846).

The experiment, on a small multinomial logistic regression trained with Opacus DP-SGD (PrivacyEngine,
Poisson sampling, per-sample clipping, Gaussian noise):

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

A correct DP run must give a bound below the claimed epsilon (up to the 5 % chance the 95 % bound
allows); the same run with the noise switched off must give a bound above it.
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


def train_with_canaries(config: CanaryConfig) -> dict[str, Any]:
    """Train once with Opacus on real data + included canaries; return scores and the run's facts."""
    import torch
    from opacus import PrivacyEngine

    from smoothnet.privacy.accounting import compute_epsilon, noise_for_target

    config.validate()
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    data = _make_data(config, rng)
    x = np.concatenate([data["real_x"], data["canary_x"][data["included"]]])
    y = np.concatenate([data["real_y"], data["canary_y"][data["included"]]])
    n_train = len(x)
    batches = math.ceil(n_train / config.batch_size)
    sample_rate = 1.0 / batches
    steps = config.epochs * batches
    sigma = noise_for_target(
        config.target_epsilon, config.delta, sample_rate, steps=steps, accountant=config.accountant
    )
    noise_multiplier = sigma if config.noise else 0.0

    dataset = torch.utils.data.TensorDataset(
        torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, generator=torch.Generator().manual_seed(config.seed)
    )
    model = torch.nn.Linear(x.shape[1], config.num_classes)
    initial = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")  # seeded on purpose: reproducible
        engine = PrivacyEngine(accountant=config.accountant)
        model, optimizer, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            poisson_sampling=True,
            noise_generator=torch.Generator().manual_seed(config.seed + 1),
        )
    assert math.isclose(optimizer.expected_batch_size, int(n_train * sample_rate))
    loss_fn = torch.nn.CrossEntropyLoss()
    started = time.perf_counter()
    taken = 0
    with warnings.catch_warnings():
        # inputs never require grad here; Opacus' hooks still see every parameter gradient
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for _ in range(config.epochs):
            for xb, yb in dp_loader:
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(xb), yb).backward()
                optimizer.step()
                taken += 1
    seconds = time.perf_counter() - started

    weight = model._module.weight.detach() if hasattr(model, "_module") else model.weight.detach()
    moved = (weight - initial).numpy()[:, config.num_features :]  # (classes, m): canary columns
    direction = np.eye(config.num_classes)[data["canary_y"]] - 1.0 / config.num_classes  # (m, classes)
    scores = np.einsum("mc,cm->m", direction, moved)
    with torch.no_grad():
        real = torch.tensor(data["real_x"], dtype=torch.float32)
        accuracy = float((model(real).argmax(1).numpy() == data["real_y"]).mean())
    claimed = (
        compute_epsilon(noise_multiplier, sample_rate, taken, config.delta, config.accountant)
        if config.noise
        else config.target_epsilon
    )
    return {
        "scores": scores,
        "included": data["included"],
        "n_train": n_train,
        "sample_rate": sample_rate,
        "steps": taken,
        "planned_steps": steps,
        "noise_multiplier": noise_multiplier,
        "calibrated_noise_multiplier": sigma,
        "claimed_epsilon": float(claimed),
        "train_accuracy_real": accuracy,
        "train_seconds": seconds,
    }


def audit_run(config: CanaryConfig) -> dict[str, Any]:
    """Train one run and turn its canary scores into the epsilon lower bound (JSON-ready dict)."""
    run = train_with_canaries(config)
    m, k = config.num_canaries, config.guesses_per_side
    r, correct = guess_and_count(run["scores"], run["included"], k)
    bound = epsilon_lower_bound(m, r, correct, config.delta, config.confidence)
    included = run["included"]
    return {
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
        "mean_score_included": float(run["scores"][included].mean()),
        "mean_score_excluded": float(run["scores"][~included].mean()),
        "train_accuracy_real": run["train_accuracy_real"],
        "train_seconds": round(run["train_seconds"], 3),
    }


def run_canary_audit(config: CanaryConfig) -> dict[str, Any]:
    """The DP run and the same run with the noise switched off; ``passed`` when the audit separates them.

    Passed means: the DP run's lower bound stays below its claimed epsilon AND the no-noise run's bound
    exceeds the claim (the audit is able to catch a broken run).
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
        "passed": bool(dp["epsilon_lower_bound"] < claim and no_noise["epsilon_lower_bound"] > claim),
    }
