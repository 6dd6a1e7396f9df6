"""Per-run autotune of the per-sample method: every candidate computes the same DP step as the per-example
loop, the fastest is chosen and recorded, the global random streams are untouched, and a resumed run keeps
the choice."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from smoothnet.privacy import method_select
from smoothnet.privacy.method_select import CANDIDATES, MethodChoice, autotune, candidates, training_step
from smoothnet.privacy.reference import per_example_gradients
from smoothnet.training.config import TrainConfig
from smoothnet.training.trainer import RunPaths, train
from tests.support.learnable import prepare_learnable

torch.set_num_threads(1)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2), nn.Tanh(), nn.Flatten(), nn.Linear(6 * 3 * 3, 5),
    ).double()  # fmt: skip


@pytest.mark.parametrize("method", sorted(set(CANDIDATES["cpu"]) | set(CANDIDATES["cuda"])))
def test_every_candidate_takes_the_per_example_loops_dp_step(method):
    # Without noise, one step from the same weights must move them by -lr * (clipped sum / batch). The
    # step casts logits to fp32 as the trainer does, hence 1e-6 relative to the update.
    torch.manual_seed(1)
    batch, c, lr = 6, 3.7, 0.1
    x, y = torch.randn(batch, 3, 16, 16, dtype=torch.float64), torch.randint(0, 5, (batch,))
    model = _net()
    grads = per_example_gradients(model, x, y)
    norms = torch.cat([g.flatten(1) for g in grads.values()], 1).norm(dim=1)
    assert (norms > c).any() and (norms < c).any()  # both sides of the clipping bound are exercised
    clip = (c / (norms + 1e-6)).clamp(max=1.0)
    update = {n: -lr * torch.tensordot(clip, grads[n], dims=1) / batch for n in grads}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    training_step(model, method, batch, c, noise_multiplier=0.0, lr=lr)(x, y)
    for name, p in model.named_parameters():
        error = (p.detach() - before[name] - update[name]).norm() / update[name].norm()
        assert error < 1e-6, (name, error.item())


def test_autotune_chooses_the_fastest_and_records_every_timing(monkeypatch):
    # A fake clock: each method's step advances it by that method's cost; "slow" is dropped after its
    # warm-up, "broken" fails and is recorded, not chosen.
    cost = {"fast:auto": 3.0, "fast:auto+grouped": 1.0, "hooks": 2.0, "slow": 100.0}
    clock = [0.0]

    def fake_step(model, method, batch, max_grad_norm):
        if method == "broken":
            raise RuntimeError("no rule for this layer")

        def step(x, y):
            clock[0] += cost[method]

        return step

    monkeypatch.setattr(method_select, "training_step", fake_step)
    methods = ("fast:auto", "slow", "broken", "fast:auto+grouped", "hooks")
    choice = autotune(_net(), (3, 16, 16), 4, torch.device("cpu"), methods, timer=lambda: clock[0])
    assert choice.method == "fast:auto+grouped" and choice.source == "autotune"
    assert choice.timings_s == {"fast:auto": 3.0, "fast:auto+grouped": 1.0, "hooks": 2.0}
    assert set(choice.dropped) == {"slow"} and "no rule" in choice.failed["broken"]
    assert MethodChoice.from_record(choice.to_record()) == choice
    # Also the methods dropped LATER: once a fast one has warmed up, an earlier slow one is dropped.
    cost["fast:auto"] = 10.0
    later = autotune(
        _net(), (3, 16, 16), 4, torch.device("cpu"), ("fast:auto", "hooks"), timer=lambda: clock[0]
    )
    assert later.method == "hooks" and set(later.dropped) == {"fast:auto"}


def test_real_autotune_leaves_model_and_random_streams_untouched():
    model = _net().float()
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    choice = autotune(model, (3, 16, 16), 8, torch.device("cpu"), candidates("cpu"), rounds=1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert choice.method in CANDIDATES["cpu"] and choice.method in choice.timings_s
    assert set(choice.timings_s) | set(choice.dropped) | set(choice.failed) == set(CANDIDATES["cpu"])


def test_autotune_skips_methods_whose_per_example_gradients_would_not_fit():
    model = _net().float()  # 617 parameters * 8 examples * 4 bytes = 19.7 kB of per-example gradients
    choice = autotune(model, (3, 16, 16), 8, torch.device("cpu"), ("fast:auto", "fast:materialize", "hooks"),
                      rounds=1, max_materialized_bytes=10_000)  # fmt: skip
    assert choice.method == "fast:auto" and set(choice.timings_s) == {"fast:auto"}
    assert set(choice.failed) == {"fast:materialize", "hooks"} and "GiB" in choice.failed["hooks"]


def test_candidates_leave_out_opacus_where_only_our_module_is_correct():
    assert "hooks" in candidates("cpu")
    assert "hooks" not in candidates("cpu", ours_only=True)
    assert "hooks" not in candidates("cuda", channels_last=True)


def test_a_resumed_run_keeps_its_autotuned_choice_and_records_it(tmp_path, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = prepare_learnable(tmp_path / "data")
    calls = []

    def fake_autotune(module, shape, batch, device, methods, max_grad_norm):
        calls.append((shape, batch, methods))
        return MethodChoice(
            "fast:auto+grouped", "autotune", {"fast:auto+grouped": 0.1}, batch=batch, device="cpu"
        )

    monkeypatch.setattr(method_select, "autotune", fake_autotune)
    params = dict(
        run_id="t", dataset="cifar10", model="smoothnet", study="main", model_options={"width": 0.5, "depth": 1.0},
        target_epsilon=8.0, delta=1e-3, epochs=2, logical_batch_size=64, physical_batch_size=32, lr=1.0,
        momentum=0.0, weight_decay=0.0, lr_schedule="constant", grad_sample_mode="auto", channels_last=False,
    )  # fmt: skip
    config = TrainConfig.from_params(params)
    paths = RunPaths(data, tmp_path / "run", tmp_path / "ckpt")

    class Killed(Exception):
        pass

    def kill(epoch):
        raise Killed

    with pytest.raises(Killed):
        train(config, paths, resolved_params=params, progress=False, on_epoch_end=kill)
    record = train(config, paths, resolved_params=params, progress=False)
    assert len(calls) == 1 and calls[0][:2] == ((3, 32, 32), 32)  # timed once, at the run's own batch
    assert record["privacy"]["grad_sample_mode"] == "fast:auto+grouped"
    kept = record["privacy"]["method_choice"]
    assert kept["method"] == "fast:auto+grouped" and kept["source"] == "resumed"
    assert kept["timings_s"] == {"fast:auto+grouped": 0.1}
    # Switched off: the measured table, recorded as such, no timing.
    off = TrainConfig.from_params({**params, "run_id": "u", "autotune_method": False, "epochs": 1})
    record = train(
        off, RunPaths(data, tmp_path / "r2", tmp_path / "c2"), resolved_params=params, progress=False
    )
    assert len(calls) == 1 and record["privacy"]["method_choice"]["source"] == "table"
