"""Fast per-sample clipping equals the per-example loop, bounds every contribution by C, matches Opacus."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from smoothnet.models import build_model, list_models
from smoothnet.privacy.fast_clipping import (
    CONV_PER_EXAMPLE,
    METHODS,
    ClippedGradientModule,
    layer_rule,
    parse_method,
)
from smoothnet.privacy.method_select import choose_method
from smoothnet.privacy.reference import per_example_gradients

torch.set_num_threads(1)
RTOL = 1e-4


def _loss(out, y):
    return nn.functional.cross_entropy(out, y, reduction="none")


def _reference(model, x, y, c, k=1):
    """Per-example norms and the clipped sum from the one-backward-per-row loop (rows of a group averaged)."""
    grads = per_example_gradients(model, x, y, lambda out, t: _loss(out, t).sum())
    grads = {n: g.view(x.shape[0] // k, k, *g.shape[1:]).mean(1) for n, g in grads.items()}
    norms = torch.cat([g.flatten(1) for g in grads.values()], 1).norm(dim=1)
    clip = (c / (norms + 1e-6)).clamp(max=1.0)
    return norms, {n: torch.tensordot(clip, g, dims=1) for n, g in grads.items()}


def _ours(model, x, y, c, method="auto", k=1, conv="auto"):
    wrapped = ClippedGradientModule(model, c, method, conv_per_example=conv)
    model.zero_grad(set_to_none=True)
    norms = wrapped.clipped_backward(_loss(wrapped(x), y), group_size=k)
    return norms, {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


def _assert_close(ours, ref):
    """Norms and every parameter's clipped sum within RTOL relative; a tensor whose reference is ~0
    (e.g. a conv bias right before GroupNorm) is compared with 1e-10 of the whole gradient's norm."""
    norms, grads = ours
    ref_norms, ref_grads = ref
    assert _rel(norms, ref_norms) < RTOL
    assert set(grads) == set(ref_grads)
    total = torch.cat([g.flatten() for g in ref_grads.values()]).norm().item()
    for name in grads:
        error = (grads[name] - ref_grads[name]).norm().item()
        assert error <= RTOL * ref_grads[name].norm().item() + 1e-10 * total, name


def _small(name):
    """Each registered model at 32x32 in float64 (deep nets differ by ~1e-4 between batch sizes in float32,
    whatever the method), in eval mode (dropout off: the loop and the batch would draw different masks)."""
    size = 32
    torch.manual_seed(0)
    return build_model(name, 10, size).eval().double(), size


@functools.cache
def _model_case(name):
    """A model, a batch, a clip norm that clips some examples and not others, and the loop's reference:
    computed once per model and shared by its method x rule cases (the loop is the expensive part)."""
    model, size = _small(name)
    torch.manual_seed(1)
    x, y = torch.randn(3, 3, size, size, dtype=torch.float64), torch.randint(0, 10, (3,))
    c = _reference(model, x, y, c=1.0)[0].median().item()  # some examples clipped, some not
    return model, x, y, c, _reference(model, x, y, c=c)


@pytest.mark.parametrize("conv", ["loop", "grouped", "unfold"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list_models())
def test_every_model_and_method_matches_per_example_loop(name, method, conv):
    """Every registered model, every method x per-example convolution rule (the trainer may pick any)."""
    model, x, y, c, ref = _model_case(name)
    _assert_close(_ours(model, x, y, c, method, conv=conv), ref)


class _Scale(nn.Module):
    """A layer without a rule: covered by the torch.func fallback."""

    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, channels).view(channels, 1, 1))

    def forward(self, x):
        return x * self.scale


def _conv_net(cin=3, width=4, kernel=3, stride=1, groups=1, bias=True, classes=5):
    return nn.Sequential(
        nn.Conv2d(cin, width, kernel, padding=kernel // 2, bias=bias),
        _Scale(width),
        nn.GroupNorm(2, width),
        nn.ReLU(),
        nn.Conv2d(width, width, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=bias),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.LayerNorm(4 * width),
        nn.Linear(4 * width, classes),
    )


@settings(max_examples=12, deadline=None)
@given(
    batch=st.integers(1, 4),
    k=st.sampled_from([1, 2]),
    cin=st.integers(1, 3),
    width=st.sampled_from([2, 4, 6]),
    kernel=st.sampled_from([1, 3]),
    stride=st.sampled_from([1, 2]),
    grouped=st.booleans(),
    bias=st.booleans(),
    size=st.sampled_from([4, 7]),
    method=st.sampled_from(METHODS),
    conv=st.sampled_from(CONV_PER_EXAMPLE),
    c=st.floats(0.01, 10.0),
)
def test_random_conv_nets_match_loop(
    batch, k, cin, width, kernel, stride, grouped, bias, size, method, conv, c
):
    torch.manual_seed(batch * 7 + width)
    model = _conv_net(cin, width, kernel, stride, 2 if grouped else 1, bias).double()
    x, y = torch.randn(batch * k, cin, size, size, dtype=torch.float64), torch.randint(0, 5, (batch * k,))
    _assert_close(_ours(model, x, y, c, method, k, conv), _reference(model, x, y, c, k))


@pytest.mark.parametrize("conv", ["loop", "grouped", "unfold", "tune"])
@pytest.mark.parametrize("method", METHODS)
def test_each_contribution_is_bounded_by_c(method, conv):
    torch.manual_seed(2)
    model, c = _conv_net(), 0.05
    x, y = torch.randn(4, 3, 6, 6), torch.randint(0, 5, (4,))
    for i in range(4):  # one example at a time: p.grad is exactly its clipped contribution
        norms, grads = _ours(model, x[i : i + 1], y[i : i + 1], c, method, conv=conv)
        total = torch.cat([g.flatten() for g in grads.values()]).norm().item()
        assert norms.item() > c  # the bound is exercised, not vacuous
        assert total <= c * (1 + 1e-5)
        assert total == pytest.approx(c, rel=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("conv", ["loop", "grouped", "unfold"])
@pytest.mark.parametrize("method", METHODS)
def test_contribution_bounded_by_c_under_bf16_autocast(method, conv, channels_last):
    """Half-precision activations and output gradients: norms and clipped sums must come from the same
    numbers, or rounding lifts a clipped contribution above C."""
    torch.manual_seed(2)
    model, c = _conv_net(width=8, groups=2), 0.05
    model[1] = nn.Identity()
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    if channels_last:
        model, x = (
            model.to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        )
    wrapped = ClippedGradientModule(model, c, method, conv_per_example=conv)
    for i in range(4):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = wrapped(x[i : i + 1])
        assert out.dtype == torch.bfloat16  # autocast really ran the layers in bf16
        norms = wrapped.clipped_backward(_loss(out.float(), y[i : i + 1]))
        total = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
        assert all(p.grad.dtype == torch.float32 for p in model.parameters())
        assert norms.item() > c
        assert total <= c * (1 + 1e-5)


@pytest.mark.parametrize("rule", ["loop", "grouped", "unfold", "tune"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
def test_conv1d_conv3d_padding_modes_and_dilation_match_loop(dims, padding_mode, method, rule):
    conv = nn.Conv1d if dims == 1 else nn.Conv3d
    torch.manual_seed(dims)
    model = nn.Sequential(
        conv(2, 4, 3, padding=2, dilation=2, padding_mode=padding_mode),
        nn.GroupNorm(2, 4),
        nn.Tanh(),
        conv(4, 4, 3, stride=2, padding=1, groups=2, padding_mode=padding_mode),
        nn.Flatten(),
        nn.LazyLinear(3),
    ).double()
    shape = (6,) * dims
    x, y = torch.randn(4, 2, *shape, dtype=torch.float64), torch.randint(0, 3, (4,))
    model(x)  # materialise the lazy layer
    c = _reference(model, x, y, 1.0)[0].median().item()
    ref = _reference(model, x, y, c, k=2)
    _assert_close(_ours(model, x, y, c, method, k=2, conv=rule), ref)


def test_ghost_computations_run_without_tf32():
    """cuDNN allows TF32 by default: a ghost norm and its clipped sum must both run in full fp32."""
    from smoothnet.privacy.fast_clipping import _exact_fp32

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with pytest.raises(RuntimeError), _exact_fp32():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            raise RuntimeError
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # restored
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_infinite_c_gives_plain_summed_gradient():
    torch.manual_seed(3)
    model = _conv_net()
    x, y = torch.randn(5, 3, 6, 6), torch.randint(0, 5, (5,))
    _, grads = _ours(model, x, y, math.inf)
    plain = copy.deepcopy(model)
    _loss(plain(x), y).sum().backward()
    for name, p in plain.named_parameters():
        assert _rel(grads[name], p.grad) < RTOL


@pytest.mark.parametrize("k", [1, 2, 4])
def test_group_contribution_bounded_whatever_k(k):
    torch.manual_seed(4)
    model, c = _conv_net(), 0.05
    x, y = torch.randn(k, 3, 6, 6), torch.randint(0, 5, (k,))
    norms, grads = _ours(model, x, y, c, k=k)  # one example with K augmented rows
    assert norms.shape == (1,)
    assert torch.cat([g.flatten() for g in grads.values()]).norm().item() <= c * (1 + 1e-5)


def test_group_size_one_is_ungrouped():
    torch.manual_seed(5)
    model = _conv_net()
    x, y = torch.randn(4, 3, 6, 6), torch.randint(0, 5, (4,))
    wrapped = ClippedGradientModule(model, 0.3)
    norms_default = wrapped.clipped_backward(_loss(wrapped(x), y))
    default = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    norms_k1 = wrapped.clipped_backward(_loss(wrapped(x), y), group_size=1)
    assert torch.equal(norms_default, norms_k1)
    for n, p in model.named_parameters():
        assert torch.equal(default[n], p.grad)


def test_grad_accumulates_like_autograd():
    torch.manual_seed(6)
    model = _conv_net()
    x, y = torch.randn(4, 3, 6, 6), torch.randint(0, 5, (4,))
    wrapped = ClippedGradientModule(model, 0.3)
    wrapped.clipped_backward(_loss(wrapped(x[:2]), y[:2]))
    wrapped.clipped_backward(_loss(wrapped(x[2:]), y[2:]))
    _, ref = _reference(model, x, y, 0.3)
    for n, p in model.named_parameters():
        assert _rel(p.grad, ref[n]) < RTOL


def test_equals_opacus_hooks_clipped_sum_and_its_fast_clipping_optimizer():
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping

    torch.manual_seed(7)
    model, c = _conv_net(), 0.2
    model[1] = nn.Identity()  # Opacus has no grad sampler for the custom scale layer
    x, y = torch.randn(6, 3, 6, 6), torch.randint(0, 5, (6,))

    theirs = copy.deepcopy(model)
    gsm = GradSampleModule(theirs, batch_first=True, loss_reduction="sum")
    opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.0), noise_multiplier=0.0, max_grad_norm=c,
                      expected_batch_size=6, loss_reduction="sum")  # fmt: skip
    _loss(gsm(x), y).sum().backward()
    opt.pre_step()

    wrapped = ClippedGradientModule(model, c)
    fast = DPOptimizerFastGradientClipping(torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0,
                                           max_grad_norm=c, expected_batch_size=6, loss_reduction="sum")  # fmt: skip
    wrapped.clipped_backward(_loss(wrapped(x), y))
    fast.pre_step()
    for (n, p), q in zip(model.named_parameters(), theirs.parameters(), strict=True):
        assert _rel(p.grad, q.grad) < RTOL, n


def test_unused_parameters_get_zero_gradient():
    model = nn.ModuleDict({"used": nn.Linear(3, 2), "unused": nn.Linear(3, 2)})

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m["used"](x)

    wrapped = ClippedGradientModule(Net(), 1.0)
    wrapped.clipped_backward(_loss(wrapped(torch.randn(3, 3)), torch.tensor([0, 1, 0])))
    assert torch.count_nonzero(model["unused"].weight.grad) == 0
    assert torch.count_nonzero(model["used"].weight.grad) > 0


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="BatchNorm"):
        ClippedGradientModule(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), 1.0)
    with pytest.raises(ValueError, match="method"):
        ClippedGradientModule(nn.Linear(2, 2), 1.0, method="fastest")
    with pytest.raises(ValueError, match="max_grad_norm"):
        ClippedGradientModule(nn.Linear(2, 2), 0.0)
    wrapped = ClippedGradientModule(nn.Linear(2, 2), 1.0)
    with pytest.raises(RuntimeError, match="forward"):
        wrapped.clipped_backward(torch.zeros(3))
    out = wrapped(torch.randn(4, 2))
    with pytest.raises(ValueError, match="group_size"):
        wrapped.clipped_backward(_loss(out, torch.zeros(4, dtype=torch.long)), group_size=3)
    out = wrapped(torch.randn(4, 2))
    with pytest.raises(ValueError, match="reduction='none'"):
        wrapped.clipped_backward(_loss(out, torch.zeros(4, dtype=torch.long)).mean())
    out = wrapped(torch.randn(4, 2))
    with pytest.raises(RuntimeError, match="clipped_backward"):
        _loss(out, torch.zeros(4, dtype=torch.long)).sum().backward()


def test_choose_method_covers_every_model():
    opacus_modes = ("hooks", "functorch", "ew", "ghost")
    for name in list_models():
        for device in ("cpu", "cuda"):
            for size in (None, 32, 224):
                method = choose_method(name, device, size)
                assert method in opacus_modes or parse_method(method)
                assert parse_method(choose_method(name, device, size, ours_only=True))
    assert choose_method("not_a_model", "cpu") == "auto"
    assert choose_method("resnet9", "cuda", 32) == "hooks"  # measured: Opacus' hooks fastest there
    assert choose_method("resnet9", "cuda", 32, ours_only=True) != "hooks"
    assert choose_method("smoothnet_w80d50", "cuda", 224) == "auto+grouped"  # per resolution


def test_ours_only_falls_back_to_the_plain_models_entry(monkeypatch):
    from smoothnet.privacy import method_select

    table = {
        "fastest": {"m@224": ("hooks", False), "m": ("hooks", False)},
        "fastest_ours": {"m": ("ghost", True)},
    }
    monkeypatch.setitem(method_select.MEASURED, "tpu", table)
    assert choose_method("m", "tpu", 224) == "hooks"
    assert choose_method("m", "tpu", 224, ours_only=True) == "ghost"
    assert choose_method("other", "tpu", 224, ours_only=True) == "auto"


def test_parse_method():
    assert parse_method("auto") == ("auto", "auto")
    assert parse_method("materialize+grouped") == ("materialize", "grouped")
    for bad in ("fastest", "auto+im2col", "materialize+"):
        with pytest.raises(ValueError, match="<method>"):
            parse_method(bad)
    with pytest.raises(ValueError, match="conv_per_example"):
        ClippedGradientModule(nn.Linear(2, 2), 1.0, conv_per_example="im2col")


def _alternating(shape):
    """+1/-1 in a checkerboard over the trailing (position) dimensions: sums to 0 over an even count."""
    index = sum(torch.arange(n).view(*[1] * i, n, *[1] * (len(shape) - i - 1)) for i, n in enumerate(shape))
    return 1.0 - 2.0 * (index % 2).float()


ADVERSARIAL_LAYERS = [
    ("linear", lambda: nn.Linear(32, 16, bias=False), (256, 32), (256, 16)),
    ("conv", lambda: nn.Conv2d(4, 8, 3, padding=1, bias=False), (4, 16, 16), (8, 16, 16)),
]


@pytest.mark.parametrize(
    ("kind", "layer", "in_shape", "out_shape"), ADVERSARIAL_LAYERS, ids=["linear", "conv"]
)
def test_ghost_norm_survives_cancellation(kind, layer, in_shape, out_shape):
    """A near-constant input with an alternating output gradient: the Gram terms are ~1e11 and cancel to
    ~1e-1. Fp32 Gram matrices gave negative squared norms (NaN) and under-estimates (a contribution above C);
    the ghost norm must match the float64 per-example gradient and the contribution must stay <= C."""
    torch.manual_seed(0)
    module = layer()
    sign = _alternating(out_shape[1:]).view(1, *out_shape[1:]) if kind == "conv" else None
    if kind == "linear":
        sign = _alternating((out_shape[0],)).view(1, -1, 1)
    for i in range(3):
        x = 100.0 + 1e-3 * torch.randn(1, *in_shape)
        exact = module.double()
        xd = x.double().requires_grad_(False)
        exact.zero_grad(set_to_none=True)
        (exact(xd) * sign.double()).sum().backward()
        true_norm = exact.weight.grad.norm().item()
        module.float()
        c = true_norm / 2  # the example must be clipped to exactly C
        wrapped = ClippedGradientModule(module, c, method="ghost")
        module.zero_grad(set_to_none=True)
        norms = wrapped.clipped_backward((wrapped(x) * sign).flatten(1).sum(1))
        assert layer_rule(module).name == kind
        assert math.isfinite(norms.item()) and norms.item() == pytest.approx(true_norm, rel=1e-3), i
        contribution = module.weight.grad.double().norm().item()
        assert contribution <= c * (1 + 1e-5), (i, contribution / c)


@pytest.mark.parametrize("method", METHODS)
def test_non_finite_norm_gives_clip_factor_zero(method):
    """An example whose gradient is not finite contributes nothing (the others are clipped as usual)."""
    torch.manual_seed(1)
    model, c = _conv_net(), 0.05
    x, y = torch.randn(3, 3, 6, 6), torch.randint(0, 5, (3,))
    _, alone = _ours(model, x[1:], y[1:], c, method)
    x[0, 0, 0, 0] = math.nan
    norms, grads = _ours(model, x, y, c, method)
    assert not math.isfinite(norms[0].item())
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, alone[name], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_frozen_conv_weight_with_trainable_bias(method):
    """Only trainable parameters count in the norm (as for Linear): a frozen conv weight is neither
    clipped against nor given a gradient, and the ghost path does not look it up."""
    torch.manual_seed(3)
    model, c = _conv_net(), 0.05
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.requires_grad_(False)
    x, y = torch.randn(4, 3, 6, 6), torch.randint(0, 5, (4,))
    for conv in ("loop", "grouped", "unfold"):
        _assert_close(_ours(model, x, y, c, method, conv=conv), _reference(model, x, y, c))


def test_tune_keeps_the_fastest_rule_per_convolution_and_matches_the_loop():
    # Strides, dilation and K=2 rows per example: every per-layer rule gives the loop's numbers, and the
    # rule "tune" measured on the first backward is kept for later steps.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=2, dilation=2), nn.Tanh(), nn.Conv2d(4, 5, 2, padding=1),
        nn.Flatten(), nn.Linear(5 * 5 * 5, 3),
    ).double()  # fmt: skip
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (4,))
    ref = _reference(model, x, y, c=0.3, k=2)
    wrapped = ClippedGradientModule(model, 0.3, "materialize", conv_per_example="tune")
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        norms = wrapped.clipped_backward(_loss(wrapped(x), y), group_size=2)
        _assert_close((norms, {n: p.grad for n, p in model.named_parameters()}), ref)
    rules = wrapped.conv_rules()
    assert set(rules) == {"0", "2"} and set(rules.values()) <= {"loop", "grouped", "unfold"}
