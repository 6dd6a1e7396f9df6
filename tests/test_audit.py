"""The audit: a consistent set of stored results passes; each kind of tampering fails naming run and field.

``build_repo`` writes, in a temporary repository root, what the pipeline would leave behind: params.yaml,
one record per run (epsilons computed with the real accountants), a prepared-data manifest, dvc.lock
(md5s of the records and of a code dependency, the params DVC locks) and the report manifest (record
hashes, a rendered file's sha256). Tests then tamper with one thing and audit.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import dp_accounting
import pytest
import yaml
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from smoothnet.audit.checks import FAIL, PASS, SKIP, WARN
from smoothnet.audit.cli import add_arguments
from smoothnet.audit.cli import main as audit_main
from smoothnet.audit.runner import AuditConfig, AuditInputError, run_audit
from smoothnet.io import atomic_write_json, sha256_file
from smoothnet.params import resolve_run
from smoothnet.privacy.accounting import compute_epsilon, noise_for_target
from smoothnet.records import SCHEMA_VERSION, record_hash, validate_record
from tests.support.records import environment, performance

N_TRAIN, BATCH, EPOCHS, DELTA = 10_000, 100, 2, 1e-5
Q = 1 / 100  # 1 / ceil(10000 / 100)
STEPS = EPOCHS * 100
FINGERPRINT = {"train": "a" * 64, "test": "b" * 64}
OTHER_COPY = {"train": "c" * 64, "test": "b" * 64}

PARAMS: dict[str, Any] = {
    "data": {"toy": {"source": "download", "val_fraction": 0.2, "split_seed": 0, "image_size": 32}},
    "train": {
        "private": True,
        "target_epsilon": 3.0,
        "noise_multiplier": None,
        "delta": DELTA,
        "accountant": "rdp",
        "poisson_sampling": True,
        "max_grad_norm": 1.0,
        "epochs": EPOCHS,
        "logical_batch_size": BATCH,
        "physical_batch_size": 50,
        "lr": 0.002,
        "model_options": {},
        "seed": 0,
    },
    "runs": {
        "toy-smoothnet-eps3-s0": {"dataset": "toy", "model": "smoothnet_w10d10"},
        "toy-smoothnet-sigma1-prv-s0": {
            "dataset": "toy",
            "model": "smoothnet_w10d10",
            "target_epsilon": None,
            "noise_multiplier": 1.0,
            "accountant": "prv",
        },
        "toy-smoothnet-nodp-s0": {"dataset": "toy", "model": "smoothnet_w10d10", "private": False},
    },
}
DP_RUN, PRV_RUN, NODP_RUN = list(PARAMS["runs"])


def build_record(params: dict[str, Any], run_id: str, fingerprint: dict[str, str], manifest_sha: str) -> dict:
    """A complete, honest record of ``run_id`` as the trainer would write it."""
    p = resolve_run(params, run_id)
    history = [
        {"epoch": 1, "val_accuracy": 0.41, "test_accuracy": 0.40},
        {"epoch": 2, "val_accuracy": 0.47, "test_accuracy": 0.46},
    ]
    private = p["private"]
    privacy: dict[str, Any] = {
        "private": private,
        "target_epsilon": p["target_epsilon"] if private else None,
        "delta": DELTA if private else None,
        "noise_multiplier": None,
        "max_grad_norm": 1.0 if private else None,
        "sample_rate": None,
        "steps": STEPS,
        "planned_steps": STEPS,
        "sampling": "poisson" if private else "shuffle",
        "accountant": p["accountant"] if private else None,
        "epsilon": None,
        "epsilon_by_accountant": {},
        "grad_sample_mode": "hooks" if private else None,
    }
    if private:
        sigma = p["noise_multiplier"]
        if sigma is None:
            sigma = noise_for_target(p["target_epsilon"], DELTA, Q, epochs=EPOCHS, accountant=p["accountant"])
        history_segments = [[sigma, Q, STEPS]]
        by = {name: compute_epsilon(sigma, Q, STEPS, DELTA, name) for name in ("rdp", "prv")}
        privacy.update(
            noise_multiplier=sigma,
            sample_rate=Q,
            epsilon=by[p["accountant"]],
            epsilon_by_accountant=by,
            accountant_history=history_segments,
            noise_source="os_entropy",
        )
    for i, entry in enumerate(history, start=1):  # as the trainer logs them: cumulative steps, spent epsilon
        entry["steps"] = STEPS * i // len(history)
        entry["epsilon"] = privacy["epsilon"] if i == len(history) else None
    record = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "profile": "fixture",
        "stage": f"train@{run_id}",
        "params": p,
        "model": {"name": p["model"], "options": {}, "num_parameters": 101_000, "has_batchnorm": False},
        "dataset": {
            "name": "toy",
            "fingerprint": dict(fingerprint),
            "manifest_sha256": manifest_sha,
            "n_train": N_TRAIN,
            "n_val": 2_500,
            "n_test": 2_000,
        },
        "privacy": privacy,
        "training": {
            "epochs": EPOCHS,
            "epochs_completed": EPOCHS,
            "logical_batch_size": BATCH,
            "physical_batch_size": 50,
            "seed": 0,
        },
        "results": {
            "best_val_accuracy": 0.47,
            "final_val_accuracy": 0.47,
            "test_accuracy_at_best_val": 0.46,
            "final_test_accuracy": 0.46,
            "history": history,
        },
        "performance": performance(),
        "environment": environment("0123456789abcdef"),
    }
    validate_record(record)
    return record


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_lock(root: Path, params: dict[str, Any]) -> None:
    """dvc.lock as DVC 3 writes it for ``train@<run_id>`` (foreach over ``runs``)."""
    stages = {}
    for run_id in params["runs"]:
        record_rel = f"runs/{run_id}/record.json"
        stages[f"train@{run_id}"] = {
            "cmd": f"smoothnet train --run {run_id}",
            "deps": [{"path": "src/train.py", "hash": "md5", "md5": md5(root / "src/train.py"), "size": 1}],
            "params": {"params.yaml": {f"runs.{run_id}": params["runs"][run_id], "train": params["train"]}},
            "outs": [{"path": record_rel, "hash": "md5", "md5": md5(root / record_rel), "size": 1}],
        }
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}, sort_keys=False))


def write_report_manifest(root: Path) -> None:
    figure = root / "paper/figures/privacy_utility.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    figure.write_bytes(b"\x89PNG rendered from the records\n")
    records = {
        f"runs/{run_id}/record.json": record_hash(
            json.loads((root / f"runs/{run_id}/record.json").read_text())
        )
        for run_id in PARAMS["runs"]
    }
    manifest = {"records": records, "outputs": {"paper/figures/privacy_utility.png": sha256_file(figure)}}
    atomic_write_json(root / "paper/report_manifest.json", manifest)


def build_repo(root: Path, fingerprint: dict[str, str] = FINGERPRINT, profile: str = "fixture") -> Path:
    """Params, prepared manifest, records, dvc.lock and report manifest: a consistent set."""
    (root / "src").mkdir(parents=True)
    (root / "src/train.py").write_text("print('the training code')\n")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    manifest = root / "data/prepared/toy/manifest.json"
    atomic_write_json(
        manifest, {"name": "toy", "fingerprint": FINGERPRINT, "fingerprint_matches_official": True}
    )
    for run_id in PARAMS["runs"]:
        record = build_record(PARAMS, run_id, fingerprint, sha256_file(manifest))
        record["profile"] = profile
        atomic_write_json(root / f"runs/{run_id}/record.json", record)
    write_lock(root, PARAMS)
    write_report_manifest(root)
    return root


def audit(root: Path, **overrides):
    return run_audit(AuditConfig(root=root, **overrides))


def failing(result) -> set[tuple[str, str]]:
    return {(where, check.field) for where, check in result.failures}


def edit_record(root: Path, run_id: str, edit) -> None:
    path = root / f"runs/{run_id}/record.json"
    record = json.loads(path.read_text())
    edit(record)
    atomic_write_json(path, record)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return build_repo(tmp_path_factory.mktemp("pristine"))


# ----------------------------------------------------------------------------- consistent set


def test_consistent_set_passes_and_writes_reports(repo, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    code = audit_main(parser.parse_args(["--root", str(repo)]))
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads((repo / "audit/audit.json").read_text())
    assert report["passed"] and report["n_runs"] == 3 and report["failures"] == []
    markdown = (repo / "audit/audit.md").read_text()
    assert "**PASSED**" in markdown and DP_RUN in markdown and "fixture (not a result)" in markdown
    by_id = {run["run_id"]: run for run in report["runs"]}
    statuses = {c["name"]: c["status"] for c in by_id[DP_RUN]["checks"]}
    for name in ("epsilon re-derived", "accountants agree", "noise calibration", "params", "dvc.lock output",
                 "dataset", "report cites current record", "Poisson sampling", "no BatchNorm"):  # fmt: skip
        assert statuses[name] == PASS, name
    non_private = {c["name"]: c["status"] for c in by_id[NODP_RUN]["checks"]}
    assert non_private["privacy checks"] == SKIP
    assert by_id[NODP_RUN]["private"] is False


def test_rederived_epsilons_agree_with_dp_accounting_computed_here(repo):
    result = audit(repo)
    assert result.passed
    for run in result.runs:
        if not run.private:
            assert run.epsilons is None
            continue
        record = json.loads((repo / run.path).read_text())
        sigma, q, steps = (record["privacy"][k] for k in ("noise_multiplier", "sample_rate", "steps"))
        event = dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
        )
        rdp = rdp_privacy_accountant.RdpAccountant()
        rdp.compose(event)
        pld = pld_privacy_accountant.PLDAccountant()
        pld.compose(event)
        assert run.epsilons["dpa_rdp"] == pytest.approx(rdp.get_epsilon(DELTA), abs=1e-9)
        assert run.epsilons["dpa_pld"] == pytest.approx(pld.get_epsilon(DELTA), abs=1e-9)
        assert run.epsilons["rdp"] == pytest.approx(rdp.get_epsilon(DELTA), abs=1e-2)  # Opacus vs Google RDP
        assert run.epsilons["prv"] == pytest.approx(pld.get_epsilon(DELTA), rel=0.02)  # PRV vs PLD
        assert run.epsilons["rdp"] > run.epsilons["prv"]
        assert run.epsilons[run.accountant] == pytest.approx(record["privacy"]["epsilon"], abs=1e-12)


# ----------------------------------------------------------------------------- tampering


def test_edited_epsilon_fails_naming_run_and_field(repo):
    edit_record(repo, DP_RUN, lambda r: r["privacy"].__setitem__("epsilon", r["privacy"]["epsilon"] - 0.5))
    result = audit(repo)
    assert not result.passed
    assert (DP_RUN, "privacy.epsilon") in failing(result)
    assert (DP_RUN, "record.json") in failing(result)  # dvc.lock md5 of the record
    assert all(where == DP_RUN for where, _ in failing(result) if where not in ("report",))
    message = next(c.message for w, c in result.failures if c.field == "privacy.epsilon")
    assert "re-derived" in message


def test_edited_recorded_epsilon_by_accountant_fails(repo):
    edit_record(repo, PRV_RUN, lambda r: r["privacy"]["epsilon_by_accountant"].__setitem__("rdp", 1.0))
    assert (PRV_RUN, "privacy.epsilon_by_accountant.rdp") in failing(audit(repo))


@pytest.mark.parametrize("keep_history", [True, False])
def test_edited_noise_multiplier_fails_naming_run_and_field(repo, keep_history):
    def edit(record):
        record["privacy"]["noise_multiplier"] *= 1.5
        if not keep_history:
            del record["privacy"]["accountant_history"]

    edit_record(repo, DP_RUN, edit)
    fields = {f for where, f in failing(audit(repo)) if where == DP_RUN}
    assert "privacy.noise_multiplier" in fields
    if not keep_history:
        assert "privacy.epsilon" in fields  # epsilon no longer follows from the (edited) sigma


def test_fixed_sigma_run_edited_noise_multiplier_fails(repo):
    edit_record(
        repo,
        PRV_RUN,
        lambda r: r["privacy"].update(noise_multiplier=2.0, accountant_history=[[2.0, Q, STEPS]]),
    )
    fields = {f for where, f in failing(audit(repo)) if where == PRV_RUN}
    assert {"privacy.noise_multiplier", "privacy.epsilon"} <= fields


def test_accuracy_edited_after_report_fails_naming_run_and_field(repo):
    edit_record(repo, DP_RUN, lambda r: r["results"].__setitem__("test_accuracy_at_best_val", 0.735))
    result = audit(repo)
    assert {(DP_RUN, "record_hash"), (DP_RUN, "results.test_accuracy_at_best_val")} <= failing(result)
    message = next(c.message for w, c in result.failures if c.field == "record_hash")
    assert "after the report was rendered" in message


def test_accuracy_edited_consistently_with_history_still_fails(repo):
    def edit(record):
        record["results"]["test_accuracy_at_best_val"] = record["results"]["final_test_accuracy"] = 0.735
        record["results"]["history"][-1]["test_accuracy"] = 0.735

    edit_record(repo, DP_RUN, edit)
    assert {(DP_RUN, "record_hash"), (DP_RUN, "record.json")} <= failing(audit(repo))


def test_param_changed_after_run_fails_naming_run_and_field(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lr"] = 0.1
    params["runs"][DP_RUN]["max_grad_norm"] = 2.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    result = audit(repo)
    fails = failing(result)
    for run_id in PARAMS["runs"]:
        assert (run_id, "params.lr") in fails
        assert (run_id, "params.yaml:train.lr") in fails
    assert (DP_RUN, "params.max_grad_norm") in fails
    assert (PRV_RUN, "params.max_grad_norm") not in fails
    assert {f for _, f in fails} <= {
        "params.lr",
        "params.yaml:train.lr",
        "params.max_grad_norm",
        f"params.yaml:runs.{DP_RUN}.max_grad_norm",
    }


def test_locked_params_key_gone_from_params_fails_naming_it(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    del params["runs"][DP_RUN]
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    result = audit(repo)
    gone = [c for where, c in result.failures if where == DP_RUN and c.field == f"params.yaml:runs.{DP_RUN}"]
    assert len(gone) == 1 and "locked but gone from params.yaml" in gone[0].message
    assert not any(c.field.startswith("params.yaml:") for where, c in result.failures if where != DP_RUN)


def test_record_from_another_dataset_copy_fails(tmp_path):
    root = build_repo(tmp_path, fingerprint=OTHER_COPY)  # otherwise consistent: lock and report agree
    result = audit(root)
    assert failing(result) == {(run_id, "dataset.fingerprint") for run_id in PARAMS["runs"]}
    assert "another copy" in result.failures[0][1].message


def test_manifest_hash_mismatch_fails(repo):
    edit_record(repo, NODP_RUN, lambda r: r["dataset"].__setitem__("manifest_sha256", "0" * 64))
    assert (NODP_RUN, "dataset.manifest_sha256") in failing(audit(repo))


def test_rendered_file_edited_fails(repo):
    (repo / "paper/figures/privacy_utility.png").write_bytes(b"hand-edited figure")
    assert failing(audit(repo)) == {("report", "paper/figures/privacy_utility.png")}


def test_cited_record_deleted_fails(repo):
    import shutil

    shutil.rmtree(repo / f"runs/{NODP_RUN}")
    assert ("report", f"runs/{NODP_RUN}/record.json") in failing(audit(repo))


def test_changed_code_dependency_fails_or_warns(repo):
    (repo / "src/train.py").write_text("print('different code')\n")
    assert {f for _, f in failing(audit(repo))} == {"dvc.lock deps"}
    relaxed = audit(repo, changed_deps=WARN)
    assert relaxed.passed
    assert any(c.status == WARN and c.field == "dvc.lock deps" for c in relaxed.runs[0].checks)


def test_missing_lock_stage_fails(repo):
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    del lock["stages"][f"train@{DP_RUN}"]
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert (DP_RUN, "dvc.lock") in failing(audit(repo))


@pytest.mark.parametrize(
    ("run_id", "edit", "field"),
    [
        (DP_RUN, lambda r: r["privacy"].__setitem__("sampling", "shuffle"), "privacy.sampling"),
        (DP_RUN, lambda r: r["model"].__setitem__("has_batchnorm", True), "model.has_batchnorm"),
        (
            DP_RUN,
            lambda r: r["results"]["history"][0].__setitem__("val_accuracy", 41.0),
            "results.history[0].val_accuracy",
        ),
        (
            NODP_RUN,
            lambda r: r["results"].__setitem__("final_val_accuracy", 47.0),
            "results.final_val_accuracy",
        ),
        (DP_RUN, lambda r: r["privacy"].__setitem__("steps", STEPS - 1), "privacy.steps"),
        (DP_RUN, lambda r: r["training"].__setitem__("epochs_completed", 1), "training.epochs_completed"),
        (
            DP_RUN,
            lambda r: r["privacy"].__setitem__("sample_rate", 100 / N_TRAIN * 1.01),
            "privacy.sample_rate",
        ),
        (NODP_RUN, lambda r: r["privacy"].__setitem__("epsilon", 3.0), "privacy.epsilon"),
        (DP_RUN, lambda r: r["privacy"].__setitem__("accountant", "gdp"), "privacy.accountant"),
        (
            DP_RUN,
            lambda r: r["privacy"]["epsilon_by_accountant"].__setitem__("gdp", 2.0),
            "privacy.epsilon_by_accountant.gdp",
        ),
        (DP_RUN, lambda r: r.__setitem__("stage", "train@other"), "stage"),
        (DP_RUN, lambda r: r["privacy"].pop("delta"), "privacy.delta"),
    ],
)
def test_sanity_and_claim_violations_name_the_field(repo, run_id, edit, field):
    edit_record(repo, run_id, edit)
    assert (run_id, field) in failing(audit(repo))


def test_epsilon_above_target_fails_even_if_honestly_computed(tmp_path):
    """A run whose noise was too low for its target: epsilon is re-derived correctly but exceeds the claim."""
    root = build_repo(tmp_path)

    def edit(record):
        sigma = record["privacy"]["noise_multiplier"] * 0.9
        eps = compute_epsilon(sigma, Q, STEPS, DELTA, "rdp")
        record["privacy"].update(
            noise_multiplier=sigma,
            accountant_history=[[sigma, Q, STEPS]],
            epsilon=eps,
            epsilon_by_accountant={"rdp": eps, "prv": compute_epsilon(sigma, Q, STEPS, DELTA, "prv")},
        )

    edit_record(root, DP_RUN, edit)
    fails = {c.name for w, c in audit(root).failures if w == DP_RUN}
    assert {"epsilon within target", "noise calibration"} <= fails
    assert "epsilon re-derived" not in fails


# ----------------------------------------------------------------------------- inputs and labels


def test_absent_prepared_data_and_report_are_skipped_not_failed(repo):
    import shutil

    shutil.rmtree(repo / "data")
    (repo / "paper/report_manifest.json").unlink()
    result = audit(repo)
    assert result.passed
    statuses = {c.name: c.status for c in result.runs[0].checks}
    assert statuses["dataset"] == SKIP and statuses["report cites current record"] == SKIP


def test_quick_profile_is_audited_and_labelled(tmp_path):
    result = audit(build_repo(tmp_path, profile="quick"))
    assert result.passed
    assert {run.label for run in result.runs} == {"quick (not a result)"}


def test_missing_field_fails_naming_it(repo):
    edit_record(repo, DP_RUN, lambda r: r["privacy"].pop("planned_steps"))
    assert (DP_RUN, "privacy.planned_steps") in failing(audit(repo))


def test_missing_inputs_give_a_clear_error(repo):
    (repo / "dvc.lock").unlink()
    with pytest.raises(AuditInputError, match="dvc.lock not found"):
        audit(repo)
    with pytest.raises(AuditInputError, match="runs folder not found"):
        audit(repo, runs="nowhere")


def test_canary_result_is_included(repo):
    canary = {
        "claimed_epsilon": 2.0,
        "config": {"num_canaries": 1000, "guesses_per_side": 100, "confidence": 0.95, "delta": 1e-5},
        "dp": {
            "noise_multiplier": 2.2,
            "epsilon_lower_bound": 0.6,
            "claimed_epsilon": 1.99,
            "correct": 141,
            "guesses": 200,
            "noise_variance_test": {
                "rejected": False,
                "variance_ratio": 1.04,
                "p_value": 0.75,
                "level": 1e-4,
            },
        },
        "no_noise": {
            "noise_multiplier": 0.0,
            "epsilon_lower_bound": 4.17,
            "claimed_epsilon": 2.0,
            "correct": 200,
            "guesses": 200,
        },
    }
    atomic_write_json(repo / "audit/canary.json", canary)
    result = audit(repo)
    assert result.passed and [c.status for c in result.canary_checks] == [PASS, PASS, PASS]
    weak = copy.deepcopy(canary)
    weak["no_noise"]["epsilon_lower_bound"] = 1.5
    violated = copy.deepcopy(canary)
    violated["dp"]["epsilon_lower_bound"] = 2.5
    under_noised = copy.deepcopy(canary)
    under_noised["dp"]["noise_variance_test"].update(rejected=True, variance_ratio=0.26, p_value=3.8e-66)
    for bad, field in (
        (weak, "no_noise.epsilon_lower_bound"),
        (violated, "dp.epsilon_lower_bound"),
        (under_noised, "dp.noise_variance_test"),
    ):
        atomic_write_json(repo / "audit/canary.json", bad)
        assert failing(audit(repo)) == {("canary", field)}
    assert FAIL == "fail"


# ----------------------------------------------------------------------------- a real trainer record


@pytest.mark.slow
def test_record_written_by_the_trainer_passes_the_full_audit(tmp_path):
    """Train a tiny DP run with the real engine, lock it as DVC would, and audit it end to end."""
    import warnings

    import torch

    from smoothnet.training.config import TrainConfig
    from smoothnet.training.trainer import RunPaths, train
    from tests.support.learnable import prepare_learnable

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the prepared sample is not the official CIFAR-10
        prepared = prepare_learnable(tmp_path / "data", per_class_train=40, per_class_test=5)
    run_id = "cifar10-smoothnet-eps3-s0"
    train_defaults = {
        "study": "main", "model_options": {"width": 0.5, "depth": 1.0}, "private": True, "target_epsilon": 3.0,
        "delta": 1e-3, "max_grad_norm": 1.0, "epochs": 2, "logical_batch_size": 16, "physical_batch_size": 16,
        "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0, "lr_schedule": "constant", "grad_sample_mode": "hooks",
        "seed": 0,
    }  # fmt: skip
    params = {"train": train_defaults, "runs": {run_id: {"dataset": "cifar10", "model": "smoothnet"}}}
    root = tmp_path / "repo"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    resolved = resolve_run(params, run_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(
            TrainConfig.from_params(resolved),
            RunPaths(prepared, root / "runs" / run_id, tmp_path / "ckpt", repo_root=root),
            resolved_params=resolved,
            progress=False,
            profile="fixture",
        )
    record_rel = f"runs/{run_id}/record.json"
    lock = {
        "schema": "2.0",
        "stages": {
            f"train@{run_id}": {
                "cmd": f"smoothnet train --run {run_id}",
                "params": {
                    "params.yaml": {f"runs.{run_id}": params["runs"][run_id], "train": train_defaults}
                },
                "outs": [{"path": record_rel, "hash": "md5", "md5": md5(root / record_rel)}],
            }
        },
    }
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    result = audit(root, prepared=str(prepared.parent))
    assert result.passed, [(w, c.field, c.message) for w, c in result.failures]
    (run,) = result.runs
    statuses = {c.name: c.status for c in run.checks}
    for name in ("epsilon re-derived", "noise calibration", "sample rate", "accountants agree", "params",
                 "dvc.lock output", "results match history", "planned steps", "Poisson sampling"):  # fmt: skip
        assert statuses[name] == PASS, name
    assert any(c.field == "dataset.fingerprint" and c.status == PASS for c in run.checks)
    assert run.epsilons["rdp"] <= 3.0 and run.epsilons["prv"] < run.epsilons["rdp"]


def test_directory_hash_matches_dvc_and_honours_dvcignore(tmp_path):
    """Pinned from `dvc repro` (DVC 3.67.1) on this very tree: a CRLF file, a nested folder, ignored .pyc files."""
    from smoothnet.audit.dvclock import dvc_md5, dvcignore_filter

    (tmp_path / ".dvcignore").write_text("__pycache__/\n*.pyc\n")
    sub = tmp_path / "sub"
    (sub / "d").mkdir(parents=True)
    (sub / "__pycache__").mkdir()
    (sub / "b.txt").write_bytes(b"x\r\ny\n")
    (sub / "d/c.bin").write_bytes(b"z\n")
    (sub / "d/e.txt").write_bytes(b"more\n")
    (sub / "__pycache__/m.pyc").write_bytes(b"junk\n")
    (sub / "y.pyc").write_bytes(b"junk2\n")
    assert dvc_md5(sub, dvcignore_filter(tmp_path)) == "d8eec4b9cb529938a1251fe845ff82f3.dir"
    assert dvc_md5(sub) != "d8eec4b9cb529938a1251fe845ff82f3.dir"  # without the filter the .pyc files count
    assert dvc_md5(sub / "d/c.bin") == hashlib.md5(b"z\n").hexdigest()
    assert dvc_md5(tmp_path / "absent") is None


def test_params_audit_section_sets_tolerance_output_and_rejects_unknown_keys(repo, capsys):
    import argparse

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["audit"] = {"epsilon_tolerance": 0.6, "out": "reports/audit", "allow_changed_deps": True}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    edit_record(repo, DP_RUN, lambda r: r["privacy"].__setitem__("epsilon", r["privacy"]["epsilon"] - 0.5))
    (repo / "src/train.py").write_text("print('different code')\n")
    fields = {f for _, f in failing(audit(repo))}
    assert "privacy.epsilon" not in fields and "dvc.lock deps" not in fields  # within 0.6; deps only warned
    assert (DP_RUN, "privacy.epsilon") in failing(audit(repo, epsilon_tolerance=0.01))  # the CLI/caller wins
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert audit_main(parser.parse_args(["--root", str(repo)])) == 1  # the record still differs from dvc.lock
    assert (repo / "reports/audit/audit.json").exists()
    params["audit"] = {"epsilon_tol": 0.1}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(AuditInputError, match="unknown key"):
        audit(repo)


def test_ablation_run_is_checked_against_the_ablation_pipeline_lock(repo):
    """Ablation runs live in params `ablations` and ablations/dvc.yaml (stage ablate@<id>, own dvc.lock)."""
    run_id = "toy-smoothnet-ablation-s0"
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ablations"] = {run_id: {"dataset": "toy", "model": "smoothnet_w10d10", "seed": 3}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    manifest = repo / "data/prepared/toy/manifest.json"
    record = build_record(params, run_id, FINGERPRINT, sha256_file(manifest))
    record["stage"] = f"ablations/dvc.yaml:ablate@{run_id}"
    record["training"]["seed"] = 3
    record_rel = f"runs/{run_id}/record.json"
    atomic_write_json(repo / record_rel, record)
    stage = {
        "cmd": f"python pipelines/train.py {run_id}",
        "params": {
            "params.yaml": {f"ablations.{run_id}": params["ablations"][run_id], "train": params["train"]}
        },
        "outs": [{"path": record_rel, "hash": "md5", "md5": md5(repo / record_rel)}],
    }
    (repo / "ablations").mkdir()
    (repo / "ablations/dvc.lock").write_text(
        yaml.safe_dump({"schema": "2.0", "stages": {f"ablate@{run_id}": stage}})
    )
    result = audit(repo)
    assert result.passed, [(w, c.field, c.message) for w, c in result.failures]
    assert run_id in {run.run_id for run in result.runs}
    params["ablations"][run_id]["seed"] = 4
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert {(run_id, "params.seed"), (run_id, f"params.yaml:ablations.{run_id}.seed")} <= failing(audit(repo))
    (repo / "ablations/dvc.lock").unlink()
    assert (run_id, "ablations/dvc.lock") in failing(audit(repo))


def test_each_pipeline_expects_records_of_exactly_its_own_locked_runs(repo):
    """The main audit (runs/) does not miss a grid cell; the ablation audit (ablations/runs/) does."""
    run_id = "toy-smoothnet-ablation-s0"
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ablations"] = {run_id: {"dataset": "toy", "model": "smoothnet_w10d10", "seed": 3}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    record_rel = f"ablations/runs/{run_id}/record.json"
    stage = {"cmd": f"python pipelines/train.py {run_id}", "outs": [{"path": record_rel, "md5": "0" * 32}]}
    (repo / "ablations/runs").mkdir(parents=True)
    (repo / "ablations/dvc.lock").write_text(
        yaml.safe_dump({"schema": "2.0", "stages": {f"ablate@{run_id}": stage}})
    )
    main = audit(repo)
    assert main.passed, [(w, c.field, c.message) for w, c in main.failures]
    grid = audit(repo, runs=["ablations/runs"])
    assert ("report", record_rel) in failing(grid)
    missed = {c.field for _, c in grid.failures if c.name == "locked run has a record"}
    assert missed == {record_rel}
