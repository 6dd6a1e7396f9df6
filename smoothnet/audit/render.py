"""The audit report as Markdown (for a reviewer) and JSON (for tools): ``audit/audit.md``, ``audit/audit.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from smoothnet.audit.checks import FAIL, PASS, SKIP, WARN
from smoothnet.audit.runner import AuditResult
from smoothnet.io import atomic_write_json, atomic_write_text
from smoothnet.privacy.accounting import ACCOUNTANTS

MARK = {PASS: "pass", FAIL: "**FAIL**", WARN: "warn", SKIP: "skip"}


def _eps(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def check_counts(report: dict) -> dict[str, int]:
    """How many checks passed, warned, were skipped and failed, from an audit's JSON form."""
    checks = [c for run in report["runs"] for c in run["checks"]] + report["report"] + report["canary_checks"]
    return {status: sum(c["status"] == status for c in checks) for status in (PASS, WARN, SKIP, FAIL)}


def summary(report: dict) -> str:
    """``"166 passed, 0 warned, 14 skipped, 0 failed"``."""
    counts = check_counts(report)
    return f"{counts[PASS]} passed, {counts[WARN]} warned, {counts[SKIP]} skipped, {counts[FAIL]} failed"


def render_markdown(result: AuditResult) -> str:
    """The whole audit as Markdown: verdict, failures (run and field), epsilons side by side, per-run detail."""
    lines = ["# Audit of the stored results", ""]
    verdict = "PASSED" if result.passed else f"FAILED ({len(result.failures)} failing check(s))"
    lines += [
        f"**{verdict}**: {len(result.runs)} run record(s) audited without retraining; checks: "
        f"{summary(result.to_dict())}.",
        "",
    ]
    lines += [f"Inputs: {', '.join(f'{k} `{v}`' for k, v in result.inputs.items())}.", ""]
    if result.failures:
        lines += ["## Failures", ""]
        lines += [f"- `{where}` `{c.field}` ({c.name}): {c.message}" for where, c in result.failures]
        lines.append("")
    lines += [
        "## Privacy claims re-derived",
        "",
        "Epsilon at the run's delta from its noise multiplier, sample rate and steps, under Opacus RDP and PRV "
        "and Google's dp-accounting RDP and PLD. RDP is the looser bound; PRV and PLD are numerical and "
        "agree to about 1 %.",
        "",
        "| run | profile | target | recorded (accountant) | " + " | ".join(ACCOUNTANTS) + " | status |",
        "|---|---|---|---|" + "---|" * len(ACCOUNTANTS) + "---|",
    ]
    for run in result.runs:
        status = "pass" if not run.failed else f"**FAIL** ({len(run.failed)})"
        if run.private is False:
            lines.append(
                f"| `{run.run_id}` | {run.label} | non-private | - |"
                + " - |" * len(ACCOUNTANTS)
                + f" {status} |"
            )
            continue
        table = run.epsilons or {}
        cells = " | ".join(_eps(table.get(name)) for name in ACCOUNTANTS)
        recorded = f"{_eps(run.recorded_epsilon)} ({run.accountant})"
        lines.append(
            f"| `{run.run_id}` | {run.label} | {_eps(run.target_epsilon)} | {recorded} | {cells} | {status} |"
        )
    lines.append("")
    if result.canary is not None or result.canary_checks:
        lines += ["## Empirical canary audit (Steinke, Nasr & Jagielski 2023, one run)", ""]
        if result.canary is not None:
            cfg = result.canary.get("config", {})
            lines += [
                f"{cfg.get('num_canaries')} canaries, each included with probability 1/2; "
                f"{2 * int(cfg.get('guesses_per_side', 0))} guesses; confidence {cfg.get('confidence')}; "
                f"claimed epsilon {result.canary.get('claimed_epsilon')} at delta {cfg.get('delta')}.",
                "",
                "| arm | noise multiplier | correct / guesses | epsilon lower bound | claimed epsilon |",
                "|---|---|---|---|---|",
            ]
            for arm in ("dp", "no_noise"):
                r = result.canary.get(arm) or {}
                lines.append(
                    f"| {arm} | {r.get('noise_multiplier', 0):.4g} | {r.get('correct')} / {r.get('guesses')} | "
                    f"{r.get('epsilon_lower_bound', float('nan')):.3f} | {r.get('claimed_epsilon', float('nan')):.3f} |"
                )
            lines.append("")
        lines += [f"- {MARK[c.status]}: {c.name}: {c.message}" for c in result.canary_checks]
        lines.append("")
    if result.not_yet_trained:
        lines += [
            f"## Not yet trained ({len(result.not_yet_trained)} run(s) of params.yaml)",
            "",
            "No record and no dvc.lock entry: nothing is claimed for these runs yet (`dvc repro train@<run>`).",
            "",
            ", ".join(f"`{run_id}`" for run_id in result.not_yet_trained),
            "",
        ]
    lines += ["## Report freshness", ""]
    lines += [f"- {MARK[c.status]} `{c.field}`: {c.message}" for c in result.report_checks] or [
        "- nothing checked"
    ]
    lines += ["", "## Every check, per run", ""]
    for run in result.runs:
        lines += [
            f"### `{run.run_id}` ({run.label}{'' if run.private is not False else ', non-private'})",
            "",
        ]
        lines += [f"Record: `{run.path}`", ""]
        lines += [f"- {MARK[c.status]} [{c.group}] `{c.field}`: {c.message}" for c in run.checks]
        lines.append("")
    return "\n".join(lines)


STALE_BANNER = "> **STALE**: an audit started at {when} and has not finished; the verdict below is void.\n\n"


def mark_stale(out_dir: Path) -> None:
    """Before auditing, void the previous ``audit.md`` / ``audit.json`` (banner, ``passed: false``,
    ``stale: true``); :func:`write_reports` replaces both when the audit finishes."""
    md, js = out_dir / "audit.md", out_dir / "audit.json"
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    if md.exists():
        old = md.read_text(encoding="utf-8", errors="replace")
        old = old[old.index("\n\n") + 2 :] if old.startswith("> **STALE**") and "\n\n" in old else old
        atomic_write_text(md, STALE_BANNER.format(when=when) + old)
    if js.exists():
        try:
            previous = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            previous = None
        stale = previous if isinstance(previous, dict) else {}
        atomic_write_json(js, {**stale, "passed": False, "stale": True})


def write_reports(result: AuditResult, out_dir: Path) -> tuple[Path, Path]:
    """Write ``audit.md`` and ``audit.json`` atomically into ``out_dir``."""
    md, js = out_dir / "audit.md", out_dir / "audit.json"
    atomic_write_text(md, render_markdown(result))
    atomic_write_json(js, result.to_dict())
    return md, js
