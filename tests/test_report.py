"""The report: figures and tables from run records, beside paper/published.yaml.

Fixture records are built here (valid under smoothnet.records' schema): several models, budgets and seeds,
with known accuracies, and some runs deliberately absent. The checks: every file is produced; the table
numbers equal the records'; a missing run shows as missing; two renders are byte-identical; quick and
real records are never mixed; the manifest lists every record hash and output sha256.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import statistics
from pathlib import Path

import pytest

from smoothnet.io import sha256_file
from smoothnet.records import record_hash, validate_record, write_record
from smoothnet.report.build import render_report
from smoothnet.report.published import PublishedError, load_published
from smoothnet.report.runs import ReportInputError, ReportOptions
from tests.support.records import environment, performance

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "paper" / "published.yaml"
THESIS_TABLE = ROOT.parent / "shared" / "reference" / "thesis_study_table.md"


def make_record(
    run_id: str,
    *,
    model: str = "smoothnet_w80d50",
    options: dict | None = None,
    dataset: str = "cifar10",
    private: bool = True,
    target_epsilon: float | None = 7.0,
    seed: int = 0,
    study: str = "main",
    profile: str = "fixture",
    test_at_best: float = 0.70,
    epochs: int = 3,
    num_parameters: int = 3_391_853,
) -> dict:
    """A complete, valid run record with a synthetic (but internally consistent) history."""
    eps = target_epsilon if private else None
    history = []
    for epoch in range(1, epochs + 1):
        frac = epoch / epochs
        history.append(
            {
                "epoch": epoch,
                "train_loss": 2.3 - 1.0 * frac,
                "train_accuracy": 0.1 + (test_at_best - 0.05) * frac,
                "val_accuracy": 0.1 + (test_at_best + 0.01 - 0.1) * frac,
                "test_accuracy": 0.1 + (test_at_best - 0.1) * frac,
                "epsilon": eps * frac if eps is not None else None,
                "lr": 0.002,
            }
        )
    record = {
        "schema_version": 1,
        "run_id": run_id,
        "profile": profile,
        "stage": f"train@{run_id}",
        "params": {
            "study": study,
            "dataset": dataset,
            "model": model,
            "seed": seed,
            "target_epsilon": target_epsilon,
            "private": private,
            "model_options": options or {},
        },
        "model": {
            "name": model,
            "options": options or {},
            "num_parameters": num_parameters,
            "has_batchnorm": False,
        },
        "dataset": {
            "name": dataset,
            "fingerprint": {"train": "f" * 64, "test": "e" * 64},
            "manifest_sha256": "d" * 64,
            "n_train": 40000,
            "n_val": 10000,
            "n_test": 10000,
        },
        "privacy": {
            "private": private,
            "target_epsilon": target_epsilon if private else None,
            "delta": 1e-5 if private else None,
            "noise_multiplier": 1.0 if private else None,
            "max_grad_norm": 1.0 if private else None,
            "sample_rate": 256 / 40000 if private else None,
            "steps": 157 * epochs,
            "planned_steps": 157 * epochs,
            "sampling": "poisson",
            "accountant": "rdp" if private else None,
            "epsilon": (eps - 0.004) if eps is not None else None,
            "epsilon_by_accountant": {"rdp": eps - 0.004, "prv": eps * 0.92} if eps else {},
            "grad_sample_mode": "hooks" if private else None,
        },
        "training": {
            "epochs": epochs,
            "epochs_completed": epochs,
            "logical_batch_size": 256,
            "physical_batch_size": 64,
            "seed": seed,
        },
        "results": {
            "best_val_accuracy": test_at_best + 0.01,
            "final_val_accuracy": test_at_best,
            "test_accuracy_at_best_val": test_at_best,
            "final_test_accuracy": test_at_best - 0.005,
            "history": history,
        },
        "performance": performance(),
        "environment": environment(),
    }
    validate_record(record)
    return record


# (run_id, kwargs): SmoothNet at eps 1/3/7/10 (eps 5 deliberately missing) with 3 seeds at 7, non-private;
# two baselines on CIFAR-10 (ResNet-18's non-DP run missing) and SmoothNet on ImageNette; ablations;
# a literature baseline; improved-recipe runs.
ACC = {
    ("smoothnet_w80d50", "cifar10", 7.0, 0): 0.731,
    ("smoothnet_w80d50", "cifar10", 7.0, 1): 0.735,
    ("smoothnet_w80d50", "cifar10", 7.0, 2): 0.742,
}


def fixture_runs(profile: str = "fixture") -> dict[str, dict]:
    """The fixture set: run_id -> record."""
    specs = []
    for seed in range(3):
        specs.append(
            (
                f"cifar10-smoothnet_w80d50-eps7-s{seed}",
                dict(seed=seed, test_at_best=ACC[("smoothnet_w80d50", "cifar10", 7.0, seed)]),
            )
        )
    specs += [
        ("cifar10-smoothnet_w80d50-eps1-s0", dict(target_epsilon=1.0, test_at_best=0.60)),
        ("cifar10-smoothnet_w80d50-eps3-s0", dict(target_epsilon=3.0, test_at_best=0.681)),
        ("cifar10-smoothnet_w80d50-eps10-s0", dict(target_epsilon=10.0, test_at_best=0.744)),
        ("cifar10-smoothnet_w80d50-nodp-s0", dict(private=False, target_epsilon=None, test_at_best=0.83)),
        ("cifar10-resnet18-eps7-s0", dict(model="resnet18", num_parameters=11_173_962, test_at_best=0.52)),
        (
            "cifar10-resnet18-eps7-s1",
            dict(model="resnet18", num_parameters=11_173_962, seed=1, test_at_best=0.56),
        ),
        (
            "cifar10-densenet121-eps7-s0",
            dict(model="densenet121", num_parameters=6_964_106, test_at_best=0.61),
        ),
        (
            "cifar10-densenet121-nodp-s0",
            dict(
                model="densenet121",
                num_parameters=6_964_106,
                private=False,
                target_epsilon=None,
                test_at_best=0.74,
            ),
        ),
        ("imagenette-smoothnet_w80d50-eps7-s0", dict(dataset="imagenette", test_at_best=0.672)),
        (
            "literature-tramer_boneh_cnn-eps3-s0",
            dict(
                model="tramer_boneh_cnn",
                study="literature",
                target_epsilon=3.0,
                num_parameters=551_466,
                test_at_best=0.575,
            ),
        ),
        ("improved-smoothnet_w80d50-eps7-s0", dict(study="improved", test_at_best=0.78)),
        (
            "improved-wrn16_4-eps7-s0",
            dict(model="wrn16_4", study="improved", num_parameters=2_748_890, test_at_best=0.80),
        ),
        (
            "improved-wrn16_4-eps8-s0",
            dict(
                model="wrn16_4",
                study="improved",
                target_epsilon=8.0,
                num_parameters=2_748_890,
                test_at_best=0.795,
            ),
        ),
    ]
    for conn in ("dense", "residual"):
        for width in (1.0, 8.0):
            for depth in (1.0, 5.0):
                if conn == "residual" and width == 8.0 and depth == 5.0:
                    continue  # a missing ablation cell
                acc = 0.45 + 0.01 * width + (0.02 if conn == "dense" else 0.0)
                opts = {"connection": conn, "width": width, "depth": depth}
                tag = f"{conn}-w{width:g}d{depth:g}"
                specs.append(
                    (
                        f"ablation-{tag}-eps7-s0",
                        dict(
                            model="smoothnet",
                            options=opts,
                            study="ablation",
                            test_at_best=acc,
                            num_parameters=100_000,
                        ),
                    )
                )
                specs.append(
                    (
                        f"ablation-{tag}-nodp-s0",
                        dict(
                            model="smoothnet",
                            options=opts,
                            study="ablation",
                            private=False,
                            target_epsilon=None,
                            test_at_best=acc + 0.2,
                            num_parameters=100_000,
                        ),
                    )
                )
    for norm, pool in (("group", "avg"), ("instance", "max"), ("instance", "avg")):
        opts = {"connection": "dense", "width": 1.0, "depth": 1.0, "norm": norm, "pool": pool}
        specs.append(
            (
                f"ablation-{norm}-{pool}-eps7-s0",
                dict(
                    model="smoothnet",
                    options=opts,
                    study="ablation",
                    test_at_best=0.40,
                    num_parameters=100_000,
                ),
            )
        )
    return {run_id: make_record(run_id, profile=profile, **kw) for run_id, kw in specs}


def write_runs(folder: Path, records: dict[str, dict]) -> None:
    for run_id, record in records.items():
        write_record(folder / run_id / "record.json", record)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One render of the fixture set (shared by the read-only checks)."""
    root = tmp_path_factory.mktemp("repo")
    records = fixture_runs()
    write_runs(root / "runs", records)
    result = render_report(root / "runs", PUBLISHED, root / "paper", root=root)
    return root, records, result


def _table(root: Path, name: str) -> list[list[str]]:
    lines = (root / "paper" / "tables" / f"{name}.md").read_text().splitlines()
    rows = [line for line in lines if line.startswith("| ")]
    return [[c.strip() for c in row.strip("|").split(" | ")] for row in rows[1:]]


FIGURES = ["privacy_utility_cifar10", "dp_vs_nondp", "ablation_width_depth", "ablation_norm_pool"]
FIGURES += [f"training_curves_{s}" for s in ("main", "ablation", "literature", "improved")]
TABLES = ["privacy_utility_cifar10", "architectures_eps7", "ablation", "literature_baselines"]


@pytest.mark.parametrize("stem", FIGURES)
def test_every_figure_is_produced_and_shown_in_the_readme(rendered, stem):
    paper = rendered[0] / "paper"
    for ext in ("pdf", "png"):
        path = paper / "figures" / f"{stem}.{ext}"
        assert path.stat().st_size > 1000, path
    assert f"(figures/{stem}.png)" in (paper / "README.md").read_text()


@pytest.mark.parametrize("name", TABLES)
def test_every_table_is_produced_in_markdown_and_ascii_latex(rendered, name):
    tables = rendered[0] / "paper" / "tables"
    assert (tables / f"{name}.md").exists() and (tables / f"{name}.tex").exists()
    latex = (tables / f"{name}.tex").read_text()
    assert latex.isascii(), [c for c in latex if not c.isascii()]  # every symbol mapped to a LaTeX macro


def test_figure_formats_and_embedded_tables(rendered):
    paper = rendered[0] / "paper"
    assert (paper / "figures" / "dp_vs_nondp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (paper / "figures" / "dp_vs_nondp.pdf").read_bytes()[:5] == b"%PDF-"
    # the Markdown tables are embedded
    assert "| SmoothNet W80D50 | CIFAR-10 |" in (paper / "README.md").read_text()
    tex = (paper / "tables" / "architectures_eps7.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "$\\pm$" in tex


def test_table_numbers_equal_the_records(rendered):
    root, records, _ = rendered
    rows = {(r[0], r[1]): r for r in _table(root, "architectures_eps7")}
    values = [100 * ACC[("smoothnet_w80d50", "cifar10", 7.0, s)] for s in range(3)]
    mean, std = statistics.mean(values), statistics.stdev(values)
    smooth = rows[("SmoothNet W80D50", "CIFAR-10")]
    assert smooth[2] == "3,391,853"
    assert smooth[3] == f"{mean:.2f} ± {std:.2f} (n=3)"
    assert smooth[4] == "83.00 (n=1)"
    assert smooth[5] == f"{83.0 - mean:.2f}"
    assert smooth[6] == "73.5"  # published, from published.yaml
    assert smooth[7] == f"{mean - 73.5:+.2f}"
    resnet = rows[("ResNet-18", "CIFAR-10")]
    assert resnet[3] == f"{statistics.mean([52.0, 56.0]):.2f} ± {statistics.stdev([52.0, 56.0]):.2f} (n=2)"
    assert rows[("SmoothNet W80D50", "ImageNette")][3] == "67.20 (n=1)"
    assert rows[("SmoothNet W80D50", "ImageNette")][6].startswith("69.2")

    curve = {r[0]: r for r in _table(root, "privacy_utility_cifar10")}
    assert curve["1"][1] == "62.6" and curve["1"][2] == "60.00 (n=1)" and curve["1"][4] == "-2.60"
    assert curve["7"][3] == "6.996"  # epsilon spent: mean of the records' RDP epsilon
    assert curve["∞ (non-private)"][2] == "83.00 (n=1)"
    assert curve["7"][5] == "77.50 (n=1)"  # improved recipe: final test accuracy (report.improved_metric)
    lit = {r[0]: r for r in _table(root, "literature_baselines")}
    assert lit["Tramer & Boneh (end-to-end CNN) [tramer_boneh_cnn]"][4] == "57.50 (n=1)"
    assert lit["Tramer & Boneh (end-to-end CNN) [tramer_boneh_cnn]"][2] == "59.2"
    # De et al.'s WRN-16-4 at eps 8 comes from the improved recipe (final test accuracy), marked as such
    assert lit["De et al. (WRN-16-4) [wrn16_4]"][4] == "79.00 (n=1) ‡"

    ablation = _table(root, "ablation")
    dense_w8d5 = next(r for r in ablation if r[:6] == ["dense", "8", "5", "group(8)", "max", "selu"])
    assert dense_w8d5[9] == "55.00 (n=1)" and dense_w8d5[10] == "75.00 (n=1)"
    assert dense_w8d5[11] == "—"  # the thesis' "Dense Model MXP" had no norm: not the same network
    residual_w1d1 = next(r for r in ablation if r[:6] == ["residual", "1", "1", "group(8)", "max", "selu"])
    # residual W10D10 with max pool + GroupNorm, 3 epochs: the thesis' short-run MXP_GN entry
    assert residual_w1d1[11:] == ["45.1", "57.3", "W10D10 Residual Model MXP_GN"]
    instance = next(r for r in ablation if r[3] == "instance" and r[4] == "max")
    assert instance[11] == "—"  # no thesis entry has instance norm with max pool


def test_metric_is_an_option(tmp_path):
    records = {k: v for k, v in fixture_runs().items() if k.startswith("cifar10-smoothnet_w80d50-eps7")}
    write_runs(tmp_path / "runs", records)
    render_report(
        tmp_path / "runs", PUBLISHED, tmp_path / "out", ReportOptions(metric="best_val"), root=tmp_path
    )
    values = [100 * (ACC[("smoothnet_w80d50", "cifar10", 7.0, s)] + 0.01) for s in range(3)]
    table = (tmp_path / "out" / "tables" / "architectures_eps7.md").read_text()
    assert f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n=3)" in table
    assert "best validation accuracy (report.metric=best_val)" in table


def test_missing_runs_show_as_missing(rendered):
    root, _, _ = rendered
    curve = {r[0]: r for r in _table(root, "privacy_utility_cifar10")}
    assert curve["5"][1] == "71.5" and curve["5"][2] == "—"  # eps 5 has no record: a dash, not dropped
    md = (root / "paper" / "tables" / "privacy_utility_cifar10.md").read_text()
    assert "no run record for ε = 5" in md
    arch = (root / "paper" / "tables" / "architectures_eps7.md").read_text()
    rows = {(r[0], r[1]): r for r in _table(root, "architectures_eps7")}
    assert rows[("ResNet-18", "CIFAR-10")][4] == "—"
    assert rows[("ResNet-9", "CIFAR-10")][3] == "—"  # listed in published.yaml, never run
    assert "ResNet-18 / CIFAR-10 non-DP" in arch and "ResNet-9 / CIFAR-10 DP" in arch
    ablation = (root / "paper" / "tables" / "ablation.md").read_text()
    assert "missing run record" in ablation


def test_two_renders_are_byte_identical(rendered, tmp_path):
    root, _, result = rendered
    # A second render into a fresh folder (nothing reused from the first), compared file by file.
    other = render_report(root / "runs", PUBLISHED, root / "paper2", root=root)
    first = sorted(p for p in (root / "paper").rglob("*") if p.is_file())
    assert len(first) == len(result.manifest["outputs"]) + 1  # + the manifest itself
    for path in first:
        twin = root / "paper2" / path.relative_to(root / "paper")
        if path.name == "report_manifest.json":
            continue  # its output paths name the folder
        assert twin.read_bytes() == path.read_bytes(), path.name
    assert other.manifest["records"] == result.manifest["records"]
    strip = {k.replace("paper2/", "paper/", 1): v for k, v in other.manifest["outputs"].items()}
    assert strip == result.manifest["outputs"]


def test_no_timestamps_or_versions_in_files(rendered):
    root, _, _ = rendered
    pdf = (root / "paper" / "figures" / "dp_vs_nondp.pdf").read_bytes()
    assert b"CreationDate" not in pdf and b"ModDate" not in pdf
    png = (root / "paper" / "figures" / "dp_vs_nondp.png").read_bytes()
    assert b"Software" not in png and b"matplotlib" not in png.lower()


def test_manifest_lists_hashes(rendered):
    root, records, result = rendered
    manifest = json.loads((root / "paper" / "report_manifest.json").read_text())
    assert set(manifest) == {"profile", "records", "outputs"}
    assert manifest["profile"] == "fixture"
    expected = {f"runs/{run_id}/record.json": record_hash(rec) for run_id, rec in records.items()}
    assert manifest["records"] == expected
    for rel, digest in manifest["outputs"].items():
        assert sha256_file(root / rel) == digest
    assert "paper/README.md" in manifest["outputs"]
    assert "paper/figures/privacy_utility_cifar10.png" in manifest["outputs"]
    # Every table names the records it was built from.
    short = record_hash(records["cifar10-smoothnet_w80d50-eps7-s0"])[:8]
    assert short in (root / "paper" / "tables" / "architectures_eps7.md").read_text()
    assert short in (root / "paper" / "tables" / "architectures_eps7.tex").read_text()


def test_quick_records_labelled_and_never_mixed(tmp_path):
    real = {
        k: v
        for k, v in fixture_runs(profile="paper").items()
        if k.startswith("cifar10-smoothnet_w80d50-eps7")
    }
    # The quick profile trains the configurable SmoothNet at width 1, depth 1 (params.quick.yaml).
    quick = {
        f"q-{k}": make_record(
            f"q-{k}",
            profile="quick",
            model="smoothnet",
            options={"width": 1.0, "depth": 1.0},
            seed=seed,
            test_at_best=0.2,
            num_parameters=101_000,
        )
        for seed, k in enumerate(("a", "b"))
    }
    write_runs(tmp_path / "runs", {**real, **quick})

    default = render_report(tmp_path / "runs", PUBLISHED, tmp_path / "real", root=tmp_path)
    assert default.left_out == 2 and default.manifest["profile"] in ("paper", "improved+paper")
    assert not any("/q-" in p for p in default.manifest["records"])
    real_md = (tmp_path / "real" / "tables" / "architectures_eps7.md").read_text()
    assert "20.00" not in real_md and "QUICK PROFILE" not in (tmp_path / "real" / "README.md").read_text()

    chosen = render_report(
        tmp_path / "runs", PUBLISHED, tmp_path / "quick", ReportOptions(kind="quick"), root=tmp_path
    )
    assert chosen.manifest["profile"] == "quick" and set(chosen.manifest["records"]) == {
        "runs/q-a/record.json",
        "runs/q-b/record.json",
    }
    readme = (tmp_path / "quick" / "README.md").read_text()
    assert "QUICK PROFILE — not a result" in readme
    arch_md = (tmp_path / "quick" / "tables" / "architectures_eps7.md").read_text()
    # One name per model across figures and tables (the small-multiples titles say "SmoothNet W10D10" too).
    assert "| SmoothNet W10D10 | CIFAR-10 | 101,000 | 20.00 ± 0.00 (n=2) |" in arch_md
    assert arch_md.startswith("**QUICK PROFILE — not a result: Architectures")
    arch_tex = (tmp_path / "quick" / "tables" / "architectures_eps7.tex").read_text()
    assert "\\caption{QUICK PROFILE --- not a result: Architectures" in arch_tex
    curve_md = (tmp_path / "quick" / "tables" / "privacy_utility_cifar10.md").read_text()
    assert "series is SmoothNet W10D10 (the configurable SmoothNet), a different network" in curve_md
    assert "SmoothNet SmoothNet" not in curve_md
    assert "| 7 | 73.5 | 20.00 ± 0.00 (n=2) |" in curve_md
    # every table of a quick report carries the label, the literature table too
    for table in (tmp_path / "quick" / "tables").glob("*.md"):
        assert table.read_text().startswith("**QUICK PROFILE — not a result"), table.name


def test_sections_render_only_what_is_chosen(tmp_path):
    """The ablation pipeline's report (``--sections ablation curves``): its grid, nothing of the paper's."""
    write_runs(tmp_path / "runs", fixture_runs())
    options = ReportOptions().with_sections(["ablation", "curves"])
    result = render_report(tmp_path / "runs", PUBLISHED, tmp_path / "out", options, root=tmp_path)
    files = {Path(p).name for p in result.manifest["outputs"]}
    assert {"ablation.md", "ablation_width_depth.png", "ablation_norm_pool.png"} <= files
    assert "training_curves_ablation.png" in files
    assert not files & {"privacy_utility_cifar10.md", "architectures_eps7.md", "literature_baselines.md"}
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "Sections rendered: ablation, curves" in readme and "Privacy–utility" not in readme
    everything = render_report(tmp_path / "runs", PUBLISHED, tmp_path / "all", root=tmp_path)
    assert files < {Path(p).name for p in everything.manifest["outputs"]}


def test_ablation_cells_with_runs_of_one_seed_say_so(tmp_path):
    """Two grids can hold the same configuration: n=2 of one seed is not two replicates."""
    opts = {"connection": "dense", "width": 1.0, "depth": 1.0, "norm": "group", "pool": "max"}
    kw = dict(model="smoothnet", study="ablation", num_parameters=100_000, target_epsilon=10.0)
    records = {
        "grid-a-nodp-s0": make_record("grid-a-nodp-s0", options=opts, private=False, **kw),
        "grid-b-nodp-s0": make_record(
            "grid-b-nodp-s0", options={**opts, "norm_groups": 8}, private=False, **kw
        ),
        "grid-a-eps10-s0": make_record("grid-a-eps10-s0", options=opts, **kw),
        "grid-a-eps10-s1": make_record("grid-a-eps10-s1", options=opts, seed=1, **kw),
    }
    write_runs(tmp_path / "runs", records)
    render_report(tmp_path / "runs", PUBLISHED, tmp_path / "paper", root=tmp_path)
    table = (tmp_path / "paper" / "tables" / "ablation.md").read_text()
    assert "non-DP (grid-a-nodp-s0, grid-b-nodp-s0)" in table
    assert "DP (grid-a-eps10" not in table  # two seeds: replicates, no note
    del records["grid-b-nodp-s0"]
    write_runs(tmp_path / "runs2", records)
    render_report(tmp_path / "runs2", PUBLISHED, tmp_path / "paper2", root=tmp_path)
    assert "runs of one seed" not in (tmp_path / "paper2" / "tables" / "ablation.md").read_text()


def test_sections_are_checked_before_anything_is_written(tmp_path):
    for bad in (["ablations"], [], "tables"):
        with pytest.raises(ReportInputError, match="valid: \\['privacy_utility'"):
            ReportOptions().with_sections(bad)
    with pytest.raises(ReportInputError, match="unknown \\['nope'\\]"):
        ReportOptions.from_params({"sections": ["ablation", "nope"]})


def test_a_report_without_ablation_records_names_the_ablation_pipeline(tmp_path):
    records = {k: v for k, v in fixture_runs().items() if v["params"].get("study") != "ablation"}
    write_runs(tmp_path / "runs", records)
    render_report(tmp_path / "runs", PUBLISHED, tmp_path / "paper", root=tmp_path)
    readme = (tmp_path / "paper" / "README.md").read_text()
    assert "`ablations/dvc.yaml`, whose report stage renders `ablations/report/`" in readme


def test_no_records_renders_dashes_without_crashing(tmp_path):
    result = render_report(tmp_path / "runs", PUBLISHED, tmp_path / "paper", root=tmp_path)
    assert result.manifest["records"] == {} and result.manifest["profile"] == "none"
    curve = (tmp_path / "paper" / "tables" / "privacy_utility_cifar10.md").read_text()
    assert "73.5" in curve and "| — |" in curve
    assert (tmp_path / "paper" / "figures" / "privacy_utility_cifar10.png").exists()
    assert not (tmp_path / "paper" / "figures" / "ablation_width_depth.png").exists()


def test_stale_outputs_are_removed(tmp_path):
    stale = tmp_path / "paper" / "figures" / "ablation_width_depth.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    render_report(tmp_path / "runs", PUBLISHED, tmp_path / "paper", root=tmp_path)
    assert not stale.exists()


def test_bad_inputs_fail_clearly(tmp_path):
    with pytest.raises(ReportInputError, match="valid"):
        ReportOptions.from_params({"metric": "accuracy"})
    # The pipeline's params name metrics by their record field and carry the CLI's folders.
    lead = ReportOptions.from_params({"metric": "test_accuracy_at_best_val", "runs": "runs", "out": "paper"})
    assert lead.metric == "test_at_best_val" and lead.out == "paper"
    with pytest.raises(ReportInputError, match="unknown key"):
        ReportOptions.from_params({"metrics": "best_val"})
    with pytest.raises(PublishedError, match="not found"):
        load_published(tmp_path / "nope.yaml")
    broken = tmp_path / "published.yaml"
    broken.write_text(PUBLISHED.read_text().replace("metric: test", "metric: top1", 1))
    with pytest.raises(PublishedError, match="metric 'top1'"):
        load_published(broken)
    unknown = make_record("x", profile="nightly")
    with pytest.raises(Exception, match="unknown profile 'nightly'"):
        write_runs(tmp_path / "runs", {"x": unknown})
        render_report(tmp_path / "runs", PUBLISHED, tmp_path / "out", root=tmp_path)


def test_published_numbers_match_the_spec():
    published = load_published(PUBLISHED)
    assert [(e, p.accuracy) for e, p in published.curve] == [
        (1.0, 62.6),
        (3.0, 70.0),
        (5.0, 71.5),
        (7.0, 73.5),
        (10.0, 73.8),
    ]
    smooth = published.architecture("smoothnet_w80d50")
    assert smooth.published["cifar10"].accuracy == 73.5 and smooth.published["imagenette"].accuracy == 69.2
    assert "69.7" in smooth.published["imagenette"].note
    lit = {e.id: (e.number.accuracy, e.number.epsilon) for e in published.literature}
    assert lit["tramer_boneh_cnn"] == (59.2, 3.0) and lit["tramer_boneh_scatternet_linear"] == (67.0, 3.0)
    assert lit["tramer_boneh_scatternet_cnn"] == (69.3, 3.0) and lit["papernot2021"] == (66.2, 7.53)
    assert lit["dormann2021"] == (70.1, 7.42) and lit["klause2022"] == (71.7, 7.5)
    assert lit["de2022_wrn40_4"] == (81.4, 8.0)
    for entry in published.literature:
        assert (
            entry.number.metric in ("validation", "test", "unknown")
            and entry.number.source in published.sources
        )


@pytest.mark.skipif(not THESIS_TABLE.exists(), reason="../shared/reference/thesis_study_table.md is absent")
def test_thesis_values_match_the_reference_table():
    text = THESIS_TABLE.read_text()
    reference = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and re.fullmatch(r"0\.\d+", cells[2]):
            reference.setdefault(cells[0], (round(100 * float(cells[2]), 1), round(100 * float(cells[3]), 1)))
    published = load_published(PUBLISHED)
    assert len(published.thesis) > 50
    for entry in published.thesis:
        name = entry.name if entry.name in reference else f"B_{entry.name[2:]}"
        assert reference[name] == (entry.dp.accuracy, entry.non_dp), entry.name
        assert entry.dp.metric == "validation" and entry.dp.epsilon == 10.0


def test_ablation_defaults_match_the_model():
    from smoothnet.models.smoothnet import smoothnet
    from smoothnet.report.ablation import SMOOTHNET_DEFAULTS

    params = inspect.signature(smoothnet).parameters
    for key, value in SMOOTHNET_DEFAULTS.items():
        assert params[key].default == value, key


def test_cli_renders(tmp_path, monkeypatch, capsys):
    from smoothnet.cli import SUBCOMMANDS
    from smoothnet.report import cli

    assert SUBCOMMANDS["report"] == "smoothnet.report.cli"
    records = {k: v for k, v in fixture_runs().items() if k.startswith("cifar10-smoothnet_w80d50-eps7")}
    write_runs(tmp_path / "runs", records)
    params = tmp_path / "params.yaml"
    params.write_text("report:\n  metric: final_test\n")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    argv = ["--runs", "runs", "--published", str(PUBLISHED), "--out", "paper", "--params", str(params)]
    monkeypatch.chdir(tmp_path)
    assert cli.main(parser.parse_args(argv)) == 0
    assert "3 record(s)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "paper" / "report_manifest.json").read_text())
    assert set(manifest["records"]) == {f"runs/{k}/record.json" for k in records}
    assert "final_test" in (tmp_path / "paper" / "tables" / "architectures_eps7.md").read_text()
    params.write_text("report:\n  metric: top1\n")
    assert cli.main(parser.parse_args(argv)) == 2
    assert "report.metric='top1'" in capsys.readouterr().err
    params.write_text("report:\n  metric: final_test\n")
    before = sorted((tmp_path / "paper").rglob("*"))
    assert cli.main(parser.parse_args([*argv, "--sections", "ablatoin"])) == 2
    assert "unknown ['ablatoin']" in capsys.readouterr().err
    assert sorted((tmp_path / "paper").rglob("*")) == before


def test_smoothnet_labels_use_the_papers_width_and_depth_naming():
    from smoothnet.report.context import model_label

    assert (
        model_label("x", "smoothnet", {"connection": "dense", "width": 1.0, "depth": 2.0})
        == "SmoothNet dense W10D20"
    )
    assert model_label("x", "smoothnet", {"width": 8.0, "depth": 5.0}) == "SmoothNet W80D50"
    ws = model_label("x", "smoothnet", {"width": 1.0, "depth": 1.0, "weight_standardization": True})
    assert ws == "SmoothNet W10D10 (weight_standardization=True)"
    assert model_label("ResNet-18", "resnet18", {}) == "ResNet-18"


def test_ablation_heatmap_rows_have_their_own_colour_scale():
    """DP and non-private cells are coloured on separate scales: on one shared scale the DP cells (10-20
    points lower) would all take the bottom colour and the differences the figure shows would vanish."""
    from smoothnet.report.ablation import row_colour_limits
    from smoothnet.report.runs import Summary

    def summary(mean):
        return Summary(mean, 0.0, 1, (), (mean,))

    panels = {
        ("cifar10", 10.0): {
            ("group", "max"): (summary(57.6), summary(72.0), None),
            ("none", "max"): (summary(52.5), None, None),
            ("none", "avg"): (summary(45.4), summary(68.5), None),
        }
    }
    assert row_colour_limits(panels) == [(45.4, 57.6), (68.5, 72.0)]
    dp_only = {key: {cell: (v[0], None, None) for cell, v in panel.items()} for key, panel in panels.items()}
    assert row_colour_limits(dp_only) == [(45.4, 57.6), None]
