"""``smoothnet train``: expected mistakes end in one line naming the run or key and the fix, exit code 2."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from smoothnet.training import cli

ROOT = Path(__file__).resolve().parents[1]


def _train(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.main(parser.parse_args(list(argv)))


def _params(tmp_path: Path, **run) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["runs"] = {"tiny": {"dataset": "cifar10", "model": "smoothnet", "epochs": 1, **run}}
    params["train"].update(logical_batch_size=64, physical_batch_size=64, model_options={"width": 0.5})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("smoothnet train: error: "), err
    return err[0]


def test_unknown_run_suggests_the_closest_ids(capsys):
    assert _train("cifar10-smoothnet_w80d50-eps7-s9", "--params", str(ROOT / "params.yaml")) == 2
    line = _one_error_line(capsys)
    assert (
        "unknown run 'cifar10-smoothnet_w80d50-eps7-s9'" in line
        and "cifar10-smoothnet_w80d50-eps7-s0" in line
    )
    assert len(line) < 400  # not all 109 runs


def test_typo_key_names_the_key_and_the_likely_one(tmp_path, capsys):
    assert _train("tiny", "--params", str(_params(tmp_path, max_grad_nrom=2.0))) == 2
    assert "unknown training key(s) 'max_grad_nrom' (did you mean 'max_grad_norm'?)" in _one_error_line(
        capsys
    )


def test_missing_prepared_data_is_one_line(tmp_path, capsys):
    code = _train("tiny", "--params", str(_params(tmp_path)), "--data-root", str(tmp_path / "none"))
    assert code == 2
    assert "run `dvc repro prepare@cifar10`" in _one_error_line(capsys)


def test_epsilon_too_small_for_the_noise_search_names_the_run_and_key(prepared, tmp_path, capsys):
    params = _params(tmp_path, target_epsilon=1.0e-9)
    argv = ["tiny", "--params", str(params), "--data-root", str(prepared.parent), "--device", "cpu"]
    argv += ["--runs", str(tmp_path / "runs"), "--checkpoints", str(tmp_path / "ckpt"), "--no-progress"]
    assert _train(*argv) == 2
    line = _one_error_line(capsys)
    assert "run 'tiny': target_epsilon is too small" in line and "runs.tiny.target_epsilon" in line
    assert not (tmp_path / "runs" / "tiny" / "record.json").exists()


def test_ctrl_c_names_the_kept_checkpoint(tmp_path, capsys, monkeypatch):
    from smoothnet.training import trainer

    def interrupted(config, paths, **kwargs):
        paths.checkpoint_dir.mkdir(parents=True)
        (paths.checkpoint_dir / "last.pt").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    data = tmp_path / "data" / "cifar10"
    data.mkdir(parents=True)
    (data / "manifest.json").write_text("{}")
    argv = ["tiny", "--params", str(_params(tmp_path)), "--data-root", str(data.parent), "--device", "cpu"]
    assert _train(*argv, "--checkpoints", str(tmp_path / "ckpt")) == 130
    err = capsys.readouterr().err
    assert f"the checkpoint {tmp_path / 'ckpt' / 'tiny' / 'last.pt'} (last completed epoch) is kept" in err
    assert "Traceback" not in err
