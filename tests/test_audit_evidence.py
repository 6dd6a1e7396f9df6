"""The audit cannot be passed by removing or re-hashing evidence, and one bad record fails on its own:
every way below exited 0 (or crashed naming no file) before."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import yaml

from smoothnet.audit.cli import EXIT_CRASHED, EXIT_FAILED, EXIT_PASSED, add_arguments
from smoothnet.audit.cli import main as audit_main
from smoothnet.audit.runner import AuditConfig, run_audit
from smoothnet.data.download import md5_file
from smoothnet.io import atomic_write_json, sha256_file
from tests.test_audit import DP_RUN, NODP_RUN, PARAMS, PRV_RUN, build_repo, edit_record, failing

FIGURE = "paper/figures/privacy_utility.png"
MANIFEST = "paper/report_manifest.json"
CANARY = "audit/canary.json"


def _lock_everything(root: Path) -> None:
    """Add what the real dvc.lock has beside the records: DVCLive metrics of each run, the report stage
    (figure + manifest) and the canary stage."""
    atomic_write_json(root / CANARY, {"claimed_epsilon": 2.0})  # content irrelevant here: only its md5
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    for run_id in PARAMS["runs"]:
        metrics = root / f"runs/{run_id}/dvclive/metrics.json"
        atomic_write_json(metrics, {"test": {"accuracy": 0.46}})
        lock["stages"][f"train@{run_id}"]["outs"].append(
            {"path": f"runs/{run_id}/dvclive/metrics.json", "hash": "md5", "md5": md5_file(metrics)}
        )
    lock["stages"]["report"] = {
        "outs": [{"path": p, "hash": "md5", "md5": md5_file(root / p)} for p in (FIGURE, MANIFEST)]
    }
    lock["stages"]["canary"] = {"outs": [{"path": CANARY, "hash": "md5", "md5": md5_file(root / CANARY)}]}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = build_repo(tmp_path_factory.mktemp("pristine"))
    _lock_everything(root)
    return root


def audit(root: Path):
    return run_audit(AuditConfig(root=root, canary="nowhere.json"))


def cli(root: Path) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return audit_main(parser.parse_args(["--root", str(root), "--canary", "nowhere.json"]))


def test_fully_locked_set_passes(repo):
    result = audit(repo)
    assert result.passed, result.failures
    assert result.not_yet_trained == []


# --------------------------------------------------------------------------- 3: evidence removed or re-hashed


def test_deleted_manifest_fails_when_the_report_is_locked(repo):
    (repo / MANIFEST).unlink()
    (repo / FIGURE).write_bytes(b"\x89PNG edited: 73.5 -> 99.9\n")
    fails = failing(audit(repo))
    assert ("report", str(repo / MANIFEST)) in fails  # missing manifest: a failure, not "skip"
    assert ("report", FIGURE) in fails  # and the edited figure differs from dvc.lock


def test_redrawn_figure_rehashed_into_the_manifest_fails_against_dvc_lock(repo):
    (repo / FIGURE).write_bytes(b"\x89PNG redrawn\n")
    manifest = json.loads((repo / MANIFEST).read_text())
    manifest["outputs"][FIGURE] = sha256_file(repo / FIGURE)
    atomic_write_json(repo / MANIFEST, manifest)
    fails = failing(audit(repo))
    assert ("report", FIGURE) in fails and ("report", MANIFEST) in fails


def test_deleted_run_folder_of_a_locked_run_fails(repo):
    shutil.rmtree(repo / f"runs/{PRV_RUN}")
    manifest = json.loads((repo / MANIFEST).read_text())  # "re-render" without the run
    del manifest["records"][f"runs/{PRV_RUN}/record.json"]
    atomic_write_json(repo / MANIFEST, manifest)
    assert ("report", f"runs/{PRV_RUN}/record.json") in failing(audit(repo))


def test_run_neither_locked_nor_recorded_is_listed_as_not_yet_trained(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["runs"]["toy-smoothnet-eps9-s0"] = {
        "dataset": "toy",
        "model": "smoothnet_w10d10",
        "target_epsilon": 9,
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = audit(repo)
    assert result.not_yet_trained == ["toy-smoothnet-eps9-s0"]
    assert result.to_dict()["not_yet_trained"] == ["toy-smoothnet-eps9-s0"]


@pytest.mark.parametrize("path", [f"runs/{DP_RUN}/dvclive/metrics.json", CANARY])
def test_edited_dvclive_metrics_or_canary_result_fail(repo, path):
    data = json.loads((repo / path).read_text())
    data["edited"] = True
    atomic_write_json(repo / path, data)
    assert path in {field for _, field in failing(audit(repo))}


def test_deleted_epoch_fails_even_after_dvc_commit(repo):
    edit_record(repo, DP_RUN, lambda r: r["results"]["history"].pop(0))
    lock = yaml.safe_load((repo / "dvc.lock").read_text())  # what `dvc commit -f` would do
    out = lock["stages"][f"train@{DP_RUN}"]["outs"][0]
    out["md5"] = md5_file(repo / out["path"])
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    assert (DP_RUN, "results.history") in failing(audit(repo))


def test_last_epoch_steps_must_equal_the_records(repo):
    edit_record(repo, NODP_RUN, lambda r: r["results"]["history"][-1].update(steps=1))
    assert (NODP_RUN, "results.history") in failing(audit(repo))


# --------------------------------------------------------------------------- 4: one bad record


@pytest.mark.parametrize(
    "text",
    [
        '{"run_id": "x", "privacy": {"epsilon": NaN}}',
        '{"run_id": "x", "results": {"final_test_accuracy": Infinity}}',
        "[" * 200_000 + "]" * 200_000,
    ],
    ids=["nan", "infinity", "deep"],
)
def test_bad_record_fails_on_its_own_and_the_others_are_audited(repo, text):
    (repo / f"runs/{DP_RUN}/record.json").write_text(text)
    result = audit(repo)
    fails = failing(result)
    assert (DP_RUN, "record.json") in fails
    assert {run.run_id for run in result.runs} == set(PARAMS["runs"])
    assert not any(where == PRV_RUN for where, _ in fails)  # the other runs still audited, and pass


def test_nan_in_a_record_is_refused_when_loading(tmp_path):
    from smoothnet.records import RecordError, load_record

    (tmp_path / "record.json").write_text('{"privacy": {"epsilon": NaN}}')
    with pytest.raises(RecordError, match=r"record.json.*NaN"):
        load_record(tmp_path / "record.json")


def test_exit_codes_separate_passed_failed_and_crashed(repo, monkeypatch):
    assert cli(repo) == EXIT_PASSED
    edit_record(repo, DP_RUN, lambda r: r["results"].update(final_test_accuracy=0.99))
    assert cli(repo) == EXIT_FAILED

    def crash(*args, **kwargs):
        raise RuntimeError("a bug in the audit")

    monkeypatch.setattr("smoothnet.audit.runner.check_report", crash)
    assert cli(repo) == EXIT_CRASHED


def test_crash_leaves_the_previous_report_marked_stale(repo, monkeypatch):
    assert cli(repo) == EXIT_PASSED
    assert "**PASSED**" in (repo / "audit/audit.md").read_text()

    def crash(*args, **kwargs):
        raise RuntimeError("a bug in the audit")

    monkeypatch.setattr("smoothnet.audit.runner.check_report", crash)
    assert cli(repo) == EXIT_CRASHED
    assert (repo / "audit/audit.md").read_text().startswith("> **STALE**")
    assert json.loads((repo / "audit/audit.json").read_text())["passed"] is False
