"""The one-run canary audit (Steinke, Nasr & Jagielski 2023): the bound is valid, and the audit separates a
real DP run (bound below the claim) from the same run with the noise switched off (bound above it)."""

from __future__ import annotations

import argparse
import json
import math

import pytest
from scipy import stats

from smoothnet.audit.canary import (
    CanaryAuditError,
    CanaryConfig,
    epsilon_lower_bound,
    guess_and_count,
    p_value,
)
from smoothnet.audit.cli import add_arguments
from smoothnet.audit.cli import main as audit_main


def test_all_correct_bound_matches_closed_form():
    """delta = 0, v = r: p-value is p^r, so the bound solves p^r = 0.05 with p = e^eps / (1 + e^eps)."""
    r = 200
    p = 0.05 ** (1 / r)
    assert epsilon_lower_bound(1000, r, r, 0.0) == pytest.approx(math.log(p / (1 - p)), abs=1e-9)


def test_chance_level_guessing_gives_no_bound():
    assert epsilon_lower_bound(1000, 200, 100, 1e-5) == 0.0
    assert epsilon_lower_bound(1000, 200, 110, 1e-5) == 0.0


def test_delta_term_only_weakens_the_bound():
    for v in (150, 180, 200):
        assert epsilon_lower_bound(1000, 200, v, 1e-5) <= epsilon_lower_bound(1000, 200, v, 0.0)
    assert p_value(1000, 200, 170, 1.0, 1e-3) >= p_value(1000, 200, 170, 1.0, 0.0)


@pytest.mark.parametrize("true_epsilon", [0.5, 1.0, 2.0])
def test_bound_exceeds_true_epsilon_at_most_five_percent_of_the_time(true_epsilon):
    """For an exactly true_epsilon-DP guesser (randomized response) the 95 % bound must overstate with
    probability <= 5 %, computed exactly over the binomial distribution of correct guesses."""
    r = 200
    accuracy = 1 / (1 + math.exp(-true_epsilon))
    overstating = [v for v in range(r + 1) if epsilon_lower_bound(1000, r, v, 0.0) > true_epsilon]
    assert overstating, "some outcome must be able to reject"
    first = min(overstating)
    assert overstating == list(range(first, r + 1))  # monotone in v
    assert stats.binom.sf(first - 1, r, accuracy) <= 0.05


def test_guess_and_count():
    import numpy as np

    scores = np.array([5.0, -1.0, 3.0, 0.0, -2.0, 4.0])
    included = np.array([True, False, False, True, False, True])
    r, correct = guess_and_count(scores, included, 2)  # top: 0 and 5 (both in); bottom: 4 and 1 (both out)
    assert (r, correct) == (4, 4)
    r, correct = guess_and_count(-scores, included, 2)
    assert (r, correct) == (4, 0)


def test_bad_settings_are_rejected_before_training():
    with pytest.raises(CanaryAuditError, match="guesses_per_side"):
        CanaryConfig(num_canaries=100, guesses_per_side=60).validate()
    with pytest.raises(CanaryAuditError, match="accountant"):
        CanaryConfig(accountant="gdp").validate()
    with pytest.raises(CanaryAuditError, match="confidence"):
        CanaryConfig(confidence=1.0).validate()


def test_dp_run_stays_below_claim_and_no_noise_run_exceeds_it(tmp_path, capsys):
    """End to end through the CLI: two Opacus DP-SGD runs (sigma from the accountant, and sigma = 0)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "canary.json"
    code = audit_main(parser.parse_args(["--root", str(tmp_path), "canary", "--out", str(out)]))
    assert code == 0, capsys.readouterr()
    result = json.loads(out.read_text())
    dp, off = result["dp"], result["no_noise"]
    assert result["claimed_epsilon"] == 2.0 and result["config"]["num_canaries"] == 1000
    # the DP arm really is private: calibrated noise, its accountant's epsilon within the claim
    assert dp["noise_multiplier"] > 1.0 and dp["claimed_epsilon"] <= 2.0
    assert dp["steps"] > 0 and 400 < dp["canaries_included"] < 600
    assert dp["epsilon_lower_bound"] < dp["claimed_epsilon"]
    # the same run without noise leaks membership: every guess right, bound far above the claim
    assert off["noise_multiplier"] == 0.0
    assert off["correct"] == off["guesses"] == 200
    assert off["epsilon_lower_bound"] > 2.0
    assert off["mean_score_excluded"] == 0.0  # an excluded canary's weight column never moves without noise
    assert result["passed"] is True
    # the main audit reports it
    from smoothnet.audit.runner import check_canary

    checks, included = check_canary(out)
    assert included is not None and all(c.status == "pass" for c in checks)


@pytest.mark.parametrize("method", ["fast", "hooks"])
def test_under_noised_run_fails_and_correct_run_passes(method):
    """Through the package's make_private (our clipping module, and Opacus' hooks): half the claimed noise
    (true epsilon ~3x the claim) is caught by the noise-variance test; the correct run passes."""
    from smoothnet.audit.canary import run_canary_audit

    correct = run_canary_audit(CanaryConfig(method=method))
    assert correct["passed"] is True
    assert correct["dp"]["method"] == ("fast:auto" if method == "fast" else "hooks")
    assert correct["dp"]["noise_variance_test"]["variance_ratio"] == pytest.approx(1.0, abs=0.25)
    halved = run_canary_audit(CanaryConfig(method=method, noise_scale=0.5))
    assert halved["passed"] is False
    assert halved["dp"]["noise_variance_test"]["rejected"] is True
    assert halved["dp"]["noise_variance_test"]["variance_ratio"] == pytest.approx(0.25, abs=0.08)


def test_schedule_comes_from_public_values_only():
    """q, steps and sigma must not depend on which canaries were drawn (the secret bits)."""
    from smoothnet.audit.canary import audit_run

    runs = [audit_run(CanaryConfig(seed=seed, num_canaries=200, guesses_per_side=20)) for seed in (0, 1)]
    assert runs[0]["canaries_included"] != runs[1]["canaries_included"]
    for key in ("sample_rate", "steps", "n_train", "noise_multiplier"):
        assert runs[0][key] == runs[1][key], key
    assert runs[0]["n_train"] == 1000 + 200
