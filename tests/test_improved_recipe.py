"""The "improved" recipe (`study: improved`): augmentation multiplicity keeps the accounting unchanged because an
example's K views are averaged BEFORE clipping; EMA weights are evaluated beside the raw ones."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from smoothnet.training.batches import augmentation_views, random_crop_flip
from smoothnet.training.config import ConfigError, TrainConfig
from smoothnet.training.dp import make_private
from smoothnet.training.trainer import RunPaths, train
from tests.support.learnable import prepare_learnable
from tests.support.nets import tiny_net


def dp_update(x_views, y, k, c):
    """Parameters' change / lr after one fast-mode DP step without noise on the given views."""
    model = tiny_net()
    before = [p.detach().clone() for p in model.parameters()]
    data = TensorDataset(torch.zeros(len(y), 3, 8, 8), y)
    setup = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        data,
        method="fast",
        logical_batch_size=len(y),
        max_grad_norm=c,
        epochs=1,
        accountant="rdp",
        delta=1e-5,
        target_epsilon=None,
        noise_multiplier=0.0,
    )
    setup.backward(setup.model(x_views), y.repeat_interleave(k), k)
    setup.optimizer.step()
    return [
        b - p.detach() for b, p in zip(before, model.parameters(), strict=True)
    ], setup.expected_batch_size


def reference(x_views, y, k, c):
    """sum_i clip_C(mean_k grad(view_ik)) computed one view at a time."""
    model = tiny_net()
    total = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(len(y)):
        mean = [torch.zeros_like(p) for p in model.parameters()]
        for j in range(k):
            model.zero_grad()
            F.cross_entropy(model(x_views[i * k + j : i * k + j + 1]), y[i : i + 1]).backward()
            mean = [m + p.grad / k for m, p in zip(mean, model.parameters(), strict=True)]
        norm = torch.sqrt(sum((m**2).sum() for m in mean))
        factor = min(1.0, c / (float(norm) + 1e-6))
        total = [t + factor * m for t, m in zip(total, mean, strict=True)]
    return total, norm


@pytest.mark.parametrize("k", [1, 4])
def test_views_are_averaged_before_clipping(k):
    torch.manual_seed(1)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 3, (6,))
    views = augmentation_views(x, k)
    c = 0.05
    got, expected_batch = dp_update(views, y, k, c)
    want, _ = reference(views, y, k, c)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g * expected_batch, w, rtol=1e-4, atol=1e-6)


def test_one_examples_contribution_is_bounded_by_c_whatever_k():
    torch.manual_seed(2)
    x, y = torch.randn(1, 3, 8, 8) * 50, torch.randint(0, 3, (1,))  # huge gradients: always clipped
    for k in (1, 2, 8, 16):
        got, expected_batch = dp_update(augmentation_views(x, k), y, k, c=0.3)
        norm = torch.sqrt(sum((g**2).sum() for g in got)) * expected_batch
        assert norm <= 0.3 + 1e-5


def test_k1_equals_plain_dp_sgd_with_opacus():
    torch.manual_seed(3)
    x, y = torch.randn(5, 3, 8, 8), torch.randint(0, 3, (5,))
    fast, _ = dp_update(x, y, 1, 0.05)
    model = tiny_net()
    before = [p.detach().clone() for p in model.parameters()]
    setup = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        TensorDataset(x, y),
        method="hooks",
        logical_batch_size=5,
        max_grad_norm=0.05,
        epochs=1,
        accountant="rdp",
        delta=1e-5,
        target_epsilon=None,
        noise_multiplier=0.0,
    )
    setup.backward(setup.model(x), y, 1)
    setup.optimizer.step()
    for f, b, p in zip(fast, before, model.parameters(), strict=True):
        torch.testing.assert_close(f, b - p.detach(), rtol=1e-4, atol=1e-7)


def test_crop_flip_keeps_shape_and_content():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out = random_crop_flip(x, padding=4)
    assert out.shape == x.shape
    for i in range(2):  # every output pixel is zero padding or a pixel of the same image
        assert set(out[i].unique().tolist()) <= set(x[i].unique().tolist()) | {0.0}


def test_augmentation_multiplicity_needs_the_fast_method():
    base = dict(run_id="x", dataset="cifar10", model="smoothnet", augmentation_multiplicity=4)
    with pytest.raises(ConfigError, match="grad_sample_mode: fast"):
        TrainConfig.from_params({**base, "grad_sample_mode": "hooks"})
    TrainConfig.from_params({**base, "grad_sample_mode": "auto"})


def test_improved_run_trains_with_views_ema_and_full_training_set(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_learnable(tmp_path / "data")
    params = dict(
        run_id="imp",
        dataset="cifar10",
        model="smoothnet",
        study="improved",
        private=True,
        target_epsilon=8.0,
        delta=1e-3,
        max_grad_norm=1.0,
        epochs=3,
        logical_batch_size=100,
        physical_batch_size=50,
        lr=2.0,
        momentum=0.0,
        weight_decay=0.0,
        lr_schedule="constant",
        grad_sample_mode="auto",
        augmentation_multiplicity=2,
        ema_decay=0.5,
        train_on_validation=True,
        seed=0,
        model_options={"width": 0.5, "depth": 1.0, "weight_standardization": True},
    )
    record = train(
        TrainConfig.from_params(params),
        RunPaths(prepared, tmp_path / "run", tmp_path / "ckpt"),
        resolved_params=params,
        progress=False,
    )
    assert record["dataset"]["n_train"] == 400 and record["dataset"]["n_val"] == 0
    assert record["privacy"]["grad_sample_mode"].startswith("fast")
    assert record["privacy"]["epsilon"] == pytest.approx(8.0, abs=0.05)
    last = record["results"]["history"][-1]
    assert "test_accuracy_ema" in last and last["test_accuracy"] > 0.2
    assert "val_accuracy" not in last  # validation images were trained on: no validation score
