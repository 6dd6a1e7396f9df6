"""Fixed-shape padded Poisson batches: the padded DP step equals the unpadded one bit for bit (float64), the
batches are the ones Opacus' loader and BatchMemoryManager give, and the batch sizes are exactly Poisson."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus.utils.batch_memory_manager import BatchMemoryManager
from scipy import stats
from torch import nn
from torch.utils.data import TensorDataset

from smoothnet.models.registry import build_model
from smoothnet.privacy.per_sample_method import CLIPPINGS
from smoothnet.training.dp import make_private, random_streams
from smoothnet.training.fixed_shape import (
    FixedShapePoissonBatches,
    pad_batch,
    pad_rows,
    poisson_mask,
    selected_first,
    split_sizes,
)
from tests.support.nets import Scale, tiny_net

torch.set_num_threads(1)
PHYSICAL = 6  # a logical batch of ~16 splits into uneven parts, each padded


def _mixed():
    """Conv1d, LayerNorm, the torch.func fallback and a convolutional classifier: no matrix product."""
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=1), nn.Flatten(), nn.LayerNorm(18), Scale(18), nn.Tanh(), nn.Unflatten(1, (3, 6)),
        nn.Conv1d(3, 3, 6), nn.Flatten(),
    )  # fmt: skip


def _conv_only():
    """Conv2d, GroupNorm and a 1x1-convolution classifier: no matrix product."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.SELU(), nn.Conv2d(4, 3, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


def _smoothnet():
    torch.manual_seed(1)
    return build_model("smoothnet", num_classes=3, width=1.0, depth=1.0)


def _scatternet_head():
    torch.manual_seed(2)
    return build_model("scatternet_cnn", num_classes=3).head


# Each row's arithmetic independent of the batch's row count: padded == unpadded bit for bit.
EXACT_MODELS = {"conv_only": (_conv_only, (3, 6, 6)), "mixed": (_mixed, (2, 6))}
# With Linear layers: torch's CPU matrix product (MKL) rounds a row differently when the row count moves it
# between a full 4-row block and the remainder, so the padded step agrees to rounding, not bit for bit.
LINEAR_MODELS = {
    "tiny": (tiny_net, (3, 6, 6)),
    "smoothnet_w10d10": (_smoothnet, (3, 16, 16)),
    "scatternet_cnn_head": (_scatternet_head, (243, 8, 8)),
}
FAST_METHODS = [f"fast:{c}+{r}" for c in CLIPPINGS for r in ("loop", "grouped", "unfold")] + ["fast"]


def _dp_run(make, shape, method, padded, views=1, steps=2):
    """Two DP steps (float64) from fixed seeds; the parameters after them."""
    model = make().double()
    g = torch.Generator().manual_seed(11)
    data = TensorDataset(
        torch.randn(64, *shape, generator=g, dtype=torch.float64), torch.randint(0, 3, (64,), generator=g)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    setup = make_private(
        model, optimizer, data, method=method, logical_batch_size=16, max_grad_norm=0.05, epochs=1,
        accountant="rdp", delta=1e-5, target_epsilon=None, noise_multiplier=1.0,
        streams=random_streams(0, "fixed-shape", secure=False),
    )  # fmt: skip

    def step(x, y, row_weight=None):
        setup.backward(setup.model(x), y, views, **({} if row_weight is None else {"row_weight": row_weight}))
        setup.optimizer.step()
        setup.optimizer.zero_grad(set_to_none=True)

    taken = 0
    if padded:
        for batch in setup.fixed_shape_batches(PHYSICAL):
            assert batch.rows > 0, "an empty batch: pick another seed"
            x, y = batch.x.repeat_interleave(views, 0), batch.y.repeat_interleave(views, 0)
            x, y, weight = pad_batch(x, y, PHYSICAL, views)
            assert x.shape[0] == y.shape[0] == PHYSICAL * views  # one shape for every physical batch
            step(x, y, weight)
            taken += batch.last
            if taken == steps:
                break
    else:
        with BatchMemoryManager(
            data_loader=setup.loader, max_physical_batch_size=PHYSICAL, optimizer=setup.optimizer
        ) as batches:
            for x, y in batches:
                assert len(y) > 0, "an empty batch: pick another seed"
                step(x.repeat_interleave(views, 0), y.repeat_interleave(views, 0))
                taken += not setup.optimizer._is_last_step_skipped
                if taken == steps:
                    break
    return [p.detach().clone() for p in model.parameters()]


def _assert_padded_matches(make, shape, method, views=1, exact=True):
    unpadded = _dp_run(make, shape, method, padded=False, views=views)
    padded = _dp_run(make, shape, method, padded=True, views=views)
    for a, b in zip(unpadded, padded, strict=True):
        if exact:
            assert torch.equal(a, b), (method, (a - b).abs().max().item())
        else:
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("method", FAST_METHODS)
@pytest.mark.parametrize("model", EXACT_MODELS)
def test_padded_step_equals_unpadded_step_bit_for_bit(model, method, views):
    _assert_padded_matches(*EXACT_MODELS[model], method, views)


@pytest.mark.parametrize("method", ["fast:auto+loop", "fast:ghost+grouped", "fast:materialize+unfold"])
@pytest.mark.parametrize("model", LINEAR_MODELS)
def test_padded_step_matches_to_rounding_with_linear_layers(model, method):
    _assert_padded_matches(*LINEAR_MODELS[model], method, exact=False)


def test_the_rounding_difference_is_the_matrix_product():
    """Why models with Linear layers are not bit for bit: the same rows through one Linear layer, alone and
    padded with zero rows, give different input gradients (MKL's row blocks), convolutions do not."""
    torch.manual_seed(0)
    linear, conv = nn.Linear(16, 3).double(), nn.Conv2d(3, 4, 3, padding=1).double()
    for layer, shape in ((linear, (16,)), (conv, (3, 6, 6))):
        differs = False
        for n in range(1, 8):
            x = torch.randn(n, *shape, dtype=torch.float64, requires_grad=True)
            padded = torch.cat([x.detach(), torch.zeros(8 - n, *shape, dtype=torch.float64)]).requires_grad_()
            g = torch.randn_like(layer(x))
            (gx,) = torch.autograd.grad(layer(x), x, g)
            (gp,) = torch.autograd.grad(
                layer(padded), padded, torch.cat([g, torch.zeros(8 - n, *g.shape[1:])])
            )
            differs |= not torch.equal(gx, gp[:n])
        if layer is conv:
            assert not differs
    # (Linear: MKL-dependent; recorded, not asserted, so another BLAS that happens to agree does not fail.)


@pytest.mark.parametrize("method", ["hooks", "functorch", "ew", "ghost"])
def test_opacus_modes_refuse_padded_batches(method):
    """Opacus' mean reduction multiplies each captured output gradient by the batch's row count, so padding
    would change every per-sample gradient's rounding: no bit-exact padded step, refused with the reason."""
    model = tiny_net().double()
    data = TensorDataset(torch.randn(64, 3, 6, 6, dtype=torch.float64), torch.randint(0, 3, (64,)))
    setup = make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.1), data, method=method, logical_batch_size=16,
        max_grad_norm=1.0, epochs=1, accountant="rdp", delta=1e-5, target_epsilon=None, noise_multiplier=1.0,
    )  # fmt: skip
    x, y, weight = pad_batch(data.tensors[0][:4], data.tensors[1][:4], PHYSICAL)
    with pytest.raises(ValueError, match="row count"):
        setup.backward(setup.model(x), y, 1, row_weight=weight)
    with pytest.raises(ValueError, match="clipping module"):
        setup.fixed_shape_batches(PHYSICAL)


def test_batches_are_opacus_batches():
    """Same generator state: the same examples in the same physical parts, with the same skip signals."""
    n = 300
    data = TensorDataset(torch.arange(n, dtype=torch.float64).view(n, 1), torch.arange(n))

    class Recorder:
        def __init__(self):
            self.signals = []

        def signal_skip_step(self, do_skip):
            self.signals.append(do_skip)

    ours, theirs = Recorder(), Recorder()
    model = nn.Linear(1, 2)
    setup = make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.1), data, method="fast", logical_batch_size=20,
        max_grad_norm=1.0, epochs=1, accountant="rdp", delta=1e-5, target_epsilon=None, noise_multiplier=1.0,
        streams=random_streams(3, "batches", secure=False),
    )  # fmt: skip
    state = setup.loader.batch_sampler.generator.get_state()
    fixed = [(b.y.tolist(), b.last) for b in FixedShapePoissonBatches.from_loader(setup.loader, 7, ours)]
    setup.loader.batch_sampler.generator.set_state(state)
    expected = []
    with BatchMemoryManager(
        data_loader=setup.loader, max_physical_batch_size=7, optimizer=setup.optimizer
    ) as bm:
        bm.batch_sampler.optimizer = theirs  # record Opacus' signals instead of acting on them
        for _, y in bm:
            expected.append((y.tolist(), not theirs.signals[-1]))
    assert len(fixed) == len(expected) > len(setup.loader)
    assert fixed == expected
    assert ours.signals == theirs.signals
    assert all(len(y) <= 7 for y, _ in fixed)


def test_split_sizes_are_array_split():
    for n in range(0, 60):
        for physical in (1, 4, 7, 16):
            parts = np.array_split(np.arange(n), math.ceil(n / physical)) if n else []
            assert split_sizes(n, physical) == [len(p) for p in parts]


def test_selected_first_is_the_mask_order():
    mask = poisson_mask(1000, 0.3, torch.Generator().manual_seed(0))
    order = selected_first(mask)
    n = int(mask.sum())
    assert torch.equal(order[:n], mask.nonzero().view(-1))
    assert sorted(order.tolist()) == list(range(1000))


def test_batch_sizes_are_binomial_and_independent():
    """Sizes ~ Binomial(N, q) (chi-square), consecutive sizes uncorrelated, and two examples' inclusions
    independent, from one seeded stream."""
    n, q, draws = 200, 0.05, 4000
    g = torch.Generator().manual_seed(1)
    masks = torch.stack([poisson_mask(n, q, g) for _ in range(draws)])
    sizes = masks.sum(1).numpy()
    observed = np.bincount(sizes, minlength=n + 1)
    expected = stats.binom.pmf(np.arange(n + 1), n, q) * draws
    # Pool the tails so every cell expects >= 5.
    keep = expected >= 5
    lo, hi = np.argmax(keep), len(keep) - np.argmax(keep[::-1]) - 1
    obs = np.concatenate([[observed[:lo].sum()], observed[lo : hi + 1], [observed[hi + 1 :].sum()]])
    exp = np.concatenate([[expected[:lo].sum()], expected[lo : hi + 1], [expected[hi + 1 :].sum()]])
    exp *= obs.sum() / exp.sum()
    assert stats.chisquare(obs, exp).pvalue > 1e-3
    assert abs(sizes.mean() - n * q) < 4 * math.sqrt(n * q * (1 - q) / draws)
    lag = np.corrcoef(sizes[:-1], sizes[1:])[0, 1]
    assert abs(lag) < 4 / math.sqrt(draws)
    inclusion = masks.double().mean(0)
    assert (inclusion - q).abs().max() < 5 * math.sqrt(q * (1 - q) / draws)
    both = (masks[:, 0] & masks[:, 1]).double().mean().item()
    assert abs(both - q * q) < 5 * math.sqrt(q * q / draws)


def test_pad_rows_keeps_values_and_memory_format():
    x = torch.randn(3, 2, 4, 4).contiguous(memory_format=torch.channels_last)
    padded = pad_rows(x, 5)
    assert padded.shape == (5, 2, 4, 4) and torch.equal(padded[:3], x) and not padded[3:].any()
    assert padded.is_contiguous(memory_format=torch.channels_last)
    inputs, targets, weight = pad_batch(torch.ones(4, 1), torch.ones(4, dtype=torch.long), 3, views=2)
    assert weight.tolist() == [1, 1, 1, 1, 0, 0] and targets.tolist() == [1, 1, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="does not fit"):
        pad_rows(x, 2)


def test_drop_in_for_batch_memory_manager():
    """``with ... as batches: for x, y in batches`` works as with BatchMemoryManager; the empty logical batch
    is an empty pair (the trainer's noise-only step)."""
    data = TensorDataset(torch.arange(10.0).view(10, 1), torch.arange(10))
    batches = FixedShapePoissonBatches(
        data.tensors, 0.05, steps=50, physical=4, generator=torch.Generator().manual_seed(0)
    )
    with batches as managed:
        sizes = [len(y) for x, y in managed]
    assert 0 in sizes and max(sizes) <= 4 and len(batches) == 50


def test_from_loader_refuses_a_non_poisson_loader():
    from torch.utils.data import DataLoader

    data = TensorDataset(torch.zeros(8, 1), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="Poisson"):
        FixedShapePoissonBatches.from_loader(DataLoader(data, batch_size=4), physical=4)
