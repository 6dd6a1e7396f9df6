"""The benchmark scripts: every method runs a real step, and the compute budget reads their output right."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


throughput = _load("throughput")
compute_budget = _load("compute_budget")
cuda_correctness = _load("cuda_correctness")


@pytest.mark.parametrize(
    "method", ["nonprivate", "hooks", "ours_auto", "ours_materialize+unfold", "ours_ghost+grouped"]
)
@pytest.mark.parametrize("amp", [None, "bf16"])
def test_every_benchmark_method_takes_a_step(method, amp):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)
    )
    before = [p.detach().clone() for p in model.parameters()]
    step = throughput.make_step(model, method, batch=4, amp=amp)
    step(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,)))
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_compute_budget_reads_the_trainers_method(tmp_path, capsys):
    rows = [
        {"model": "resnet9", "method": "hooks", "image_size": 32, "amp": None, "images_per_s": 100.0},
        {"model": "resnet9", "method": "ours_auto", "image_size": 32, "amp": None, "images_per_s": 900.0},
        {"model": "resnet9", "method": "nonprivate", "image_size": 32, "amp": None, "images_per_s": 400.0},
        {"model": "resnet9", "method": "hooks_cl", "image_size": 32, "amp": None, "images_per_s": 5000.0},
    ]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"machine": {}, "rows": rows}))
    # On CUDA the trainer runs ResNet-9 with Opacus' hooks (method_select): its rate, not the faster rows.
    assert compute_budget.load_rates([str(path)], "trainer", None, [], "cuda") == {
        "resnet9": 100.0,
        "resnet9:nonprivate": 400.0,
    }
    # "best" never counts Opacus channels-last rows (wrong per-sample gradients).
    assert compute_budget.load_rates([str(path)], "best", None, [])["resnet9"] == 900.0
    (tmp_path / "record.json").write_text(json.dumps({"privacy": {}}))
    assert compute_budget.load_rates([str(tmp_path / "record.json")], "best", None, []) == {}
    assert "not a benchmarks/throughput.py result" in capsys.readouterr().err


def test_compute_budget_counts_views_and_training_sets():
    assert compute_budget.run_examples({"dataset": "cifar10", "epochs": 2}) == 80_000
    full = {"dataset": "cifar10", "epochs": 1, "train_on_validation": True, "augmentation_multiplicity": 16}
    assert compute_budget.run_examples(full) == 800_000
    assert compute_budget.benchmark_model({"model": "smoothnet", "model_options": {}}) == "smoothnet_w80d50"
    small = {"model": "smoothnet", "model_options": {"width": 1.0, "depth": 1.0}}
    assert compute_budget.benchmark_model(small) == "smoothnet"


def test_the_gpu_correctness_check_runs_and_passes_on_cpu(tmp_path):
    """The script a GPU session runs (benchmarks/cuda_correctness.py), exercised here on the CPU."""
    out = tmp_path / "check.json"
    assert cuda_correctness.main(["--device", "cpu", "--models", "tramer_boneh_cnn", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["method"] for r in rows} >= {"materialize+unfold", "auto+unfold bf16 channels-last"}
    assert all(r["ok"] for r in rows)


def test_autotune_table_times_every_candidate_beside_the_non_private_step():
    import argparse

    torch.set_num_threads(1)
    rows = throughput.autotune_case(
        "tiny",
        "smoothnet",
        {"width": 0.5, "depth": 1.0},
        4,
        argparse.Namespace(repeats=1),
        torch.device("cpu"),
    )
    methods = {r["method"] for r in rows}
    assert "nonprivate" in methods and "hooks" in methods
    assert sum(r["autotune_choice"] for r in rows) == 1 and sum(r["table_choice"] for r in rows) == 1
    assert min(r["vs_fastest_dp"] for r in rows if r["method"] != "nonprivate") == 1.0
    assert all(r["step_s"] > 0 and r["load_before"] for r in rows)
    assert "autotune" in throughput.autotune_markdown(rows)


profile_step = _load("profile_step")


def test_the_step_profile_times_real_clipped_steps(capsys):
    """Every profiled step computes gradients, the clipped ones bounded by C (a no-op step would profile nothing)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    x, y = torch.randn(5, 3, 8, 8), torch.randint(0, 3, (5,))
    clip = 1e-3
    grads = {}
    for label, step in profile_step.steps(model, x, y, ["auto", "ghost", "materialize+unfold"], clip):
        step()
        grads[label] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert set(grads) == {"non-private", "fast:auto", "fast:ghost", "fast:materialize+unfold"}
    for label in ("fast:auto", "fast:ghost", "fast:materialize+unfold"):
        assert grads[label].norm() <= len(x) * clip * (1 + 1e-5), label  # a sum of clipped contributions
        torch.testing.assert_close(grads[label], grads["fast:auto"])
    assert grads["non-private"].norm() > 10 * grads["fast:auto"].norm()

    assert (
        profile_step.main(["--model", "tramer_boneh_cnn", "--batch", "2", "--methods", "auto", "--rows", "2"])
        == 0
    )
    table = capsys.readouterr().out
    assert "| non-private |" in table and "| fast:auto |" in table
