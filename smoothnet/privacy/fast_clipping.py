"""Fast per-sample clipping: the clipped sum of per-example gradients in one forward and one backward.

Book-keeping (Bu et al. 2022, "Differentially private optimization on large model at small cost"),
as a plug-in beside Opacus. :class:`ClippedGradientModule` wraps a model; its forward runs with the
trainable parameters detached from the graph (``requires_grad`` off; the output of a layer with
nothing trainable upstream starts the graph), so the single backward computes only activation gradients. Hooks on every layer with parameters keep
the layer's input and the gradient of its output; from those each layer gives its per-example
gradient norms and, once the clip factors are known, its clipped summed gradient:

- ``materialize``: per-example weight gradients, then norms and a weighted sum over the batch.
  Memory: batch x parameters of the layer. A convolution's per-example weight gradients come from
  ``conv_per_example``: ``loop`` (one weight-gradient call per example: on CPU oneDNN runs each at
  the speed of the batched call) or ``grouped`` (ONE weight-gradient call of a convolution with
  ``groups * batch`` groups over the batch folded into channels, Rochette et al. 2019: on CUDA a
  single cuDNN kernel instead of ``batch`` small launches) or ``unfold`` (im2col of the input, then
  one batched matrix product per layer, as Opacus' hooks do: memory batch x C_in k^2 x positions;
  grouped convolutions fall back to ``grouped``); ``auto`` picks ``loop`` on CPU and ``grouped`` elsewhere; ``tune`` times every rule once per layer on
  the first backward and keeps each layer's fastest (``conv_rules()``). After the per-example gradients,
  their norms and the clipped sum are one fused reduction and one matrix-vector product each.
- ``ghost``: norms from Gram matrices (cost ~ B T^2 (d + p), T spatial positions; for a Linear layer
  on vectors the norm is ||a|| ||g||), then the clipped sum as ONE batched weight gradient with the
  output gradients scaled by each example's clip factor. Memory: the layer's input and output grad.
- ``auto`` (default, "mixed ghost clipping"): per layer, ``ghost`` where 8 T^2 (d + p) <= d p (e.g. a
  Linear layer on vectors, late convolutions at 2x2), else ``materialize``.

Conv1d/2d/3d, Linear, GroupNorm and LayerNorm have exact rules, registered per layer type with
:func:`register_rule` (Opacus' grad-sampler registry pattern; matched by exact type: a subclass may change
the forward, e.g. weight standardisation). Any other module with trainable parameters of its own falls
back to torch.func per-example gradients of that module's own parameters. BatchNorm
mixes examples in a batch and is refused. Privacy-critical: per-example norms use the same
clip factor as Opacus, ``min(1, C / (||g_i|| + 1e-6))``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothnet.privacy.per_sample_method import CLIPPINGS, CONV_PER_EXAMPLE, parse_clipping_spec

METHODS = CLIPPINGS  # ClippedGradientModule's per-layer clipping: auto, ghost, materialize
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_EPS = 1e-6  # Opacus' clip factor: C / (norm + 1e-6), at most 1


@dataclass
class _Capture:
    """What one call of a layer left for the backward: its inputs and, later, its output gradient."""

    args: tuple
    kwargs: dict
    versions: tuple
    grad_output: Tensor | None = None


@dataclass
class _LayerState:
    """Per-layer book-keeping of one step."""

    captures: list[_Capture] = field(default_factory=list)
    grad_samples: dict[str, Tensor] = field(default_factory=dict)  # name -> (examples, *shape), fp32
    ghost: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # (input, scaled output grad)
    norm_sq: Tensor | None = None  # ghost layers: per-example squared gradient norm


def parse_method(spec: str) -> tuple[str, str]:
    """``"<method>"`` or ``"<method>+<conv_per_example>"`` (e.g. ``materialize+grouped``) -> the two parts.

    The form the trainer records after ``fast:`` and ``method_select`` stores
    (:class:`smoothnet.privacy.per_sample_method.PerSampleMethod` reads the whole form); raises
    ``ValueError`` naming the valid choices.
    """
    try:
        return parse_clipping_spec(spec)
    except ValueError:
        raise ValueError(
            f"per-sample method {spec!r}: expected <method>[+<conv>] with method in {list(METHODS)} and "
            f"conv in {list(CONV_PER_EXAMPLE)}, e.g. 'materialize+grouped'"
        ) from None


# ----------------------------------------------------------------------------- per-layer rules

# A rule's ``per_example(clipper, layer, own, state, capture, views, single_use)`` adds the layer's
# per-example gradients (``state.grad_samples``) or ghost norms (``state.norm_sq`` and ``state.ghost``) for one
# call of the layer; ``ghost_sum(layer, x, scaled_grad_output)`` gives a ghost layer's clipped weight sum.


@dataclass(frozen=True)
class LayerRule:
    """How a layer type's own trainable parameters get per-example gradients (see :func:`register_rule`)."""

    name: str
    per_example: Callable[..., None]
    applies: Callable[[nn.Module], bool] | None = None  # None: every module of the registered types
    ghost_sum: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None


_RULES: dict[type[nn.Module], LayerRule] = {}


def register_rule(*layer_types: type[nn.Module], name: str, applies=None, ghost_sum=None):
    """Register the decorated function as the per-example rule of exactly ``layer_types`` (not subclasses:
    a subclass may change the forward, e.g. weight standardisation), as Opacus' ``register_grad_sampler``.

    ``applies(module)`` may turn a rule down for a module (then the torch.func fallback runs)."""

    def decorate(fn):
        for layer_type in layer_types:
            _RULES[layer_type] = LayerRule(name, fn, applies, ghost_sum)
        return fn

    return decorate


def layer_rule(module: nn.Module) -> LayerRule:
    """The rule for ``module``'s own trainable parameters: the registered one for its exact type, else the
    torch.func fallback.

    Raises ``ValueError`` for BatchNorm (it mixes the examples of a batch, so per-example gradients
    are not defined): replace it with GroupNorm (``opacus.validators.ModuleValidator.fix``).
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        raise ValueError(
            f"{type(module).__name__} mixes the examples of a batch: per-example gradients are undefined; "
            "replace it with GroupNorm (opacus.validators.ModuleValidator.fix(model))"
        )
    rule = _RULES.get(type(module))
    if rule is not None and (rule.applies is None or rule.applies(module)):
        return rule
    return _FUNCTORCH_RULE


class ClippedGradientModule(nn.Module):
    """Wraps ``module``; ``clipped_backward`` puts the clipped per-example gradient sum into ``p.grad``.

    Args:
        module: the model. Every module owning trainable parameters gets a rule (see module docstring).
        max_grad_norm: clipping bound C (> 0; ``math.inf`` disables clipping).
        method: ``auto`` (mixed, default), ``ghost`` or ``materialize`` (see module docstring).
        conv_per_example: how convolutions materialise per-example gradients: ``auto`` (default:
            ``loop`` on CPU, ``grouped`` on other devices), ``loop``, ``grouped`` or ``unfold``. Same
            numbers either way; the speed differs by device and layer shape (benchmarks/README.md).
    """

    def __init__(
        self, module: nn.Module, max_grad_norm: float, method: str = "auto", conv_per_example: str = "auto"
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
        if conv_per_example not in CONV_PER_EXAMPLE:
            raise ValueError(
                f"conv_per_example must be one of {list(CONV_PER_EXAMPLE)}, got {conv_per_example!r}"
            )
        if not (max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be > 0 (math.inf disables clipping), got {max_grad_norm!r}")
        self._module = module
        self.max_grad_norm = float(max_grad_norm)
        self.method = method
        self.conv_per_example = conv_per_example
        self._layers: dict[nn.Module, tuple[LayerRule, dict[str, nn.Parameter]]] = {}
        for _, sub in module.named_modules():
            own = {n: p for n, p in sub.named_parameters(recurse=False) if p.requires_grad}
            if own:
                self._layers[sub] = (layer_rule(sub), own)
        if not self._layers:
            raise ValueError("the module has no trainable parameters")
        self._params = [p for _, own in self._layers.values() for p in own.values()]
        self._state: dict[nn.Module, _LayerState] | None = None
        self._batch_rows = 0
        self._capturing = False
        self._backward_state: dict[nn.Module, _LayerState] | None = None
        self._views = 1
        self._conv_rules: dict[nn.Module, str] = {}  # conv_per_example="tune": each conv's fastest rule
        self._handles = [
            sub.register_forward_hook(self._forward_hook, with_kwargs=True) for sub in self._layers
        ]

    @property
    def module(self) -> nn.Module:
        """The wrapped model."""
        return self._module

    def forward(self, x: Tensor, *args, **kwargs):
        """The wrapped model's output; with grad enabled, also records what ``clipped_backward`` needs."""
        if not torch.is_grad_enabled():
            self._state = None
            return self._module(x, *args, **kwargs)
        if not torch.is_floating_point(x):
            raise TypeError(f"ClippedGradientModule needs a floating-point input, got dtype {x.dtype}")
        self._state = {sub: _LayerState() for sub in self._layers}
        self._batch_rows = x.shape[0]
        flags = [p.requires_grad for p in self._params]
        self._capturing = True
        try:
            for p in self._params:
                p.requires_grad_(False)
            return self._module(x, *args, **kwargs)
        finally:
            self._capturing = False
            for p, flag in zip(self._params, flags, strict=True):
                p.requires_grad_(flag)

    def _forward_hook(self, sub: nn.Module, args: tuple, kwargs: dict, output):
        if not self._capturing or self._state is None:
            return
        args = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
        versions = tuple(a._version for a in args if isinstance(a, Tensor))
        capture = _Capture(args, dict(kwargs), versions)
        self._state[sub].captures.append(capture)
        if not isinstance(output, Tensor):
            raise TypeError(
                f"{type(sub).__name__} returns {type(output).__name__}; per-sample rules need a Tensor"
            )
        if not output.requires_grad:
            # Nothing trainable upstream: start the graph here, so the backward stops at this layer
            # (no input gradient for the first layer or a parameter-free frontend).
            output = output.detach().requires_grad_(True)
        output.register_hook(lambda grad, sub=sub, capture=capture: self._on_grad(sub, capture, grad))
        return output

    def _on_grad(self, sub: nn.Module, capture: _Capture, grad: Tensor) -> None:
        # Runs inside the backward. A layer called once is processed at once, so its input and output
        # gradient are freed as the backward proceeds; a layer called several times waits for the end.
        if self._backward_state is None:
            raise RuntimeError(
                "a ClippedGradientModule's loss must be backpropagated with clipped_backward()"
            )
        layer = self._backward_state[sub]
        capture.grad_output = grad if capture.grad_output is None else capture.grad_output + grad
        if len(layer.captures) == 1:
            self._per_example(sub, layer, self._views)

    def clipped_backward(self, per_sample_loss: Tensor, group_size: int = 1) -> Tensor:
        """Accumulate into ``p.grad`` (``+=``) the clipped sum ``sum_i min(1, C/||g_i||) g_i``.

        ``g_i`` is the gradient of ``per_sample_loss[i]``; with ``group_size`` K > 1, rows
        ``i*K .. i*K+K-1`` are one example and ``g_i`` is the mean of their K gradients
        (augmentation multiplicity). Returns the per-example norms before clipping, shape (B/K,).
        No noise and no averaging: the DP optimizer adds noise and divides by the expected batch size.
        """
        if self._state is None:
            raise RuntimeError("clipped_backward needs a forward with grad enabled just before it")
        if per_sample_loss.dim() != 1 or per_sample_loss.shape[0] != self._batch_rows:
            raise ValueError(
                f"per_sample_loss must have shape ({self._batch_rows},) (one loss per input row; use "
                f"reduction='none'), got {tuple(per_sample_loss.shape)}"
            )
        if not isinstance(group_size, int) or group_size < 1 or self._batch_rows % group_size:
            raise ValueError(
                f"group_size must be a positive divisor of the batch {self._batch_rows}, got {group_size!r}"
            )
        rows, views = self._batch_rows, group_size
        examples = rows // views
        state, self._state = self._state, None
        self._backward_state, self._views = state, views
        try:
            (per_sample_loss.sum() / views).backward()  # row grads / K: a group's sum is its mean gradient
        finally:
            self._backward_state = None
        norm_sq = torch.zeros(examples, device=per_sample_loss.device, dtype=_acc(self._params[0]).dtype)
        for sub, layer in state.items():
            if layer.captures:
                self._per_example(sub, layer, views)
            for gs in layer.grad_samples.values():
                norm_sq += _row_sq_norms(gs)
            if layer.norm_sq is not None:
                norm_sq += layer.norm_sq
        norms = norm_sq.sqrt()
        clip = (self.max_grad_norm / (norms + _EPS)).clamp(max=1.0)
        # A non-finite norm (overflow, NaN input) gets clip factor 0: that example contributes nothing.
        clip = torch.where(torch.isfinite(norms), clip, torch.zeros_like(clip))
        for sub, (_, own) in self._layers.items():
            layer = state[sub]
            for name, p in own.items():
                if name in layer.grad_samples:
                    gs = layer.grad_samples[name]
                    _accumulate(p, _clipped_sum(gs, clip))
            for x, go in layer.ghost:
                self._ghost_sum(sub, own, x, go, clip.repeat_interleave(views))
            for p in own.values():
                if p.grad is None:  # layer unused by this loss: its gradient is zero
                    p.grad = torch.zeros_like(p)
        return norms

    def _per_example(self, sub: nn.Module, layer: _LayerState, views: int) -> None:
        rule, own = self._layers[sub]
        used = [c for c in layer.captures if c.grad_output is not None]
        single_use = len(layer.captures) == 1
        layer.captures = []
        for c in used:
            now = tuple(a._version for a in c.args if isinstance(a, Tensor))
            if now != c.versions:
                raise RuntimeError(
                    f"the input of {type(sub).__name__} was modified in place after the layer ran; "
                    "per-sample gradients need it unchanged (use inplace=False on the following op)"
                )
            rule.per_example(self, sub, own, layer, c, views, single_use)

    def _use_ghost(self, positions: int, fan_in: int, fan_out: int, single_use: bool) -> bool:
        if not single_use or self.method == "materialize":
            return False
        # Ghost costs a Gram pass (B T^2 (d + p)) on top of the clipped-sum weight gradient that
        # materialising replaces; it only wins where that pass is small next to the per-example
        # gradients' memory traffic (B d p). 8x margin: measured on CPU, where im2col is costly.
        return self.method == "ghost" or 8 * positions * positions * (fan_in + fan_out) <= fan_in * fan_out

    def _conv_samples(self, conv: nn.Module, x: Tensor, go: Tensor, views: int) -> Tensor:
        """Per-example weight gradients of ``conv`` by the configured (or, with ``tune``, the fastest) rule."""
        impl = self.conv_per_example
        if impl == "auto":
            impl = "loop" if x.device.type == "cpu" else "grouped"
        if impl == "tune" and conv not in self._conv_rules:
            self._conv_rules[conv], samples = _fastest_conv_rule(conv, x, go, views)
            return samples
        return _conv_samples(self._conv_rules.get(conv, impl), conv, x, go, views)

    def conv_rules(self) -> dict[str, str]:
        """``{qualified name: rule}`` that ``conv_per_example="tune"`` measured fastest per convolution
        (filled by the first backward)."""
        names = {sub: name for name, sub in self._module.named_modules()}
        return {names[conv] or "<root>": rule for conv, rule in self._conv_rules.items()}

    def _ghost_sum(self, sub, own, x, go, row_clip: Tensor) -> None:
        with _exact_fp32():
            self._ghost_sum_exact(sub, own, x, go, row_clip)

    def _ghost_sum_exact(self, sub, own, x, go, row_clip: Tensor) -> None:
        # In the accumulation precision, from the same (e.g. bf16-rounded) inputs the norms were taken
        # of: rounding the scaled gradients back to half precision could lift a contribution above C.
        # float64: the batched sum cancels like the Gram norms do (fp32 let a contribution exceed C by ~2 %);
        # rows of a clip factor 0 (non-finite norm) are zeroed, not multiplied (NaN * 0 is NaN).
        factor = row_clip.view(-1, *([1] * (go.dim() - 1))).double()
        go = torch.where(factor > 0, go.double() * factor, 0.0)
        x = torch.where(factor > 0, x.double(), 0.0)
        _accumulate(own["weight"], self._layers[sub][0].ghost_sum(sub, x, go))


def _linear_ghost_sum(linear: nn.Module, x: Tensor, go: Tensor) -> Tensor:
    return go.reshape(-1, go.shape[-1]).t() @ x.reshape(-1, x.shape[-1])


def _conv_ghost_sum(conv: nn.Module, x: Tensor, go: Tensor) -> Tensor:
    return _conv_weight_grad(conv, x, go)


@register_rule(
    *_CONVS, name="conv", applies=lambda conv: not isinstance(conv.padding, str), ghost_sum=_conv_ghost_sum
)
def _conv_rule(clipper, conv, own, layer, capture, views, single_use) -> None:
    x, go = _conv_input(conv, capture.args[0]), capture.grad_output
    rows = x.shape[0]
    positions = views * math.prod(go.shape[2:])
    fan_in = conv.weight[0].numel()
    ghost = conv.groups == 1 and clipper._use_ghost(positions, fan_in, conv.out_channels, single_use)
    if "bias" in own:
        _add_samples(layer, {"bias": _acc(go).flatten(2).sum(2).view(rows // views, views, -1).sum(1)})
    if "weight" not in own:  # frozen weight: only trainable parameters count, as for Linear
        return
    if ghost:
        unfold = _unfold(conv, x)  # (rows, fan_in, T)
        a = _acc(unfold.view(rows // views, views, fan_in, -1).transpose(1, 2).flatten(2))
        g = _acc(go.flatten(2).view(rows // views, views, conv.out_channels, -1).transpose(1, 2).flatten(2))
        layer.norm_sq = _ghost_norm_sq(a, g) + (0 if layer.norm_sq is None else layer.norm_sq)
        layer.ghost.append((x, go))
        return
    _add_samples(layer, {"weight": clipper._conv_samples(conv, x, go, views)})


@register_rule(nn.Linear, name="linear", ghost_sum=_linear_ghost_sum)
def _linear_rule(clipper, linear, own, layer, capture, views, single_use) -> None:
    x, go = capture.args[0], capture.grad_output
    rows, fan_in, fan_out = x.shape[0], x.shape[-1], go.shape[-1]
    a = _acc(x.reshape(rows // views, -1, fan_in))  # (examples, K*T, d)
    g = _acc(go.reshape(rows // views, -1, fan_out))
    if "bias" in own:
        _add_samples(layer, {"bias": g.sum(1)})
    if "weight" not in own:
        return
    if clipper._use_ghost(a.shape[1], fan_in, fan_out, single_use):
        if a.shape[1] == 1:
            norm_sq = a.pow(2).sum((1, 2)) * g.pow(2).sum((1, 2))
        else:
            norm_sq = _ghost_norm_sq(a.transpose(1, 2), g.transpose(1, 2))
        layer.norm_sq = norm_sq + (0 if layer.norm_sq is None else layer.norm_sq)
        layer.ghost.append((x, go))
    else:
        _add_samples(layer, {"weight": torch.einsum("btp,btd->bpd", g, a)})


@register_rule(nn.GroupNorm, nn.LayerNorm, name="normalization")
def _normalization_rule(clipper, norm_layer, own, layer, capture, views, single_use) -> None:
    _add_samples(layer, _normalization_samples(norm_layer, own, capture.args[0], capture.grad_output, views))


def _functorch_rule(clipper, sub, own, layer, capture, views, single_use) -> None:
    _add_samples(layer, _functorch_samples(sub, own, capture, views))


_FUNCTORCH_RULE = LayerRule("functorch", _functorch_rule)


def _acc(t: Tensor) -> Tensor:
    """``t`` in the accumulation precision: half precision is raised to float32, float64 kept."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _row_sq_norms(gs: Tensor) -> Tensor:
    """Squared norm of each example's gradient, gs: (examples, ...). One fused reduction: no squared copy
    of the per-example gradients (that copy and its sum were ~40 % of a CPU DP step of small CNNs)."""
    return torch.linalg.vector_norm(gs, dim=tuple(range(1, gs.dim()))).square()


def _clipped_sum(gs: Tensor, clip: Tensor) -> Tensor:
    """sum_i clip[i] * gs[i] as one matrix-vector product, without a scaled copy of the per-example gradients.

    A row with clip factor 0 (a non-finite norm) contributes exactly 0 even when it holds NaN or Inf
    (0 * NaN is NaN in a product): such rows are zeroed first, which costs nothing when there are none."""
    dropped = clip == 0
    if dropped.any():
        gs = torch.where(dropped.view(-1, *[1] * (gs.dim() - 1)), 0.0, gs)
    return torch.tensordot(clip.to(gs.dtype), gs, dims=1)


def _accumulate(p: nn.Parameter, grad: Tensor) -> None:
    grad = grad.to(p.dtype).view_as(p)
    if p.grad is None:
        p.grad = grad
    else:
        p.grad += grad


def _batched_like(t: Tensor, batch: int, dtype: torch.dtype) -> Tensor:
    """An empty (batch, *t.shape) tensor whose every slice has t's memory layout."""
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d))  # dims from outermost to innermost
    buffer = torch.empty((batch, *[t.shape[d] for d in order]), dtype=dtype, device=t.device)
    return buffer.permute(0, *[1 + order.index(d) for d in range(t.dim())])


def _add_samples(layer: _LayerState, samples: dict[str, Tensor]) -> None:
    for name, gs in samples.items():
        gs = _acc(gs)
        layer.grad_samples[name] = gs if name not in layer.grad_samples else layer.grad_samples[name] + gs


def _ghost_norm_sq(a: Tensor, g: Tensor) -> Tensor:
    """Per-example ||g a^T||_F^2 from Gram matrices; a: (B, d, T), g: (B, p, T).

    In float64, clamped at 0: the Gram sum cancels catastrophically in fp32 (a near-constant input with an
    alternating output gradient gave negative squares, i.e. NaN norms, and under-estimated norms).
    """
    a, g = a.double(), g.double()
    return (torch.bmm(a.transpose(1, 2), a) * torch.bmm(g.transpose(1, 2), g)).sum((1, 2)).clamp(min=0)


@contextmanager
def _exact_fp32() -> Iterator[None]:
    """fp32 matrix products and convolutions without TF32 (cuDNN allows TF32 by default).

    A ghost layer's norm and its clipped sum are two different computations; rounding one to TF32's 10-bit
    mantissa (~1e-3) could lift a clipped contribution above C. Materialised per-example gradients need no
    such care: the norm and the sum are taken of the same tensor.
    """
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def _conv_input(conv, x: Tensor) -> Tensor:
    if conv.padding_mode != "zeros":
        return F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
    return x


def _conv_padding(conv) -> list[int]:
    return [0] * len(conv.kernel_size) if conv.padding_mode != "zeros" else list(conv.padding)


def _conv_weight_grad(conv, x: Tensor, go: Tensor) -> Tensor:
    """Weight gradient of ``conv`` summed over the rows of (padded) input x and output gradient go."""
    return torch.ops.aten.convolution_backward(
        go, x.to(go.dtype), conv.weight.to(go.dtype), None, list(conv.stride), _conv_padding(conv),
        list(conv.dilation), False, [0] * len(conv.kernel_size), conv.groups, [False, True, False],
    )[1]  # fmt: skip


def _conv_weight_grad_per_example(conv, x: Tensor, go: Tensor, views: int) -> Tensor:
    """Per-example weight gradients (examples, *weight.shape) of ``conv``, each summed over its ``views`` rows.

    The examples are folded into the channels, (rows, C, *S) -> (views, examples * C, *S), and one
    weight gradient of the same convolution with ``groups * examples`` groups gives every example's
    gradient at once: group j of the folded convolution sees only example j's channels.
    """
    examples = x.shape[0] // views

    def fold(t: Tensor) -> Tensor:
        t = t.reshape(examples, views, *t.shape[1:]).transpose(0, 1)
        return t.reshape(views, examples * t.shape[2], *t.shape[3:])

    weight = conv.weight
    folded_weight = weight.new_zeros((examples * weight.shape[0], *weight.shape[1:]), dtype=go.dtype)
    grad = torch.ops.aten.convolution_backward(
        fold(go), fold(x.to(go.dtype)), folded_weight, None, list(conv.stride), _conv_padding(conv),
        list(conv.dilation), False, [0] * len(conv.kernel_size), conv.groups * examples, [False, True, False],
    )[1]  # fmt: skip
    return grad.reshape(examples, *weight.shape)


CONV_RULES = ("loop", "grouped", "unfold")  # what conv_per_example="tune" times per layer


def _conv_samples(impl: str, conv, x: Tensor, go: Tensor, views: int) -> Tensor:
    """Per-example weight gradients (examples, *weight.shape) of ``conv`` by rule ``impl`` (module docstring)."""
    rows = x.shape[0]
    if impl == "unfold" and conv.groups == 1:
        unfold = _unfold(conv, x)  # (rows, fan_in, T)
        g = go.flatten(2).to(unfold.dtype)  # (rows, C_out, T)
        grads = torch.bmm(g, unfold.transpose(1, 2))  # (rows, C_out, fan_in)
        if views > 1:
            grads = grads.view(rows // views, views, *grads.shape[1:]).sum(1)
        return grads.view(rows // views, *conv.weight.shape)
    if impl in ("grouped", "unfold"):
        return _conv_weight_grad_per_example(conv, x, go, views)
    samples = None
    for i in range(rows // views):
        part = slice(i * views, i * views + views)
        grad = _conv_weight_grad(conv, x[part], go[part])
        if samples is None:  # same memory layout as oneDNN's result (e.g. channels-last): plain copies
            samples = _batched_like(grad, rows // views, _acc(go).dtype)
        samples[i] = grad
    return samples


def _fastest_conv_rule(conv, x: Tensor, go: Tensor, views: int) -> tuple[str, Tensor]:
    """Time every rule of ``CONV_RULES`` once on this layer's own input and output gradient; the fastest
    rule and its result (every rule gives the same numbers, up to rounding)."""
    best = None
    for rule in CONV_RULES:
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        samples = _conv_samples(rule, conv, x, go, views)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        took = time.perf_counter() - start
        if best is None or took < best[0]:
            best = (took, rule, samples)
        del samples
    return best[1], best[2]


def _unfold(conv, x: Tensor) -> Tensor:
    """im2col of x for ``conv`` (groups == 1): (rows, C_in * prod(kernel), positions)."""
    if isinstance(conv, nn.Conv2d):
        return F.unfold(x, conv.kernel_size, conv.dilation, _conv_padding(conv), conv.stride)
    if isinstance(conv, nn.Conv1d):
        (kernel,), (d,), (p,), (s,) = conv.kernel_size, conv.dilation, _conv_padding(conv), conv.stride
        return F.unfold(x.unsqueeze(2), (1, kernel), (1, d), (0, p), (1, s))  # a 1 x L image
    # Conv3d: pad, then unfold each spatial dimension
    pads = [v for p in reversed(_conv_padding(conv)) for v in (p, p)]
    xp = F.pad(x, pads)
    for dim, (kernel, d, s) in enumerate(zip(conv.kernel_size, conv.dilation, conv.stride, strict=True)):
        xp = xp.unfold(2 + dim, d * (kernel - 1) + 1, s)[..., ::d]
    rows, cin = x.shape[:2]
    # xp: (rows, cin, o1, o2, o3, k1, k2, k3) -> (rows, cin*k1*k2*k3, o1*o2*o3)
    return xp.permute(0, 1, 5, 6, 7, 2, 3, 4).reshape(rows, cin * math.prod(conv.kernel_size), -1)


def _normalization_samples(norm_layer, own, x: Tensor, go: Tensor, views: int) -> dict[str, Tensor]:
    """Per-example gradients of GroupNorm/LayerNorm affine parameters from the normalised input."""
    rows = x.shape[0]
    if isinstance(norm_layer, nn.GroupNorm):
        xhat = F.group_norm(_acc(x), norm_layer.num_groups, None, None, norm_layer.eps)
        reduce = [0] + list(range(2, x.dim()))  # per channel
        shape = (rows, norm_layer.num_channels, -1)
    else:
        xhat = F.layer_norm(_acc(x), norm_layer.normalized_shape, None, None, norm_layer.eps)
        reduce = None
        shape = (rows, -1, math.prod(norm_layer.normalized_shape))
    go = _acc(go)
    out = {}
    for name, value in (("weight", go * xhat), ("bias", go)):
        if name not in own:
            continue
        if reduce is not None:
            gs = value.reshape(shape).sum(2)
        else:
            gs = value.reshape(shape).sum(1)
        out[name] = gs.view(rows // views, views, *own[name].shape).sum(1)
    return out


def _functorch_samples(sub: nn.Module, own: dict, c: _Capture, views: int):
    """Per-example gradients of ``sub``'s own parameters by torch.func (vmap over rows of vjp)."""
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in own.items()}

    def row_loss(params, go_row, *args_row):
        args = tuple(a.unsqueeze(0) if isinstance(a, Tensor) else a for a in args_row)
        out = functional_call(sub, params, args, c.kwargs)
        return (out * go_row.unsqueeze(0)).sum()

    in_dims = (None, 0) + tuple(0 if isinstance(a, Tensor) else None for a in c.args)
    with torch.enable_grad():
        samples = vmap(grad(row_loss), in_dims=in_dims)(params, c.grad_output, *c.args)
    rows = c.grad_output.shape[0]
    return {n: _acc(s).view(rows // views, views, *s.shape[1:]).sum(1) for n, s in samples.items()}
