"""Reference per-example gradients: one backward pass per example, no tricks.

The slow, obviously-correct ground truth that Opacus' grad samplers, fast clipping and the
trainer are checked against (the Opacus test-suite pattern).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def per_example_gradients(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Gradient of ``loss_fn(model(x[i:i+1]), y[i:i+1])`` for every example ``i``.

    Args:
        model: the module; its mode (train/eval) is used as is. Pass a model without Opacus
            hooks (compute the reference before wrapping, or on a deep copy): hooks would fire.
        x, y: a batch of inputs and targets (first dimension = examples).
        loss_fn: loss of a batch of one; default cross-entropy.

    Returns:
        ``{parameter name: tensor of shape (B, *parameter.shape)}`` for every parameter with
        ``requires_grad``; a parameter that does not influence the loss gets zeros. Uses
        ``torch.autograd.grad``, so ``.grad`` fields are left untouched.
    """
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"x and y need the same non-zero batch size, got {x.shape[0]} and {y.shape[0]}")
    loss_fn = loss_fn or nn.functional.cross_entropy
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    out = {
        name: torch.zeros((x.shape[0], *p.shape), dtype=p.dtype, device=p.device)
        for name, p in params.items()
    }
    for i in range(x.shape[0]):
        loss = loss_fn(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for name, grad in zip(params, grads, strict=True):
            if grad is not None:
                out[name][i] = grad
    return out
