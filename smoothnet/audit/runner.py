"""Run every audit check over the stored results: records, params.yaml, dvc.lock, prepared-data manifests,
the report manifest and the canary-audit result. Nothing is retrained."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from smoothnet.audit.checks import FAIL, PASS, SKIP, WARN, Check, check_maker
from smoothnet.audit.composed_privacy import apply_composed_privacy
from smoothnet.audit.dvclock import LockError, load_lock
from smoothnet.audit.freshness import check_record_cited, check_report, load_report_manifest
from smoothnet.audit.privacy_checks import EPSILON_TOLERANCE, check_privacy
from smoothnet.audit.provenance import (
    HashCache,
    check_dataset,
    check_environment,
    check_identity,
    check_lock,
    check_locked_outputs,
    check_params,
    expected_stage,
    load_and_validate,
    split_stage,
)
from smoothnet.audit.sanity import check_sanity
from smoothnet.io import loads_json
from smoothnet.params import RUN_GROUPS, ParamsError, load_params
from smoothnet.profiles import NOT_A_RESULT_PROFILES
from smoothnet.records import find_records, record_hash

AUDIT_OPTIONS = {"epsilon_tolerance": EPSILON_TOLERANCE, "out": "audit", "allow_changed_deps": False}


class AuditInputError(ValueError):
    """An audit input (params.yaml, dvc.lock, runs folder) is missing or unreadable."""


def audit_options(params: dict[str, Any]) -> dict[str, Any]:
    """The ``audit`` section of params.yaml with defaults; unknown keys are an error."""
    section = params.get("audit") or {}
    if not isinstance(section, dict):
        raise AuditInputError("params.yaml: 'audit' must be a mapping")
    unknown = sorted(set(section) - set(AUDIT_OPTIONS))
    if unknown:
        raise AuditInputError(
            f"params.yaml audit: unknown key(s) {unknown}; valid keys: {sorted(AUDIT_OPTIONS)}"
        )
    options = {**AUDIT_OPTIONS, **section}
    tolerance = options["epsilon_tolerance"]
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 <= tolerance < 1:
        raise AuditInputError(
            f"params.yaml audit.epsilon_tolerance must be a number in [0, 1), got {tolerance!r}"
        )
    return options


# Where each group of params.yaml writes its records (dvc.yaml, ablations/dvc.yaml): an audit of some
# folders expects records of exactly the runs that write there.
RECORD_FOLDERS = {"runs": "runs", "ablations": "ablations/runs"}


@dataclass(frozen=True)
class AuditConfig:
    """Where the audit reads from (paths relative to ``root`` unless absolute)."""

    root: Path = Path(".")
    runs: str | list[str] | tuple[str, ...] = ("runs",)
    params: str = "params.yaml"
    lock: str = "dvc.lock"
    report_manifest: str = "paper/report_manifest.json"
    prepared: str = "data/prepared"
    canary: str = "audit/canary.json"
    changed_deps: str | None = (
        None  # fail or warn when a locked dependency changed; None: params audit section
    )
    epsilon_tolerance: float | None = None  # None: params audit section (default 0.01)

    def path(self, value: str) -> Path:
        """``value`` resolved against the repository root."""
        p = Path(value)
        return p if p.is_absolute() else self.root / p


@dataclass
class RunAudit:
    """The audit of one record."""

    path: str
    run_id: str
    profile: str
    private: bool | None
    checks: list[Check] = field(default_factory=list)
    epsilons: dict[str, float] | None = None
    recorded_epsilon: float | None = None
    accountant: str | None = None
    target_epsilon: float | None = None

    @property
    def failed(self) -> list[Check]:
        """The failing checks."""
        return [c for c in self.checks if c.status == FAIL]

    @property
    def label(self) -> str:
        """How the report labels this run's profile."""
        if self.profile in NOT_A_RESULT_PROFILES:
            return f"{self.profile} (not a result)"
        return self.profile

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "path": self.path,
            "run_id": self.run_id,
            "profile": self.profile,
            "label": self.label,
            "private": self.private,
            "passed": not self.failed,
            "accountant": self.accountant,
            "recorded_epsilon": self.recorded_epsilon,
            "target_epsilon": self.target_epsilon,
            "epsilon_by_accountant": self.epsilons,
            "checks": [c.to_dict() for c in self.checks],
        }


@dataclass
class AuditResult:
    """Every run's audit plus report-level and canary checks."""

    runs: list[RunAudit]
    report_checks: list[Check]
    canary_checks: list[Check]
    canary: dict[str, Any] | None
    inputs: dict[str, str]
    options: dict[str, Any] = field(default_factory=dict)
    not_yet_trained: list[str] = field(default_factory=list)  # in params.yaml, neither locked nor recorded

    @property
    def failures(self) -> list[tuple[str, Check]]:
        """``(where, check)`` for every failing check; ``where`` is a run id, "report" or "canary"."""
        out = [(run.run_id, c) for run in self.runs for c in run.failed]
        out += [("report", c) for c in self.report_checks if c.status == FAIL]
        out += [("canary", c) for c in self.canary_checks if c.status == FAIL]
        return out

    @property
    def passed(self) -> bool:
        """True when no check failed."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "passed": self.passed,
            "n_runs": len(self.runs),
            "n_failures": len(self.failures),
            "failures": [{"where": where, **c.to_dict()} for where, c in self.failures],
            "inputs": self.inputs,
            "runs": [r.to_dict() for r in self.runs],
            "report": [c.to_dict() for c in self.report_checks],
            "canary_checks": [c.to_dict() for c in self.canary_checks],
            "canary": self.canary,
            "not_yet_trained": self.not_yet_trained,
        }


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, POSIX-style, as the report manifest cites records."""
    return Path(os.path.relpath(path.resolve(), root.resolve())).as_posix()


def _folders(folders: str | list[str] | tuple[str, ...]) -> list[str]:
    return [folders] if isinstance(folders, str) else list(folders)


def _names(folders: str | list[str] | tuple[str, ...]) -> str:
    return ", ".join(_folders(folders))


def load_inputs(config: AuditConfig) -> tuple[dict[str, Any], dict[str, Any], list[Path]]:
    """params.yaml, dvc.lock stages and the record paths; a clear error before any checking."""
    runs_dirs = [config.path(folder) for folder in _folders(config.runs)]
    if not runs_dirs[0].is_dir():
        raise AuditInputError(
            f"{runs_dirs[0]}: runs folder not found (pass --runs, or --root for the repository)"
        )
    try:
        params = load_params(config.path(config.params))
    except ParamsError as exc:
        raise AuditInputError(str(exc)) from exc
    try:
        stages = load_lock(config.path(config.lock))
    except LockError as exc:
        raise AuditInputError(str(exc)) from exc
    return params, stages, find_records(runs_dirs)


def audit_record(
    path: Path,
    config: AuditConfig,
    params: dict[str, Any],
    locks: dict[str, dict[str, Any] | None],
    hashes: HashCache,
    cited: dict[str, str] | None,
) -> RunAudit:
    """All checks of one record."""
    rel = _rel(path, config.root)
    record, checks = load_and_validate(path)
    if record is None or any(c.status == FAIL for c in checks):
        run_id = record.get("run_id", path.parent.name) if isinstance(record, dict) else path.parent.name
        profile = record.get("profile", "?") if isinstance(record, dict) else "?"
        return RunAudit(rel, str(run_id), str(profile), None, checks)
    privacy = record["privacy"]
    run = RunAudit(
        rel,
        record["run_id"],
        record["profile"],
        privacy["private"],
        checks,
        recorded_epsilon=privacy.get("epsilon"),
        accountant=privacy.get("accountant"),
        target_epsilon=privacy.get("target_epsilon"),
    )
    privacy_checks, run.epsilons = check_privacy(record, config.epsilon_tolerance)
    privacy_checks, run.epsilons = apply_composed_privacy(record, privacy_checks, run.epsilons)
    run.checks += privacy_checks
    run.checks += check_identity(record, path, params)
    run.checks += check_params(record, params)
    lock_name, _ = split_stage(expected_stage(params, record["run_id"]))
    if lock_name == "dvc.lock":
        lock_name = config.lock  # the main lock may be given as --lock
    run.checks += check_lock(
        record, rel, _lock_stages(lock_name, config, locks), params, hashes, config.changed_deps, lock_name
    )
    run.checks += check_dataset(record, config.path(config.prepared))
    run.checks += check_environment(record)
    run.checks.append(check_record_cited(rel, record_hash(record), cited))
    run.checks += check_sanity(record)
    return run


def _lock_stages(
    name: str, config: AuditConfig, locks: dict[str, dict[str, Any] | None]
) -> dict[str, Any] | None:
    """Stages of lock file ``name`` (``dvc.lock``, ``ablations/dvc.lock``), read once per audit; ``None`` if absent."""
    if name not in locks:
        path = config.path(name)
        try:
            locks[name] = load_lock(path) if path.exists() else None
        except LockError as exc:
            raise AuditInputError(str(exc)) from exc
    return locks[name]


_canary_check = check_maker("canary")


def check_canary(path: Path) -> tuple[list[Check], dict[str, Any] | None]:
    """Include the canary audit's result when its file exists (``smoothnet audit canary`` writes it)."""
    if not path.exists():
        return [
            _canary_check("canary audit", str(path), SKIP, "no canary result (run `smoothnet audit canary`)")
        ], None
    try:
        result = loads_json(path.read_text(encoding="utf-8"))
        dp, off, claim = result["dp"], result["no_noise"], float(result["claimed_epsilon"])
        dp_bound, off_bound = float(dp["epsilon_lower_bound"]), float(off["epsilon_lower_bound"])
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        return [_canary_check("canary audit", str(path), FAIL, f"unreadable canary result ({exc})")], None
    detected = off_bound > claim
    checks = [
        _canary_check(
            "DP run: bound below claim",
            "dp.epsilon_lower_bound",
            PASS if dp_bound < claim and dp_bound <= float(dp["claimed_epsilon"]) else FAIL,
            f"empirical lower bound {dp_bound:.3f} vs claimed epsilon {float(dp['claimed_epsilon']):.3f} "
            f"({dp['correct']}/{dp['guesses']} canary guesses correct)",
        ),
        _canary_check(
            "no-noise run: violation detected",
            "no_noise.epsilon_lower_bound",
            PASS if detected else FAIL,
            f"with sigma = 0 the bound is {off_bound:.3f} vs claim {claim:.3f} "
            f"({off['correct']}/{off['guesses']} correct): "
            + ("the audit detects a broken run" if detected else "the audit is too weak to detect it"),
        ),
    ]
    variance = dp.get("noise_variance_test")
    if not isinstance(variance, dict) or "rejected" not in variance:
        status = FAIL
        message = "no noise-variance test in the canary result (written by an older audit); re-run it"
    else:
        status = FAIL if variance["rejected"] else PASS
        message = (
            f"excluded canaries' score variance {float(variance['variance_ratio']):.3f} x the claimed sigma's "
            f"(p = {float(variance['p_value']):.3g}, level {variance['level']})"
            + (": the run had less noise than claimed" if variance["rejected"] else "")
        )
    checks.append(_canary_check("DP run: noise as claimed", "dp.noise_variance_test", status, message))
    if float(dp.get("noise_multiplier", 0)) <= 0:
        checks.append(
            _canary_check("DP run had noise", "dp.noise_multiplier", FAIL, "the DP arm ran without noise")
        )
    return checks, result


def run_audit(config: AuditConfig) -> AuditResult:
    """Audit every record under the runs folder; never raises for a failing check, only for unreadable inputs."""
    params, stages, paths = load_inputs(config)
    options = audit_options(params)
    tolerance = options["epsilon_tolerance"] if config.epsilon_tolerance is None else config.epsilon_tolerance
    changed = config.changed_deps or (WARN if options["allow_changed_deps"] else FAIL)
    config = replace(config, epsilon_tolerance=float(tolerance), changed_deps=changed)
    hashes = HashCache(config.root)
    manifest_path = config.path(config.report_manifest)
    try:
        loaded = load_report_manifest(manifest_path)
    except ValueError:
        loaded = None  # reported as a failure by check_report below
    cited = loaded[0] if loaded else None
    locks: dict[str, dict[str, Any] | None] = {config.lock: stages}
    runs = [_audit_record_or_fail(p, config, params, locks, hashes, cited) for p in paths]
    report_locked = isinstance(stages.get("report"), dict)
    report_checks = check_report(config.root, manifest_path, {r.path for r in runs}, report_locked)
    for stage in ("report", "canary"):  # what `dvc metrics/plots show` and the paper read, vs dvc.lock
        if isinstance(stages.get(stage), dict):
            report_checks += check_locked_outputs(stage, stages[stage], hashes)
    missing, not_yet_trained = _runs_without_records(params, {r.run_id for r in runs}, config, locks)
    report_checks += missing
    if not runs:
        report_checks.insert(
            0,
            Check(
                "provenance",
                "records present",
                _names(config.runs),
                FAIL,
                f"no record.json under {_names(config.runs)}",
            ),
        )
    canary_checks, canary = check_canary(config.path(config.canary))
    inputs = {
        "root": str(config.root),
        "runs": _names(config.runs),
        "params": config.params,
        "lock": config.lock,
        "report_manifest": config.report_manifest,
        "prepared": config.prepared,
        "canary": config.canary,
    }
    inputs["epsilon_tolerance"] = str(config.epsilon_tolerance)
    inputs["changed_deps"] = str(config.changed_deps)
    return AuditResult(runs, report_checks, canary_checks, canary, inputs, options, not_yet_trained)


def _audit_record_or_fail(path: Path, config: AuditConfig, *args: Any) -> RunAudit:
    """:func:`audit_record`, with anything it did not foresee turned into a failed check on this record
    (one bad record never stops the audit of the others)."""
    try:
        return audit_record(path, config, *args)
    except AuditInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported as this record's failure, with its type
        check = Check("schema", "record audit", "record.json", FAIL, f"{path}: {type(exc).__name__}: {exc}")
        return RunAudit(_rel(path, config.root), path.parent.name, "?", None, [check])


def _runs_without_records(
    params: dict[str, Any], recorded: set[str], config: AuditConfig, locks: dict[str, dict[str, Any] | None]
) -> tuple[list[Check], list[str]]:
    """Every run of params.yaml has a record, or is listed as not yet trained (never locked either).

    A run whose stage dvc.lock lists but whose record is gone fails: deleting an unwanted seed's folder
    must not make it disappear from the report."""
    checks, untrained = [], []
    folders = [_rel(config.path(folder), config.root).rstrip("/") + "/" for folder in _folders(config.runs)]
    for group in RUN_GROUPS:
        for run_id in sorted(params.get(group) or {}):
            if run_id in recorded:
                continue
            lock_name, key = split_stage(expected_stage(params, run_id))
            stages = _lock_stages(config.lock if lock_name == "dvc.lock" else lock_name, config, locks)
            locked = stages is not None and isinstance(stages.get(key), dict)
            outs = (
                [str(o["path"]) for o in stages[key].get("outs") or [] if isinstance(o, dict)]
                if locked
                else []
            )
            record = next(
                (o for o in outs if o.endswith("record.json")),
                f"{RECORD_FOLDERS[group]}/{run_id}/record.json",
            )
            if not any(record.startswith(folder) for folder in folders):
                continue  # another pipeline's run (the ablation grid's, or the main one's): its own audit
            if locked:
                checks.append(
                    Check(
                        "provenance",
                        "locked run has a record",
                        record,
                        FAIL,
                        f"{lock_name} locks stage {key!r} but {record} is not among the audited records "
                        "(restore it from git, or remove the run from params.yaml and `dvc repro`)",
                    )
                )
            else:
                untrained.append(run_id)
    return checks, untrained
