"""Private feature statistics (Tramer & Boneh's input_norm=BN): noise, clipping, accounting composed with
DP-SGD, the run record, and the audit's independent re-derivation."""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import pytest
import torch

from smoothnet.audit.checks import FAIL, PASS, SKIP, Check
from smoothnet.audit.composed_privacy import (
    apply_composed_privacy,
    check_composed_privacy,
    independent_composed_epsilon,
)
from smoothnet.models import build_model
from smoothnet.privacy.accounting import compute_epsilon, noise_for_target
from smoothnet.privacy.dp_statistics import (
    FrozenStandardize,
    StatisticsError,
    fit_statistics,
    private_channel_statistics,
)
from smoothnet.training.config import TrainConfig
from smoothnet.training.trainer import RunPaths, train
from tests.support.learnable import prepare_learnable

PRIOR = [(8.0, 1.0, 1)] * 2


def _features(n=2000, k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, k, 4, 4, generator=g) * 0.5


def _clipped_mean(features, clip):
    rows = features.flatten(2).mean(-1).double()
    scale = (clip / rows.norm(dim=1, keepdim=True)).clamp(max=1.0)
    return (rows * scale).mean(0)


def test_released_mean_carries_gaussian_noise_of_the_accounted_scale():
    features, sigma, clip = _features(), 8.0, 0.5
    exact = _clipped_mean(features, clip)
    releases = torch.stack(
        [
            private_channel_statistics(
                features,
                noise_multiplier=sigma,
                mean_clip=clip,
                sq_mean_clip=1.0,
                generator=torch.Generator().manual_seed(s),
            ).mean.double()
            for s in range(200)
        ]
    )
    errors = releases - exact
    expected_std = sigma * clip / len(features)
    assert errors.mean().abs() < 0.2 * expected_std
    assert 0.85 * expected_std < errors.std() < 1.15 * expected_std  # dropped or shrunk noise fails here


def test_noise_free_statistics_are_the_clipped_mean_and_variance():
    features = _features()
    release = private_channel_statistics(features, noise_multiplier=0.0, mean_clip=100.0, sq_mean_clip=100.0)
    per_example = features.flatten(2).double()
    mean = per_example.mean(-1).mean(0)
    var = per_example.square().mean(-1).mean(0) - mean.square()
    torch.testing.assert_close(release.mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(release.var.double(), var, rtol=1e-4, atol=1e-6)


def test_one_example_moves_each_sum_by_at_most_its_clip_norm():
    features, clip = _features(n=100), 0.3
    outlier = torch.full((1, *features.shape[1:]), 1e3)
    kw = dict(noise_multiplier=0.0, mean_clip=clip, sq_mean_clip=clip)
    without = private_channel_statistics(features, **kw)
    with_outlier = private_channel_statistics(torch.cat([features, outlier]), **kw)
    shift = (with_outlier.mean.double() * 101 - without.mean.double() * 100).norm()
    assert shift <= clip * (1 + 1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(noise_multiplier=-1.0, mean_clip=1.0, sq_mean_clip=1.0), "bn_noise_multiplier"),
        (dict(noise_multiplier=8.0, mean_clip=None, sq_mean_clip=1.0), "bn_mean_clip"),
        (dict(noise_multiplier=8.0, mean_clip=1.0, sq_mean_clip=0.0), "bn_sq_mean_clip"),
    ],
)
def test_bad_settings_fail_with_the_key_named(kwargs, message):
    with pytest.raises(StatisticsError, match=message):
        private_channel_statistics(_features(n=10), **kwargs)


def test_a_private_run_refuses_noise_free_statistics_and_unset_layers_refuse_to_run():
    layer = FrozenStandardize(6, noise_multiplier=0.0, mean_clip=1.0, sq_mean_clip=1.0)
    with pytest.raises(RuntimeError, match="before its statistics were set"):
        layer(_features(n=2))
    with pytest.raises(StatisticsError, match="must be > 0 in a DP run"):
        fit_statistics(torch.nn.Sequential(layer), _features(n=10), private=True, generator=torch.Generator())
    noisy = FrozenStandardize(6, noise_multiplier=8.0, mean_clip=1.0, sq_mean_clip=1.0)
    with pytest.raises(StatisticsError, match="private noise stream"):
        fit_statistics(torch.nn.Sequential(noisy), _features(n=10), private=True, generator=None)


def test_statistics_noise_comes_from_the_runs_private_stream_not_the_public_seed():
    """Two runs sharing a public seed must not share the statistics' noise (the difference of their
    releases would cancel it), and nothing seeded with the public seed alone may reproduce it."""
    from smoothnet.training.dp import random_streams

    features = _features(n=200)

    def release(run_id, secure=False):
        layer = FrozenStandardize(6, noise_multiplier=8.0, mean_clip=1.0, sq_mean_clip=1.0)
        streams = random_streams(0, run_id, secure=secure)
        return fit_statistics(
            torch.nn.Sequential(layer), features, private=True, generator=streams.statistics
        )

    a, again, b = release("run-a"), release("run-a"), release("run-b")
    assert torch.equal(a.mean, again.mean)  # seeded: reproducible
    assert not torch.allclose(a.mean, b.mean)  # but never shared across runs
    public = private_channel_statistics(
        features,
        noise_multiplier=8.0,
        mean_clip=1.0,
        sq_mean_clip=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert not torch.allclose(a.mean, public.mean)
    assert not torch.allclose(release("run-a", secure=True).mean, release("run-a", secure=True).mean)


def test_standardize_matches_tramer_boneh():
    layer = FrozenStandardize(3, mean_clip=1.0, sq_mean_clip=1.0)
    layer.set_statistics(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 0.0, 1.0]))
    x = torch.ones(2, 3, 2, 2)
    out = layer(x)
    torch.testing.assert_close(out[:, 0], torch.full((2, 2, 2), (1 - 1) / math.sqrt(4 + 1e-5)))
    torch.testing.assert_close(out[:, 1], torch.zeros(2, 2, 2))  # zero variance: ignored
    torch.testing.assert_close(out[:, 2], torch.full((2, 2, 2), (1 - 3) / math.sqrt(1 + 1e-5)))


def test_calibration_with_the_statistics_prior_spends_the_target_in_total():
    q, epochs, target = 1 / 7, 60, 3.0
    alone = noise_for_target(target, 1e-5, q, epochs=epochs)
    composed = noise_for_target(target, 1e-5, q, epochs=epochs, prior=PRIOR)
    assert composed > alone
    total = compute_epsilon(delta=1e-5, history=[*PRIOR, (composed, q, int(epochs / q))])
    assert target - 0.01 <= total <= target
    # RDP of two Gaussian releases at sigma 8 is alpha / 64: epsilon(delta) from that curve alone
    assert compute_epsilon(delta=1e-5, history=PRIOR) == pytest.approx(0.6948, abs=1e-3)
    independent = independent_composed_epsilon(8.0, 2, [(composed, q, int(epochs / q))], 1e-5)
    assert independent == pytest.approx(total, abs=0.01)


# ----------------------------------------------------------------------------- end to end

BASE = dict(
    run_id="bn",
    dataset="cifar10",
    model="scatternet_linear",
    study="literature",
    model_options={
        "input_norm": "dp_bn",
        "bn_noise_multiplier": 8.0,
        "bn_mean_clip": 1.0,
        "bn_sq_mean_clip": 1.25,
    },
    private=True,
    target_epsilon=2.0,
    delta=1e-3,
    max_grad_norm=0.1,
    epochs=2,
    logical_batch_size=64,
    physical_batch_size=64,
    lr=1.0,
    momentum=0.9,
    weight_decay=0.0,
    lr_schedule="constant",
    grad_sample_mode="hooks",
    seed=0,
)


@pytest.fixture(scope="module")
def bn_record(tmp_path_factory) -> dict:
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_learnable(tmp_path_factory.mktemp("data"), per_class_train=10, per_class_test=4)
    where: Path = tmp_path_factory.mktemp("bn")
    config = TrainConfig.from_params(BASE)
    return train(
        config, RunPaths(prepared, where / "run", where / "ckpt"), resolved_params=BASE, progress=False
    )


def test_record_claims_the_composed_epsilon_and_its_components(bn_record):
    privacy = bn_record["privacy"]
    stats, composition = privacy["dp_statistics"], privacy["composition"]
    assert (
        stats["noise_multiplier"] == 8.0
        and stats["releases"] == 2
        and stats["history"] == [[8.0, 1.0, 1]] * 2
    )
    sgd_alone = compute_epsilon(delta=1e-3, history=privacy["accountant_history"])
    total = compute_epsilon(delta=1e-3, history=[*PRIOR, *privacy["accountant_history"]])
    assert composition["components"]["dp_sgd"] == pytest.approx(sgd_alone)
    assert privacy["epsilon"] == pytest.approx(total) == pytest.approx(composition["total_epsilon"])
    assert privacy["epsilon"] > sgd_alone + 0.05  # the statistics are accounted
    assert privacy["epsilon"] <= BASE["target_epsilon"]
    assert privacy["epsilon_by_accountant"]["rdp"] == pytest.approx(total)
    assert bn_record["results"]["history"][-1]["epsilon"] == pytest.approx(total)
    # sigma is calibrated with the statistics' cost as prior, so it exceeds the SGD-only calibration
    q = privacy["sample_rate"]
    assert privacy["noise_multiplier"] > noise_for_target(2.0, 1e-3, q, epochs=2)


def test_audit_re_derives_the_composed_epsilon_independently(bn_record):
    checks = check_composed_privacy(bn_record)
    assert checks and all(c.status in (PASS, SKIP) for c in checks), [
        c.message for c in checks if c.status == FAIL
    ]


@pytest.mark.parametrize(
    "tamper, failing",
    [
        (lambda p: p["dp_statistics"].update(noise_multiplier=0.0), "statistics noised"),
        (
            lambda p: p.update(epsilon=p["composition"]["components"]["dp_sgd"]),
            "composed epsilon (dp-accounting)",
        ),
        (lambda p: p["composition"]["components"].update(dp_statistics=0.0), "composition recorded"),
        (lambda p: p.update(noise_multiplier=p["noise_multiplier"] * 0.9), "composed calibration"),
        # the record may not state a cheaper release than the code makes
        (
            lambda p: p["dp_statistics"].update(releases=1, history=[[8.0, 1.0, 1]]),
            "statistics as configured",
        ),
        (lambda p: p["dp_statistics"].update(noise_multiplier=16.0), "statistics as configured"),
        (lambda p: p["dp_statistics"].update(n=10**6), "statistics as configured"),
        (lambda p: p.pop("dp_statistics"), "statistics accounted"),
    ],
)
def test_audit_fails_a_record_with_unnoised_or_unaccounted_statistics(bn_record, tamper, failing):
    record = copy.deepcopy(bn_record)
    tamper(record["privacy"])
    failed = {c.name for c in check_composed_privacy(record) if c.status == FAIL}
    assert failing in failed


def test_dp_sgd_only_checks_are_superseded_only_for_composed_records(bn_record):
    sgd_only = [Check("privacy", "epsilon re-derived", "privacy.epsilon", FAIL, "sgd history alone")]
    table = {"rdp": 1.0}
    replaced, composed_table = apply_composed_privacy(bn_record, sgd_only, table)
    assert replaced[0].status == SKIP and len(replaced) > 1
    assert composed_table["rdp"] == pytest.approx(bn_record["privacy"]["epsilon"])
    assert composed_table["dpa_rdp"] == pytest.approx(bn_record["privacy"]["epsilon"], abs=0.01)
    plain = copy.deepcopy(bn_record)
    del plain["privacy"]["dp_statistics"]
    plain["model"]["options"] = {}  # a model without private statistics
    assert apply_composed_privacy(plain, sgd_only, table) == (sgd_only, table)


def test_composed_records_have_their_epsilon_by_accountant_checked(bn_record):
    """The DP-SGD-only 'epsilon by accountant' check is superseded for composed records: its composed
    replacement must catch a tampered value."""
    record = copy.deepcopy(bn_record)
    checks, _ = apply_composed_privacy(record, [], {"rdp": 1.0})
    assert [c for c in checks if c.name == "composed epsilon by accountant" and c.status == PASS]
    record["privacy"]["epsilon_by_accountant"]["prv"] = 0.1
    checks, _ = apply_composed_privacy(record, [], {"rdp": 1.0})
    assert [c.field for c in checks if c.status == FAIL] == ["privacy.epsilon_by_accountant.prv"]


def test_groupnorm_scatternets_are_unchanged():
    model = build_model("scatternet_linear")
    assert isinstance(model.head[0], torch.nn.GroupNorm)
    bn = build_model("scatternet_cnn", input_norm="dp_bn", bn_mean_clip=1.0, bn_sq_mean_clip=1.0)
    assert isinstance(bn.head[0], FrozenStandardize)
    with pytest.raises(ValueError, match="input_norm"):
        build_model("scatternet_linear", input_norm="bn")
