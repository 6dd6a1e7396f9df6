"""A plain ``smoothnet audit`` never replaces the stored audit with one that checked less.

On a machine without the prepared data the dataset checks are skipped; the stored audit (which ran them)
stays, and the weaker one goes to a temporary folder. The summary counts passes, skips and failures.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from smoothnet.audit.cli import add_arguments
from smoothnet.audit.cli import main as audit_main
from tests.test_audit import pristine  # noqa: F401  (the fixture of a consistent set of stored results)


def _audit(root, *extra):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return audit_main(parser.parse_args(["--root", str(root), *extra]))


def test_audit_without_the_data_keeps_the_stored_audit(repo, capsys):
    assert _audit(repo) == 0
    stored = {name: (repo / "audit" / name).read_bytes() for name in ("audit.md", "audit.json")}
    capsys.readouterr()
    skipped_before = json.loads(stored["audit.json"])

    shutil.rmtree(repo / "data")
    assert _audit(repo) == 0
    out = capsys.readouterr().out
    assert {name: (repo / "audit" / name).read_bytes() for name in stored} == stored
    assert "kept the stored audit" in out and "check(s) skipped where the stored audit.json skipped" in out
    weaker = out.rsplit("wrote this one to ", 1)[1].split(" (--out", 1)[0]
    assert json.loads((Path(weaker) / "audit.json").read_text()) != skipped_before


def test_explicit_out_is_always_written_and_the_summary_counts_statuses(repo, tmp_path, capsys):
    assert _audit(repo) == 0
    shutil.rmtree(repo / "data")
    assert _audit(repo, "--out", str(tmp_path / "mine")) == 0
    out = capsys.readouterr().out
    assert "kept the stored audit" not in out
    report = json.loads((tmp_path / "mine" / "audit.json").read_text())
    checks = [c for run in report["runs"] for c in run["checks"]] + report["report"] + report["canary_checks"]
    counts = {s: sum(c["status"] == s for c in checks) for s in ("pass", "warn", "skip", "fail")}
    assert counts["skip"] > 0
    summary = f"{counts['pass']} passed, {counts['warn']} warned, {counts['skip']} skipped, 0 failed"
    assert summary in out.splitlines()[-1]
    assert summary in (tmp_path / "mine" / "audit.md").read_text()
