"""The literature and thesis-study tables and the published-vs-reproduced figure, from fixture records."""

from __future__ import annotations

import statistics

import pytest

from smoothnet.report.build import render_report
from tests.test_report import PUBLISHED, _table, make_record, write_runs

THESIS_PARAMS = dict(
    logical_batch_size=128, lr=0.1, momentum=0.0, lr_schedule="step", lr_step_size=1, lr_gamma=0.7
)
BN = {"input_norm": "dp_bn", "bn_noise_multiplier": 8.0, "bn_mean_clip": 1.0, "bn_sq_mean_clip": 1.25}
LINEAR_BN = (0.66, 0.67, 0.665)


def _records() -> dict[str, dict]:
    records = {}
    for seed, acc in enumerate(LINEAR_BN):
        rid = f"cifar10-scatternet_linear-bn-eps3-s{seed}"
        records[rid] = make_record(
            rid,
            model="scatternet_linear",
            options=BN,
            study="literature",
            target_epsilon=3.0,
            seed=seed,
            test_at_best=acc,
            num_parameters=155_530,
        )
    rid = "cifar10-scatternet_linear-eps3-s0"  # the GroupNorm run: another recipe, its own row
    records[rid] = make_record(
        rid,
        model="scatternet_linear",
        study="literature",
        target_epsilon=3.0,
        test_at_best=0.639,
        num_parameters=155_530,
    )
    thesis = {
        "dense-w10d20": (
            {"connection": "dense", "width": 1.0, "depth": 2.0, "norm": "none", "pool": "max"},
            0.54,
        ),
        "plain-w10d10": (
            {"connection": "plain", "width": 1.0, "depth": 1.0, "norm": "none", "pool": "max"},
            0.49,
        ),
        "dense-w10d10": (
            {"connection": "dense", "width": 1.0, "depth": 1.0, "norm": "none", "pool": "max"},
            0.47,
        ),
        "plain-relu-w10d10": (  # varies the activation, which the thesis does not state
            {
                "connection": "plain",
                "width": 1.0,
                "depth": 1.0,
                "norm": "none",
                "pool": "max",
                "activation": "relu",
            },
            0.60,
        ),
    }
    # the schedule of DPBenchmark's committed code (StepLR every 10 epochs), the plain architecture
    thesis["plain-step10-w10d10"] = (thesis["plain-w10d10"][0], 0.45)
    for name, (opts, acc) in thesis.items():
        for seed in range(2):
            rid = f"cifar10-thesis-{name}-eps10-s{seed}"
            record = make_record(
                rid,
                model="smoothnet",
                options=opts,
                study="ablation",
                target_epsilon=10.0,
                seed=seed,
                test_at_best=acc - 0.01 * seed,
                num_parameters=100_000,
            )
            record["params"].update(THESIS_PARAMS, max_grad_norm=9.5)
            if "step10" in name:
                record["params"]["lr_step_size"] = 10
            records[rid] = record
    return records


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    records = _records()
    write_runs(root / "runs", records)
    render_report(root / "runs", PUBLISHED, root / "paper", root=root)
    return root, records


def test_scatternet_row_uses_only_the_published_recipe(rendered):
    root, _ = rendered
    rows = {r[0]: r for r in _table(root, "literature_baselines")}
    row = rows[
        "Tramer & Boneh (ScatterNet + linear) [scatternet_linear; bn_mean_clip=1, bn_sq_mean_clip=1.25, input_norm=dp_bn]"
    ]
    mean = statistics.mean(LINEAR_BN) * 100
    assert row[4] == f"{mean:.2f} ± {statistics.stdev(LINEAR_BN) * 100:.2f} (n=3)"
    assert row[6] == f"{mean - 67.0:+.2f}"
    assert rows["scatternet_linear"][4] == "63.90 (n=1)"  # GroupNorm: shown, not averaged in


def test_thesis_table_compares_best_validation_and_ordering(rendered):
    root, records = rendered
    rows = {r[0]: r for r in _table(root, "thesis_study")}
    dense = rows["W10D20 Dense Model MXP"]
    best_val = [
        100 * records[f"cifar10-thesis-dense-w10d20-eps10-s{s}"]["results"]["best_val_accuracy"]
        for s in range(2)
    ]
    assert dense[4] == f"{statistics.mean(best_val):.2f} ± {statistics.stdev(best_val):.2f} (n=2)"
    assert dense[5] == "55.5" and dense[7] == ("yes" if abs(statistics.mean(best_val) - 55.5) <= 2 else "no")
    assert set(rows) == {
        "W10D20 Dense Model MXP",
        "W10D10 Base Model MXP",
        "W10D10 Dense Model MXP",
        "W10D10 Base Model MXP (variant: activation=relu)",
        "W10D10 Base Model MXP (variant: lr_step_size=10)",
    }
    relu = rows["W10D10 Base Model MXP (variant: activation=relu)"]
    assert "activation=relu" in relu[1] and relu[5] == "49.3" and relu[6].startswith("+")
    # the schedule variant is its own row (not averaged with the plain runs of the study's schedule)
    step10 = rows["W10D10 Base Model MXP (variant: lr_step_size=10)"]
    assert step10[4].startswith("45.50") and "(n=2)" in step10[4] and step10[5] == "49.3"
    assert rows["W10D10 Base Model MXP"][4].startswith("49.50")
    text = (root / "paper" / "tables" / "thesis_study.md").read_text()
    # thesis: dense D20 55.5 > plain 49.3 > dense D10 48.1; fixture: 54/49/47 (minus seed spread) -> holds;
    # the ReLU variant (60, above all) and the schedule variant would break the ordering were they counted
    assert "Ordering holds" in text and "3 of 3 pairs" in text
    assert "'(variant: ...)' row" in text


def test_thesis_recipe_runs_are_not_averaged_into_the_ablation_grid(rendered):
    """Runs of the thesis study's recipe are compared in the thesis table only: the ablation grid's cells hold
    one recipe each (here no grid runs exist, so there is no ablation table at all)."""
    root, _ = rendered
    assert not (root / "paper" / "tables" / "ablation.md").exists()


def test_figure_is_written(rendered):
    root, _ = rendered
    assert (root / "paper" / "figures" / "published_vs_reproduced.png").stat().st_size > 10_000
    assert (root / "paper" / "figures" / "published_vs_reproduced.pdf").exists()


def test_runs_without_a_validation_split_are_said_to_report_the_final_epoch(tmp_path, rendered):
    note = "have no validation split: their best-validation epoch is the final epoch"
    root, _ = rendered
    assert note not in (root / "paper" / "tables" / "literature_baselines.md").read_text()
    records = _records()
    for rid, record in records.items():
        if "scatternet" in rid:  # trained on all 50k images, as the sources do
            record["results"]["best_val_accuracy"] = None
    write_runs(tmp_path / "runs", records)
    render_report(tmp_path / "runs", PUBLISHED, tmp_path / "paper", root=tmp_path)
    assert note in (tmp_path / "paper" / "tables" / "literature_baselines.md").read_text()
