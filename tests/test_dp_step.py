"""The DP-SGD step itself: equals SGD without noise and clipping, clips every example to C, adds noise of
std sigma*C, and spends exactly the epsilon its accountant reports — for every per-sample method."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import TensorDataset

from smoothnet.privacy.accounting import compute_epsilon
from smoothnet.training.dp import calibrate_noise, make_private
from tests.support.nets import tiny_net

FAST_AVAILABLE = importlib.util.find_spec("smoothnet.privacy.fast_clipping") is not None
METHODS = ["hooks", "ghost"] + (["fast"] if FAST_AVAILABLE else [])


def tiny_data(n: int = 64, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def one_dp_step(
    method: str,
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    lr: float = 0.5,
    channels_last: bool = False,
):
    """Take one DP step on the first Poisson batch; return (model before, model after, the batch, setup)."""
    model = tiny_net()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    setup = make_private(
        model,
        optimizer,
        tiny_data(),
        method=method,
        logical_batch_size=16,
        max_grad_norm=max_grad_norm,
        epochs=1,
        accountant="rdp",
        delta=1e-5,
        target_epsilon=None,
        noise_multiplier=noise_multiplier,
    )
    torch.manual_seed(3)
    x, y = next(iter(setup.loader))
    inputs = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    setup.backward(setup.model(inputs), y, 1)
    setup.optimizer.step()
    return before, model, (x, y), setup


def per_example_grads(model_state, x, y):
    model = tiny_net()
    model.load_state_dict(model_state)
    grads = []
    for i in range(len(y)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads.append([p.grad.detach().clone() for p in model.parameters()])
    return grads


def update(before, after_model, lr):
    names = [n for n, _ in after_model.named_parameters()]
    return [(before[n] - dict(after_model.named_parameters())[n].detach()) / lr for n in names]


@pytest.mark.parametrize("method", METHODS)
def test_no_noise_no_clipping_equals_sgd(method):
    before, model, (x, y), setup = one_dp_step(method, max_grad_norm=1e6, noise_multiplier=0.0)
    grads = per_example_grads(before, x, y)
    expected = [sum(g[j] for g in grads) / setup.expected_batch_size for j in range(len(grads[0]))]
    for got, want in zip(update(before, model, 0.5), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


OPACUS_CHANNELS_LAST_BUG = pytest.mark.xfail(
    strict=True,
    reason="Opacus 1.6.0's per-sample gradients are wrong for a channels-last model (measured here): the "
    "trainer refuses channels_last with Opacus modes; this strict xfail tells us when Opacus is fixed",
)
CLIPPING_CASES = [(m, False) for m in [*METHODS, "fast:materialize", "fast:ghost"]] + [
    ("fast:auto", True),
    ("fast:materialize", True),
    ("fast:ghost", True),
    pytest.param("hooks", True, marks=OPACUS_CHANNELS_LAST_BUG),
    pytest.param("ghost", True, marks=OPACUS_CHANNELS_LAST_BUG),
]


@pytest.mark.parametrize(("method", "channels_last"), CLIPPING_CASES)
def test_every_example_is_clipped_to_c(method, channels_last):
    c = 0.05
    before, model, (x, y), setup = one_dp_step(
        method, max_grad_norm=c, noise_multiplier=0.0, channels_last=channels_last
    )
    grads = per_example_grads(before, x, y)
    norms = [torch.sqrt(sum((g**2).sum() for g in example)) for example in grads]
    assert min(norms) > c, "the test needs every example above the clipping norm"
    factors = [min(1.0, c / (float(n) + 1e-6)) for n in norms]
    expected = [
        sum(f * g[j] for f, g in zip(factors, grads, strict=True)) / setup.expected_batch_size
        for j in range(len(grads[0]))
    ]
    got = update(before, model, 0.5)
    for g, want in zip(got, expected, strict=True):
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-7)
    total = torch.sqrt(sum((g**2).sum() for g in got)) * setup.expected_batch_size
    assert total <= c * len(y) + 1e-6  # the summed update is a sum of vectors of norm <= C


@pytest.mark.parametrize("method", METHODS)
def test_noise_std_is_sigma_times_c(method):
    sigma, c = 1.3, 0.7
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(144, 64), nn.Linear(64, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    setup = make_private(
        model,
        optimizer,
        tiny_data(256),
        method=method,
        logical_batch_size=64,
        max_grad_norm=c,
        epochs=1,
        accountant="rdp",
        delta=1e-5,
        target_epsilon=None,
        noise_multiplier=sigma,
    )
    torch.manual_seed(5)
    x, y = next(iter(setup.loader))
    before = [p.detach().clone() for p in model.parameters()]
    logits = setup.model(x)
    setup.backward(logits * 0.0, y, 1)  # zero per-example gradients: the update is pure noise
    setup.optimizer.step()
    noise = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters(), strict=True)])
    expected_std = sigma * c / setup.expected_batch_size
    assert noise.numel() > 9000  # enough draws that a 4 % error in the std is a 5-sigma event
    assert abs(noise.mean().item()) < 4 * expected_std / math.sqrt(noise.numel())
    assert noise.std().item() == pytest.approx(expected_std, rel=0.04)


def test_calibration_equals_make_private_with_epsilon():
    dataset = tiny_data(640)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64)
    model = tiny_net()
    engine = PrivacyEngine(accountant="rdp")
    _, optimizer, _ = engine.make_private_with_epsilon(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=loader,
        target_epsilon=3.0,
        target_delta=1e-5,
        epochs=7,
        max_grad_norm=1.0,
    )
    assert calibrate_noise(3.0, 1e-5, 1 / len(loader), 7, "rdp") == optimizer.noise_multiplier


@pytest.mark.parametrize("method", METHODS)
def test_spent_epsilon_meets_target_and_matches_independent_accountant(method):
    model = tiny_net()
    epochs, target = 2, 4.0
    setup = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        tiny_data(128),
        method=method,
        logical_batch_size=32,
        max_grad_norm=1.0,
        epochs=epochs,
        accountant="rdp",
        delta=1e-5,
        target_epsilon=target,
        noise_multiplier=None,
    )
    for _ in range(epochs):
        for x, y in setup.loader:
            setup.backward(setup.model(x), y, 1)
            setup.optimizer.step()
            setup.optimizer.zero_grad()
    steps = sum(h[2] for h in setup.accountant.history)
    assert steps == epochs * len(setup.loader)
    spent = setup.accountant.get_epsilon(delta=1e-5)
    assert spent == pytest.approx(target, abs=0.05)
    recomputed = compute_epsilon(setup.noise_multiplier, setup.sample_rate, steps, 1e-5, "rdp")
    assert recomputed == pytest.approx(spent, abs=1e-9)
    independent = compute_epsilon(setup.noise_multiplier, setup.sample_rate, steps, 1e-5, "dpa_rdp")
    assert independent == pytest.approx(spent, rel=0.02)
