"""``smoothnet audit``: verify the stored results and their privacy claims without retraining.

``smoothnet audit canary`` runs the empirical one-run canary audit and writes its JSON result, which the
main audit then includes.

Exit codes: 0 every check passed; 1 a check failed; 2 an input is missing or unreadable (nothing audited);
3 the audit itself crashed (a bug: the traceback is printed). Before auditing, the previous ``audit.md`` /
``audit.json`` are marked stale, so a crash never leaves an old "PASSED" standing.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import traceback
from pathlib import Path

from smoothnet.audit.checks import WARN

EXIT_PASSED, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CRASHED = 0, 1, 2, 3

HELP = "audit stored runs: re-derive epsilons (4 accountants), provenance, report freshness, canary audit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the main audit, and the ``canary`` sub-command."""
    parser.add_argument(
        "--root", default=".", help="repository root; other paths are relative to it (default .)"
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["runs"],
        help="folders of run records (default: runs; the ablation pipeline audits ablations/runs)",
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("--lock", default="dvc.lock", help="DVC lock file (default dvc.lock)")
    parser.add_argument(
        "--report-manifest",
        default="paper/report_manifest.json",
        help="the report's manifest of cited hashes",
    )
    parser.add_argument(
        "--prepared", default="data/prepared", help="prepared datasets (manifests compared if present)"
    )
    parser.add_argument(
        "--canary", default="audit/canary.json", help="canary-audit result to include if present"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="folder for audit.md and audit.json (default: params audit.out, else audit)",
    )
    parser.add_argument(
        "--allow-changed-deps",
        action="store_true",
        help="report code/data that changed since a run (per dvc.lock) as a warning instead of a failure",
    )
    sub = parser.add_subparsers(dest="audit_command", metavar="{canary}")
    canary = sub.add_parser("canary", help="empirical one-run canary audit (Steinke et al. 2023)")
    from smoothnet.audit.canary import CanaryConfig

    defaults = CanaryConfig()
    canary.add_argument("--out", dest="canary_out", default="audit/canary.json", help="JSON result path")
    canary.add_argument("--num-canaries", type=int, default=defaults.num_canaries)
    canary.add_argument("--guesses-per-side", type=int, default=defaults.guesses_per_side)
    canary.add_argument(
        "--epsilon",
        dest="target_epsilon",
        type=float,
        default=defaults.target_epsilon,
        help="claimed epsilon",
    )
    canary.add_argument("--delta", type=float, default=defaults.delta)
    canary.add_argument("--epochs", type=int, default=defaults.epochs)
    canary.add_argument("--batch-size", type=int, default=defaults.batch_size)
    canary.add_argument("--accountant", choices=("rdp", "prv"), default=defaults.accountant)
    canary.add_argument("--confidence", type=float, default=defaults.confidence)
    canary.add_argument("--seed", type=int, default=defaults.seed)


def main(args: argparse.Namespace) -> int:
    """Run the audit (or the canary audit); exit 0 only when every check passes."""
    if getattr(args, "audit_command", None) == "canary":
        return _canary(args)
    from smoothnet.audit.render import mark_stale, summary, write_reports
    from smoothnet.audit.runner import AuditConfig, AuditInputError, audit_options, run_audit
    from smoothnet.params import ParamsError, load_params

    root = Path(args.root)
    config = AuditConfig(
        root=root,
        runs=args.runs,
        params=args.params,
        lock=args.lock,
        report_manifest=args.report_manifest,
        prepared=args.prepared,
        canary=args.canary,
        changed_deps=WARN if args.allow_changed_deps else None,
    )
    try:
        try:
            out = Path(args.out or audit_options(load_params(config.path(config.params)))["out"])
        except ParamsError as exc:
            raise AuditInputError(str(exc)) from exc
        out = out if out.is_absolute() else root / out
        stored = _read_stored(out)
        mark_stale(out)
        result = run_audit(config)
        weaker = None if args.out else _weaker_than_stored(result, stored.get("audit.json"))
        if weaker:  # a weaker audit never replaces the stored one: put it back byte for byte
            _restore_stored(out, stored)
            out = Path(tempfile.mkdtemp(prefix="smoothnet-audit-"))
        md, js = write_reports(result, out)
    except AuditInputError as exc:
        print(f"smoothnet audit: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception:  # noqa: BLE001 - a crash is not a verdict: its own exit code, the report stays stale
        traceback.print_exc()
        print(
            "smoothnet audit: CRASHED (a bug, not a verdict); the previous report is marked stale",
            file=sys.stderr,
        )
        return EXIT_CRASHED
    for where, check in result.failures:
        print(f"FAIL {where}: {check.field}: {check.message}", file=sys.stderr)
    verdict = "passed" if result.passed else f"FAILED ({len(result.failures)} check(s))"
    print(f"audit {verdict}: {len(result.runs)} run(s), {summary(result.to_dict())}; report in {md} and {js}")
    if weaker:
        print(f"audit: {weaker}; kept the stored audit, wrote this one to {out} (--out DIR to choose)")
    return EXIT_PASSED if result.passed else EXIT_FAILED


def _read_stored(out: Path) -> dict[str, bytes]:
    """The stored ``audit.md`` / ``audit.json`` as bytes (to put back if this audit checks less)."""
    return {name: (out / name).read_bytes() for name in ("audit.md", "audit.json") if (out / name).is_file()}


def _restore_stored(out: Path, stored: dict[str, bytes]) -> None:
    from smoothnet.io import atomic_write_bytes

    for name, data in stored.items():
        atomic_write_bytes(out / name, data)


def _weaker_than_stored(result, stored_json: bytes | None) -> str | None:
    """Why ``result`` must not replace the stored ``audit.json`` (it checked less), or None.

    An audit on a machine without the prepared data skips the checks that need it; overwriting the
    stored audit with that would lose evidence (and dirty the tracked tree). A failure is never weaker.
    """
    import json

    from smoothnet.audit.checks import SKIP
    from smoothnet.audit.render import check_counts

    if stored_json is None:
        return None
    try:
        stored = check_counts(json.loads(stored_json))
    except (ValueError, KeyError, TypeError, RecursionError):
        return None  # unreadable or an older format: replace it
    now = check_counts(result.to_dict())
    if result.passed and now[SKIP] > stored[SKIP]:
        return (
            f"{now[SKIP]} check(s) skipped where the stored audit.json skipped {stored[SKIP]} "
            f"(inputs such as data/prepared are not on this machine)"
        )
    return None


def _canary(args: argparse.Namespace) -> int:
    from smoothnet.audit.canary import CanaryAuditError, CanaryConfig, run_canary_audit
    from smoothnet.io import atomic_write_json

    # each canary option's dest is the name of the CanaryConfig field it sets
    fields = {f.name for f in dataclasses.fields(CanaryConfig)}
    config = CanaryConfig(**{name: value for name, value in vars(args).items() if name in fields})
    try:
        config.validate()
    except CanaryAuditError as exc:
        print(f"smoothnet audit canary: {exc}", file=sys.stderr)
        return 2
    result = run_canary_audit(config)
    out = Path(args.canary_out)
    atomic_write_json(out if out.is_absolute() else Path(args.root) / out, result)
    dp, off = result["dp"], result["no_noise"]
    print(
        f"canary audit: DP run bound {dp['epsilon_lower_bound']:.3f} (claim {dp['claimed_epsilon']:.3f}); "
        f"no-noise run bound {off['epsilon_lower_bound']:.3f} (claim {result['claimed_epsilon']}); "
        f"{'passed' if result['passed'] else 'FAILED'}; written to {out}"
    )
    return 0 if result["passed"] else 1
