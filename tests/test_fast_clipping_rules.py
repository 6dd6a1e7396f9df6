"""The per-layer rule registry: built-in layer types map to their rules, a registered rule for a new layer
type is used, and its clipped sum matches the one-backward-per-example loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smoothnet.privacy import fast_clipping
from smoothnet.privacy.fast_clipping import ClippedGradientModule, layer_rule, register_rule
from smoothnet.privacy.reference import per_example_gradients
from tests.support.nets import Scale


class WeightStandardizedConv(nn.Conv2d):
    """A subclass changes the forward: it must not get the plain convolution's rule."""

    def forward(self, x):
        w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        return self._conv_forward(x, w, self.bias)


@pytest.mark.parametrize(
    ("layer", "rule"),
    [
        (nn.Conv1d(2, 3, 3), "conv"),
        (nn.Conv2d(2, 3, 3), "conv"),
        (nn.Conv3d(2, 3, 3), "conv"),
        (nn.Conv2d(2, 3, 3, padding="same"), "functorch"),  # string padding: the rule declines
        (WeightStandardizedConv(2, 3, 3), "functorch"),
        (nn.Linear(2, 3), "linear"),
        (nn.GroupNorm(2, 4), "normalization"),
        (nn.LayerNorm(4), "normalization"),
        (Scale(3), "functorch"),
    ],
)
def test_builtin_rules_by_exact_type(layer, rule):
    assert layer_rule(layer).name == rule


def test_batchnorm_is_refused():
    with pytest.raises(ValueError, match="GroupNorm"):
        layer_rule(nn.BatchNorm2d(3))


@pytest.fixture
def scale_rule():
    calls = []

    @register_rule(Scale, name="scale")
    def _scale_rule(clipper, layer, own, state, capture, views, single_use):
        calls.append(views)
        x, go = capture.args[0].double(), capture.grad_output.double()
        per_row = (x * go).reshape(x.shape[0] // views, views, -1, x.shape[-1]).sum((1, 2))
        fast_clipping._add_samples(state, {"scale": per_row})

    yield calls
    del fast_clipping._RULES[Scale]


@pytest.mark.parametrize("views", [1, 2])
def test_a_registered_rule_is_used_and_matches_the_per_example_loop(scale_rule, views):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), Scale(4), nn.Tanh(), nn.Linear(4, 3)).double()
    assert layer_rule(model[1]).name == "scale"
    x, y, c = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,)), 0.1
    grads = per_example_gradients(
        model, x, y, lambda out, t: nn.functional.cross_entropy(out, t, reduction="sum")
    )
    grads = {n: g.view(6 // views, views, *g.shape[1:]).mean(1) for n, g in grads.items()}
    norms = torch.cat([g.flatten(1) for g in grads.values()], 1).norm(dim=1)
    clip = (c / (norms + 1e-6)).clamp(max=1.0)
    wrapped = ClippedGradientModule(model, c, "materialize")
    ours = wrapped.clipped_backward(
        nn.functional.cross_entropy(wrapped(x), y, reduction="none"), group_size=views
    )
    assert scale_rule == [views]
    torch.testing.assert_close(ours, norms)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, torch.tensordot(clip, grads[name], dims=1))
