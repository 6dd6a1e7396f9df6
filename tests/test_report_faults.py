"""The report under bad records and failing renders: refused naming the file, never half-written."""

from __future__ import annotations

import json

import pytest

from smoothnet.io import atomic_write_json, sha256_file
from smoothnet.records import RecordError
from smoothnet.report import build
from smoothnet.report.build import render_report
from smoothnet.report.runs import ReportInputError
from tests.test_report import PUBLISHED, make_record, write_runs


@pytest.fixture
def repo(tmp_path):
    write_runs(tmp_path / "runs", {"a-s0": make_record("a-s0")})
    render_report(tmp_path / "runs", PUBLISHED, tmp_path / "paper", root=tmp_path)
    return tmp_path


def _snapshot(folder):
    return {
        p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_failing_render_leaves_the_previous_report_whole(repo, monkeypatch):
    before = _snapshot(repo / "paper")
    write_runs(repo / "runs", {"b-s0": make_record("b-s0")})

    class Broken:
        @staticmethod
        def render(ctx):
            raise RuntimeError("figure failed half-way")

    # the third section in render order, after two were written
    monkeypatch.setattr(build, "BUILDERS", {**build.BUILDERS, build.SECTIONS[2]: Broken})
    with pytest.raises(RuntimeError, match="half-way"):
        render_report(repo / "runs", PUBLISHED, repo / "paper", root=repo)
    assert _snapshot(repo / "paper") == before
    assert not list((repo / "paper").glob(".rendering-*"))


def test_accuracy_outside_0_1_is_refused_naming_file_and_field(repo):
    path = repo / "runs/a-s0/record.json"
    record = json.loads(path.read_text())
    record["results"]["test_accuracy_at_best_val"] = 1e308
    atomic_write_json(path, record)
    with pytest.raises(
        ReportInputError, match=r"a-s0/record.json: results.test_accuracy_at_best_val = 1e\+308"
    ):
        render_report(repo / "runs", PUBLISHED, repo / "paper", root=repo)


def test_nan_in_a_record_is_refused_naming_the_file(repo):
    path = repo / "runs/a-s0/record.json"
    record = json.loads(path.read_text())
    record["results"]["final_test_accuracy"] = float("nan")
    path.write_text(json.dumps(record))  # Python writes NaN; strict JSON has no such number
    with pytest.raises(RecordError, match=r"a-s0/record.json.*NaN"):
        render_report(repo / "runs", PUBLISHED, repo / "paper", root=repo)
