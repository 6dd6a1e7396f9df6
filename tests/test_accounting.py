"""Accountants pinned to reference values and checked against dp-accounting computed here, independently.

Reference literals were computed once with opacus 1.6.0 and dp-accounting 0.6.0 (the pinned versions);
the dp-accounting value of each case sits beside the Opacus one.
"""

from __future__ import annotations

import math

import dp_accounting
import pytest
import torch
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from smoothnet.privacy.accounting import (
    ACCOUNTANTS,
    AccountingError,
    compute_epsilon,
    epsilon_table,
    noise_for_target,
    opacus_sample_rate,
)

DELTA = 1e-5
Q_CIFAR = 1 / 157  # 40,000 training images, batch 256: len(loader) = 157
STEPS_CIFAR_180 = 180 * 157


def dpa_epsilon(sigma: float, q: float, steps: int, delta: float, kind: str) -> float:
    """dp-accounting directly, written out here so the test does not trust the module under test."""
    acc = rdp_privacy_accountant.RdpAccountant() if kind == "rdp" else pld_privacy_accountant.PLDAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return acc.get_epsilon(delta)


def test_sample_rate_is_one_over_loader_length():
    assert opacus_sample_rate(40_000, 256) == 1 / 157
    assert opacus_sample_rate(40_000, 256) != 256 / 40_000
    assert opacus_sample_rate(7_576, 256) == 1 / 30  # ImageNette-sized train split


def test_paper_setting_all_four_accountants_pinned():
    """The paper's CIFAR-10 setting: q = 1/157, 180 epochs, RDP epsilon 7 -> sigma ~1.01, ~6.4-6.5 under PRV/PLD."""
    sigma = noise_for_target(7.0, DELTA, Q_CIFAR, epochs=180, accountant="rdp")
    assert sigma == 1.01318359375
    table = epsilon_table(sigma, Q_CIFAR, STEPS_CIFAR_180, DELTA)
    # opacus value                                dp-accounting (independent) value
    assert table["rdp"] == pytest.approx(6.991366461286691, abs=1e-6)  # dpa rdp 6.991370961122349
    assert table["prv"] == pytest.approx(6.477194810823939, abs=1e-6)  # dpa pld 6.466951678473891
    assert table["dpa_rdp"] == pytest.approx(6.991370961122349, abs=1e-6)
    assert table["dpa_pld"] == pytest.approx(6.466951678473891, abs=1e-6)
    # the module's dp-accounting numbers are exactly what dp-accounting says when called directly
    assert table["dpa_rdp"] == dpa_epsilon(sigma, Q_CIFAR, STEPS_CIFAR_180, DELTA, "rdp")
    assert table["dpa_pld"] == dpa_epsilon(sigma, Q_CIFAR, STEPS_CIFAR_180, DELTA, "pld")
    # known ordering: RDP (both implementations) looser than PRV ~ PLD, which agree within ~1 %
    assert abs(table["rdp"] - table["dpa_rdp"]) < 1e-3
    assert table["rdp"] > table["prv"] + 0.3
    assert abs(table["prv"] - table["dpa_pld"]) / table["dpa_pld"] < 0.02
    assert table["rdp"] <= 7.0


@pytest.mark.parametrize(
    ("q", "epochs", "target", "sigma", "rdp_eps", "dpa_rdp_eps"),
    [
        # the paper settings' implied sigmas: opacus RDP value, then dp-accounting RDP value at the same sigma
        (1 / 157, 120, 7.0, 0.9027099609375, 6.992211643353734, 6.9922116433536905),
        (1 / 157, 180, 1.0, 4.4140625, 0.9964338322687883, 0.9964338322682129),
        (1 / 157, 180, 3.0, 1.7529296875, 2.997284167786587, 2.9972841677863418),
        (1 / 157, 180, 5.0, 1.23046875, 4.995861762118434, 4.995861793328058),
        (1 / 157, 180, 10.0, 0.8526611328125, 9.997501351600626, 9.99840602502064),
        (1 / 30, 120, 7.0, 1.60888671875, 6.992337570022605, 6.992341656271219),
    ],
)
def test_spec_implied_noise_multipliers(q, epochs, target, sigma, rdp_eps, dpa_rdp_eps):
    found = noise_for_target(target, DELTA, q, epochs=epochs, accountant="rdp")
    assert found == sigma
    steps = int(epochs / q)
    assert compute_epsilon(found, q, steps, DELTA, "rdp") == pytest.approx(rdp_eps, abs=1e-6)
    independent = dpa_epsilon(found, q, steps, DELTA, "rdp")
    assert independent == pytest.approx(dpa_rdp_eps, abs=1e-6)
    assert compute_epsilon(found, q, steps, DELTA, "dpa_rdp") == independent
    assert abs(independent - rdp_eps) < 2e-3
    assert target - 0.01 <= rdp_eps <= target


def test_noise_for_target_equals_make_private_with_epsilon():
    """The sigma Opacus' PrivacyEngine picks for a real (tiny) loader is the one noise_for_target returns."""
    from opacus import PrivacyEngine

    data = torch.utils.data.TensorDataset(torch.randn(1000, 4), torch.randint(0, 2, (1000,)))
    loader = torch.utils.data.DataLoader(data, batch_size=64)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = PrivacyEngine(accountant="rdp")
    _, dp_optimizer, _ = engine.make_private_with_epsilon(
        module=model, optimizer=optimizer, data_loader=loader, target_epsilon=3.0, target_delta=DELTA,
        epochs=7, max_grad_norm=1.0,
    )  # fmt: skip
    q = opacus_sample_rate(1000, 64)
    assert q == 1 / len(loader)
    assert dp_optimizer.noise_multiplier == noise_for_target(3.0, DELTA, q, epochs=7, accountant="rdp")


def test_noise_for_target_dp_accounting_meets_target():
    q, steps = 0.05, 100
    sigmas = {}
    for accountant in ("rdp", "dpa_pld", "prv"):
        sigmas[accountant] = noise_for_target(2.0, DELTA, q, steps=steps, accountant=accountant)
        eps = compute_epsilon(sigmas[accountant], q, steps, DELTA, accountant)
        assert 2.0 - 0.01 <= eps <= 2.0, accountant
    # tighter accountants need less noise for the same claim
    assert sigmas["dpa_pld"] < sigmas["rdp"]
    assert sigmas["prv"] < sigmas["rdp"]


TWO_SEGMENTS = [(1.2, 0.01, 300), (0.9, 0.02, 200)]


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_history_with_segments_composes(accountant):
    history = TWO_SEGMENTS
    both = compute_epsilon(history=history, delta=DELTA, accountant=accountant)
    first = compute_epsilon(*history[0], DELTA, accountant)
    second = compute_epsilon(*history[1], DELTA, accountant)
    assert both > max(first, second), accountant


def test_history_split_into_equal_segments_changes_nothing():
    one = compute_epsilon(1.1, 0.01, 400, DELTA, "rdp")
    split = compute_epsilon(history=[(1.1, 0.01, 150), (1.1, 0.01, 250)], delta=DELTA, accountant="rdp")
    assert split == pytest.approx(one, rel=1e-12)


def test_history_rdp_agrees_with_dp_accounting():
    history = TWO_SEGMENTS
    acc = rdp_privacy_accountant.RdpAccountant()
    for sigma, q, steps in history:
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    assert compute_epsilon(history=history, delta=DELTA, accountant="rdp") == pytest.approx(
        acc.get_epsilon(DELTA), abs=1e-3
    )


def test_more_noise_fewer_steps_less_epsilon():
    base = compute_epsilon(1.0, 0.01, 1000, DELTA, "rdp")
    assert compute_epsilon(1.5, 0.01, 1000, DELTA, "rdp") < base
    assert compute_epsilon(1.0, 0.01, 500, DELTA, "rdp") < base
    assert compute_epsilon(1.0, 0.005, 1000, DELTA, "rdp") < base


def test_edge_cases_and_bad_input():
    assert compute_epsilon(1.0, 0.01, 0, DELTA, "prv") == 0.0
    assert math.isinf(compute_epsilon(0.0, 0.01, 10, DELTA, "dpa_pld"))
    with pytest.raises(AccountingError, match="unknown accountant 'gdp'"):
        compute_epsilon(1.0, 0.01, 10, DELTA, "gdp")
    with pytest.raises(AccountingError, match="sample_rate"):
        compute_epsilon(1.0, 1.5, 10, DELTA, "rdp")
    with pytest.raises(AccountingError, match="delta"):
        compute_epsilon(1.0, 0.01, 10, 0.0, "rdp")
    with pytest.raises(AccountingError, match="steps"):
        compute_epsilon(1.0, 0.01, -3, DELTA, "rdp")
    with pytest.raises(AccountingError, match="noise_multiplier"):
        compute_epsilon(-1.0, 0.01, 3, DELTA, "rdp")
    with pytest.raises(AccountingError, match="not both"):
        compute_epsilon(1.0, 0.01, 3, DELTA, "rdp", history=[(1.0, 0.01, 3)])
    with pytest.raises(AccountingError, match="exactly one of steps or epochs"):
        noise_for_target(3.0, DELTA, 0.01, accountant="rdp")


# ----------------------------------------------------------------------------- the audit's privacy checks


def _dp_record(n_train=50_000, batch=128, epochs=2, delta=DELTA, noise_source="os_entropy", history=None):
    """A DP record as the trainer writes it: q the sampler's 1/ceil(N/B), int(1/q) steps an epoch."""
    q = 1 / math.ceil(n_train / batch)
    per_epoch = int(1 / q)
    steps = epochs * per_epoch
    sigma = noise_for_target(3.0, delta, q, epochs=epochs, accountant="rdp")
    by = {name: compute_epsilon(sigma, q, steps, delta, name) for name in ("rdp", "prv")}
    return {
        "params": {},
        "dataset": {"n_train": n_train},
        "training": {"epochs": epochs, "logical_batch_size": batch},
        "results": {"history": history if history is not None else [{"epoch": 1, "val_accuracy": 0.5}]},
        "privacy": {
            "private": True,
            "target_epsilon": 3.0,
            "delta": delta,
            "noise_multiplier": sigma,
            "sample_rate": q,
            "steps": steps,
            "planned_steps": steps,
            "steps_per_epoch": per_epoch,
            "sampling": "poisson",
            "accountant": "rdp",
            "epsilon": by["rdp"],
            "epsilon_by_accountant": by,
            "accountant_history": [[sigma, q, steps]],
            "noise_source": noise_source,
        },
    }


def _statuses(record):
    from smoothnet.audit.privacy_checks import check_privacy

    checks, _ = check_privacy(record)
    return {c.field: c.status for c in checks if c.status != "pass"}, checks


def test_audit_accepts_the_rate_the_sampler_used_at_50000_by_128():
    """Opacus samples at 1/391 and yields 390 batches an epoch: a valid record of that must pass."""
    record = _dp_record()
    assert record["privacy"]["sample_rate"] == 1 / 391 and record["privacy"]["steps_per_epoch"] == 390
    problems, _ = _statuses(record)
    assert problems == {}
    wrong = _dp_record()
    wrong["privacy"]["steps_per_epoch"] = 391
    assert _statuses(wrong)[0] == {"privacy.steps_per_epoch": "fail", "privacy.planned_steps": "fail"}


def test_audit_fails_delta_of_one_over_n():
    problems, checks = _statuses(_dp_record(n_train=1_000, batch=10, delta=1e-3))
    assert problems["privacy.delta"] == "fail"
    assert "delta < 1/n" in next(c.message for c in checks if c.field == "privacy.delta")


def test_audit_notes_seeded_runs_and_fails_records_without_a_noise_source():
    problems, checks = _statuses(_dp_record(noise_source="seeded"))
    assert problems == {"privacy.noise_source": "warn"}
    assert "reproducible, not for release" in next(
        c.message for c in checks if c.field == "privacy.noise_source"
    )
    record = _dp_record()
    del record["privacy"]["noise_source"]
    assert _statuses(record)[0] == {"privacy.noise_source": "fail"}


def test_audit_fails_raw_training_statistics_in_a_dp_history():
    history = [{"epoch": 1, "train_loss": 1.2, "train_accuracy": 0.6, "val_accuracy": 0.5}]
    assert _statuses(_dp_record(history=history))[0] == {"results.history": "fail"}
