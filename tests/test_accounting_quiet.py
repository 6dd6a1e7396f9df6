"""dp-accounting's harmless "_compute_log_a_frac failed to converge" warning does not reach the audit output."""

from __future__ import annotations

import logging
import math

from smoothnet.privacy.accounting import compute_epsilon


def test_unconverged_rdp_order_is_silent_and_epsilon_stays_finite(caplog):
    # q = 0.1, sigma = 1.0: dp-accounting's own test case for an order whose series does not converge.
    with caplog.at_level(logging.WARNING):
        eps = compute_epsilon(1.0, 0.1, 10, 1e-5, "dpa_rdp")
    assert math.isfinite(eps) and eps > 0
    assert not [r for r in caplog.records if "failed to converge" in r.getMessage()]
    assert eps >= compute_epsilon(1.0, 0.1, 10, 1e-5, "dpa_pld") - 1e-9  # RDP stays the looser bound
