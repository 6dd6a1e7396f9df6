"""``smoothnet report --root``: paths are read under the root, as for ``smoothnet audit --root``."""

from __future__ import annotations

import argparse

from smoothnet.report import cli


def _report(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.main(parser.parse_args(list(argv)))


def test_paths_are_resolved_under_root(tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    root = tmp_path / "repo"
    (root / "paper").mkdir(parents=True)
    (root / "params.yaml").write_text("report: {published: paper/none.yaml}\n")
    assert _report("--root", str(root), "--params", "params.yaml") == 2
    err = capsys.readouterr().err
    assert f"{root / 'paper' / 'none.yaml'}: published numbers file not found" in err
    assert not (elsewhere / "paper").exists()
