"""Provenance: was this record produced by these parameters, this code and this dataset?

- schema: every required field present with the right type (``smoothnet.records.validate_record``);
- identity: ``run_id`` matches its folder, ``stage`` is ``train@<run_id>``;
- params: the record's ``params`` equal ``resolve_run(params.yaml, run_id)`` now;
- dvc.lock: the stage exists, its locked params equal params.yaml now and the record's params, the record
  file's md5 equals the locked output's, and every locked dependency (code, prepared data) is unchanged;
- dataset: the fingerprint and manifest sha256 equal the prepared data's manifest (skipped when the
  prepared data is not on this machine).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import dpath

from smoothnet.audit.checks import FAIL, PASS, SKIP, WARN, Check, check_maker, diff_values, short
from smoothnet.audit.dvclock import dvc_md5, dvcignore_filter, entries
from smoothnet.io import loads_json, sha256_file
from smoothnet.params import ParamsError, params_from_lock, resolve_run, run_group, stage_name
from smoothnet.records import RecordError, validate_record

GROUP = "provenance"
MAX_LISTED_DIFFS = 8


_check = check_maker(GROUP)


class HashCache:
    """DVC md5s of paths under a root, each computed once per audit (many stages share code deps)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._md5: dict[str, str | None] = {}
        self._ignored = None

    def md5(self, rel: str) -> str | None:
        """DVC md5 of ``root/rel`` (honouring ``.dvcignore`` for folders); ``None`` if it does not exist."""
        if rel not in self._md5:
            path = self.root / rel
            if path.is_dir() and self._ignored is None:
                self._ignored = dvcignore_filter(self.root)
            self._md5[rel] = dvc_md5(path, self._ignored)
        return self._md5[rel]


def load_and_validate(path: Path) -> tuple[dict[str, Any] | None, list[Check]]:
    """Read a record; one failing check per missing or mistyped field (the record is still returned if JSON)."""
    try:
        record = loads_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # NaN/Infinity and deep nesting included
        return None, [_check("schema", "record.json", FAIL, f"cannot read the record ({exc})")]
    if not isinstance(record, dict):
        return None, [_check("schema", "record.json", FAIL, "the record is not a JSON object")]
    try:
        validate_record(record, where="record")
    except RecordError as exc:
        problems = str(exc).removeprefix("record: ").split("; ")
        checks = []
        for problem in problems:
            match = re.search(r"'([^']+)'", problem)
            checks.append(_check("schema", match.group(1) if match else "schema_version", FAIL, problem))
        return record, checks
    return record, [_check("schema", "schema", PASS, "every required field present with the right type")]


def expected_stage(params: dict[str, Any] | None, run_id: str) -> str:
    """The DVC stage that trains ``run_id``: ``train@<id>``, or ``ablations/dvc.yaml:ablate@<id>`` for ablations."""
    try:
        return stage_name(params or {}, run_id)
    except ParamsError:
        return f"train@{run_id}"


def split_stage(stage: str) -> tuple[str, str]:
    """``("ablations/dvc.lock", "ablate@x")`` for ``"ablations/dvc.yaml:ablate@x"``; ``("dvc.lock", stage)`` else."""
    if ":" in stage:
        dvcfile, name = stage.rsplit(":", 1)
        return (Path(dvcfile).parent / "dvc.lock").as_posix(), name
    return "dvc.lock", stage


def check_identity(record: dict[str, Any], path: Path, params: dict[str, Any] | None = None) -> list[Check]:
    """run_id matches the record's folder and the stage is the one params.yaml assigns (``train@<run_id>``)."""
    run_id = record["run_id"]
    stage = expected_stage(params, run_id)
    checks = []
    if path.parent.name != run_id:
        checks.append(
            _check(
                "identity", "run_id", FAIL, f"run_id {run_id!r} but the record lives in {path.parent.name!r}/"
            )
        )
    if record["stage"] != stage:
        checks.append(_check("identity", "stage", FAIL, f"stage {record['stage']!r}, expected {stage!r}"))
    if record["params"].get("run_id") not in (None, run_id):
        checks.append(
            _check(
                "identity",
                "params.run_id",
                FAIL,
                f"params.run_id {record['params']['run_id']!r} != {run_id!r}",
            )
        )
    return checks or [_check("identity", "run_id", PASS, f"stage {stage}")]


def _diff_message(diffs: list[tuple[str, Any, Any]], expected_name: str, actual_name: str) -> str:
    shown = [f"{path}: {expected_name} {short(a, 40)}, {actual_name} {short(b, 40)}" for path, a, b in diffs]
    more = len(shown) - MAX_LISTED_DIFFS
    return "; ".join(shown[:MAX_LISTED_DIFFS]) + (f"; and {more} more" if more > 0 else "")


def check_params(record: dict[str, Any], params: dict[str, Any] | None) -> list[Check]:
    """The record's params equal what params.yaml resolves to for its run now (one failure per changed key)."""
    if params is None:
        return [_check("params", "params", SKIP, "no params.yaml given")]
    run_id = record["run_id"]
    try:
        expected = resolve_run(params, run_id)
    except ParamsError as exc:
        return [_check("params", "params", FAIL, f"params.yaml has no run {run_id!r} ({exc})")]
    diffs = diff_values(expected, record["params"])
    if not diffs:
        return [_check("params", "params", PASS, "record params equal params.yaml for this run")]
    return [
        _check(
            "params",
            f"params.{path}",
            FAIL,
            f"params.yaml now has {short(now, 40)}, the run used {short(used, 40)} (params changed after the run?)",
        )
        for path, now, used in diffs
    ]


def check_lock(
    record: dict[str, Any],
    record_rel: str,
    stages: dict[str, Any] | None,
    params: dict[str, Any] | None,
    hashes: HashCache,
    changed_deps_status: str = FAIL,
    lock_name: str = "dvc.lock",
) -> list[Check]:
    """Compare the record with its stage in ``lock_name`` (params, output md5, deps md5).

    ``stages`` is that lock file's ``stages`` mapping, ``None`` when the file does not exist. Paths in the
    lock are relative to the stage's working directory, the repository root for every stage here.
    """
    full_stage = expected_stage(params, record["run_id"])
    _, key = split_stage(full_stage)
    if stages is None:
        return [
            _check("dvc.lock", lock_name, FAIL, f"{lock_name} not found: stage {full_stage!r} is not locked")
        ]
    stage = stages.get(key)
    if not isinstance(stage, dict):
        return [
            _check(
                "dvc.lock",
                "dvc.lock",
                FAIL,
                f"{lock_name} has no stage {key!r} (run `dvc repro` / `dvc commit`)",
            )
        ]
    checks = _lock_params(record, stage, params)
    checks += _lock_output(record_rel, stage, hashes)
    record_out = next((str(o["path"]) for o in entries(stage, "outs") if record_rel == str(o["path"])), "")
    checks += check_locked_outputs(key, stage, hashes, exclude=(record_out,))
    checks += _lock_deps(stage, hashes, changed_deps_status)
    return checks


def _lock_params(record: dict[str, Any], stage: dict[str, Any], params: dict[str, Any] | None) -> list[Check]:
    locked = (stage.get("params") or {}).get("params.yaml") or {}
    if not locked:
        return [
            _check(
                "dvc.lock params", "dvc.lock params", WARN, "the locked stage records no params.yaml values"
            )
        ]
    checks = []
    if params is not None:
        for key, value in sorted(locked.items()):
            try:
                now = dpath.get(params, key, separator=".")  # how DVC reads a locked params key
            except KeyError:
                checks.append(
                    _check(
                        "dvc.lock params",
                        f"params.yaml:{key}",
                        FAIL,
                        f"{key!r} locked but gone from params.yaml",
                    )
                )
                continue
            for path, was, is_now in diff_values(value, now, key):
                checks.append(
                    _check(
                        "dvc.lock params",
                        f"params.yaml:{path}",
                        FAIL,
                        f"dvc.lock has {short(was, 40)}, params.yaml now {short(is_now, 40)} (changed after the run)",
                    )
                )
    run_id = record["run_id"]
    try:
        group = run_group(params or {}, run_id)
    except ParamsError:
        group = "runs"
    run_key = f"{group}.{run_id}"
    if "train" in locked and run_key in locked:
        # the stage locks every layer its run reads (train, its model, its recipe, the run itself)
        rebuilt = resolve_run(params_from_lock(locked), run_id)
        diffs = diff_values(rebuilt, record["params"])
        if diffs:
            checks.append(
                _check(
                    "dvc.lock params",
                    "params",
                    FAIL,
                    "record params differ from dvc.lock's: " + _diff_message(diffs, "lock", "record"),
                )
            )
    return checks or [
        _check("dvc.lock params", "dvc.lock params", PASS, f"{len(locked)} locked param group(s) unchanged")
    ]


def _lock_output(record_rel: str, stage: dict[str, Any], hashes: HashCache) -> list[Check]:
    for out in entries(stage, "outs"):
        out_path = str(out["path"]).rstrip("/")
        if out_path == record_rel or record_rel.startswith(out_path + "/"):
            locked = out.get("md5")
            now = hashes.md5(out_path)
            if locked is None:
                return [_check("dvc.lock output", "dvc.lock outs", WARN, f"{out_path}: no md5 in dvc.lock")]
            if now != locked:
                return [
                    _check(
                        "dvc.lock output",
                        "record.json",
                        FAIL,
                        f"{out_path} md5 {now} != dvc.lock {locked}: the record was edited after the run",
                    )
                ]
            return [_check("dvc.lock output", "record.json", PASS, f"{out_path} md5 matches dvc.lock")]
    return [_check("dvc.lock output", "dvc.lock outs", FAIL, f"the stage's outs do not include {record_rel}")]


# Outputs kept in DVC's cache rather than git (checkpoints, prepared data): absent on a fresh clone.
CACHED_OUTPUT_PREFIXES = ("checkpoints/", "data/")


def check_locked_outputs(
    stage_name: str, stage: dict[str, Any], hashes: HashCache, exclude: tuple[str, ...] = ()
) -> list[Check]:
    """Every output of a locked stage still has the md5 dvc.lock recorded (a figure redrawn and re-hashed
    into the report manifest, an edited DVCLive ``metrics.json`` or canary result fails here).

    Outputs in ``exclude`` are checked elsewhere; cached outputs (checkpoints, data) absent here are skipped.
    """
    checks, compared = [], 0
    for out in entries(stage, "outs"):
        path = str(out["path"]).rstrip("/")
        if path in exclude:
            continue
        locked, now = out.get("md5"), hashes.md5(path)
        if now is None:
            cached = path.startswith(CACHED_OUTPUT_PREFIXES)
            checks.append(
                _check(
                    "locked output",
                    path,
                    SKIP if cached else FAIL,
                    f"output of {stage_name} not on this machine (`dvc pull` fetches it): not compared"
                    if cached
                    else f"output of {stage_name} in dvc.lock but missing (restore it from git, or `dvc repro`)",
                )
            )
        elif now != locked:
            checks.append(
                _check(
                    "locked output",
                    path,
                    FAIL,
                    f"md5 {now} != dvc.lock {locked} ({stage_name}): changed after the stage ran "
                    "(restore it, or `dvc repro` the stage)",
                )
            )
        else:
            compared += 1
    if compared:
        checks.append(
            _check("locked output", stage_name, PASS, f"{compared} output(s) of {stage_name} match dvc.lock")
        )
    return checks


def _lock_deps(stage: dict[str, Any], hashes: HashCache, changed_status: str) -> list[Check]:
    changed, absent = [], []
    deps = entries(stage, "deps")
    for dep in deps:
        path = str(dep["path"]).rstrip("/")
        now = hashes.md5(path)
        if now is None:
            absent.append(path)
        elif now != dep.get("md5"):
            changed.append(path)
    checks = []
    if changed:
        checks.append(
            _check(
                "dvc.lock deps",
                "dvc.lock deps",
                changed_status,
                f"changed since the run: {', '.join(changed)} (the result was produced by other code or data; "
                "`dvc status` shows it, `dvc repro` reruns it)",
                changed=changed,
            )
        )
    if absent:
        checks.append(
            _check(
                "dvc.lock deps",
                "dvc.lock deps",
                SKIP,
                f"not on this machine, not compared: {', '.join(absent)}",
            )
        )
    return checks or [_check("dvc.lock deps", "dvc.lock deps", PASS, f"{len(deps)} dependencies unchanged")]


def check_dataset(record: dict[str, Any], prepared_root: Path) -> list[Check]:
    """Fingerprint and manifest hash against ``<prepared_root>/<dataset>/manifest.json`` when present."""
    name = record["dataset"]["name"]
    manifest_path = prepared_root / name / "manifest.json"
    if not manifest_path.exists():
        return [
            _check(
                "dataset",
                "dataset.fingerprint",
                SKIP,
                f"{manifest_path} not present (prepared data not on this machine): fingerprint not compared",
            )
        ]
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return [_check("dataset", "dataset.fingerprint", FAIL, f"{manifest_path}: unreadable ({exc})")]
    checks = []
    diffs = diff_values(manifest.get("fingerprint"), record["dataset"]["fingerprint"])
    if diffs:
        checks.append(
            _check(
                "dataset",
                "dataset.fingerprint",
                FAIL,
                f"differs from {manifest_path}: "
                + _diff_message(diffs, "manifest", "record")
                + " (the run used another copy of the dataset)",
            )
        )
    digest = sha256_file(manifest_path)
    if digest != record["dataset"]["manifest_sha256"]:
        checks.append(
            _check(
                "dataset",
                "dataset.manifest_sha256",
                FAIL,
                f"record {record['dataset']['manifest_sha256'][:12]}..., {manifest_path} is {digest[:12]}...",
            )
        )
    checks = checks or [
        _check("dataset", "dataset.fingerprint", PASS, f"fingerprint and manifest match {manifest_path}")
    ]
    if manifest.get("fingerprint_matches_official") is False:
        checks.append(
            _check(
                "dataset",
                "dataset.fingerprint",
                WARN,
                "the prepared data is NOT the official dataset (manifest says so)",
            )
        )
    return checks


def check_environment(record: dict[str, Any]) -> list[Check]:
    """Note (not fail) a run made from uncommitted code: its git revision does not pin the code exactly."""
    env = record["environment"]
    if env.get("git_revision") is None:
        return [_check("code revision", "environment.git_revision", WARN, "no git revision recorded")]
    if env.get("git_dirty"):
        return [
            _check(
                "code revision",
                "environment.git_dirty",
                WARN,
                f"trained from a dirty tree at {env['git_revision'][:10]}; dvc.lock's deps pin the code instead",
            )
        ]
    return [
        _check("code revision", "environment.git_revision", PASS, f"clean tree at {env['git_revision'][:10]}")
    ]
