"""Opacus per-sample gradients equal a loop of batch-size-1 backward passes, for every model.

Grad-sample mode "hooks" (``GradSampleModule``), the mode the trainer uses as its reference.
Float64, batch 2, 32x32, train mode. Randomised layers (EfficientNet's dropout and stochastic
depth) are switched off for the exact comparison and checked separately with randomness on.
"""

from __future__ import annotations

import copy

import pytest
import torch
from opacus import GradSampleModule
from torch import nn
from torchvision.ops import StochasticDepth

from smoothnet.models import build_model, list_models
from smoothnet.privacy.reference import per_example_gradients

torch.set_num_threads(1)


def _batch(n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=generator, dtype=torch.float64)
    return x, torch.arange(n) % 10


def _opacus_grad_samples(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    nn.functional.cross_entropy(gsm(x), y).backward()
    samples = {
        name: p.grad_sample.detach().clone() for name, p in model.named_parameters() if p.requires_grad
    }
    gsm._close()  # remove hooks and grad_sample fields
    return samples


def _disable_randomness(model: nn.Module) -> int:
    """Set every dropout / stochastic-depth probability to 0; return how many were random."""
    count = 0
    for module in model.modules():
        if isinstance(module, (nn.Dropout, StochasticDepth)) and module.p > 0:
            module.p = 0.0
            count += 1
    return count


def _assert_match(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    reference = per_example_gradients(model, x, y)  # before Opacus hooks are attached
    samples = _opacus_grad_samples(model, x, y)
    assert samples.keys() == reference.keys()
    for name, expected in reference.items():
        assert samples[name].shape == expected.shape, name
        torch.testing.assert_close(samples[name], expected, rtol=1e-6, atol=1e-9, msg=name)
    # The batch really holds different per-example gradients (the comparison is not vacuous).
    last = list(reference)[-1]
    assert not torch.allclose(reference[last][0], reference[last][1])


@pytest.mark.parametrize("name", list_models())
def test_opacus_hooks_match_single_example_loop(name):
    torch.manual_seed(0)
    model = build_model(name, image_size=32).double().train()
    randomised = _disable_randomness(model)
    assert randomised == 0 or name == "efficientnet_b0", f"{name} has {randomised} random layers"
    _assert_match(model, *_batch())


SMOOTHNET_VARIANTS = [
    dict(connection="residual"),
    dict(connection="plain"),
    dict(connection="plain", norm="none", activation="relu"),
    dict(norm="instance"),
    dict(pool="avg", activation="leaky_relu"),
    dict(pool="none", norm="none"),
    dict(weight_standardization=True),
    dict(connection="residual", weight_standardization=True),
]


@pytest.mark.parametrize(
    "options", SMOOTHNET_VARIANTS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())
)
def test_smoothnet_ablation_variants_match(options):
    torch.manual_seed(0)
    model = build_model("smoothnet", width=1, depth=2, **options).double().train()
    _assert_match(model, *_batch(3))


def test_wrn_without_weight_standardization_matches():
    torch.manual_seed(0)
    model = build_model("wrn16_4", weight_standardization=False).double().train()
    _assert_match(model, *_batch())


def test_weight_standardised_conv_goes_through_functorch():
    from opacus.grad_sample.grad_sample_module import GradSampleModule as GSM

    from smoothnet.models.layers import WSConv2d

    assert WSConv2d not in GSM.GRAD_SAMPLERS  # exact-type lookup: the functorch fallback handles it
    model = build_model("smoothnet", width=1, depth=1, weight_standardization=True).double()
    gsm = GSM(model, batch_first=True, loss_reduction="mean")
    assert all(hasattr(m, "ft_compute_sample_grad") for m in model.modules() if isinstance(m, WSConv2d))
    gsm._close()


def test_efficientnet_stochastic_depth_in_train_mode():
    """With dropout and stochastic depth active, Opacus' per-sample gradients sum to the batch
    gradient under the same random masks. Masks are per example (``mode="row"``, dropout
    elementwise), so each per-sample gradient depends on its own example only."""
    torch.manual_seed(0)
    model = build_model("efficientnet_b0").double().train()
    depths = [m for m in model.modules() if isinstance(m, StochasticDepth)]
    assert depths and all(m.mode == "row" for m in depths) and max(m.p for m in depths) > 0
    x, y = _batch(2)
    twin = copy.deepcopy(model)
    torch.manual_seed(1)
    nn.functional.cross_entropy(twin(x), y).backward()
    torch.manual_seed(1)
    samples = _opacus_grad_samples(model, x, y)
    for name, p in twin.named_parameters():
        torch.testing.assert_close(samples[name].mean(0), p.grad, rtol=1e-6, atol=1e-10, msg=name)


class _MixesBatch(nn.Module):
    """A layer that couples examples (like BatchNorm in train mode): per-sample gradients break."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.linear(x - x.mean(0, keepdim=True))


def test_comparison_detects_cross_example_coupling():
    model = _MixesBatch().double()
    x, y = _batch(3)
    with pytest.raises(AssertionError):
        _assert_match(model, x, y)


def test_reference_loop_is_consistent_with_batch_gradient():
    torch.manual_seed(0)
    model = build_model("tramer_boneh_cnn").double()
    x, y = _batch(3)
    reference = per_example_gradients(model, x, y)
    nn.functional.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(reference[name].mean(0), p.grad, rtol=1e-10, atol=1e-12)


def test_reference_loop_rejects_mismatched_batch():
    with pytest.raises(ValueError, match="same non-zero batch size"):
        per_example_gradients(nn.Linear(2, 2), torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
