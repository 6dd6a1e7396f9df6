"""Report freshness: every table and figure was rendered from the records as they are now.

The report manifest (``paper/report_manifest.json``, written by the report stage) cites each record it
rendered by path (relative to the repository root) with its ``record_hash``, and each rendered file with
its sha256::

    {"records": {"runs/<id>/record.json": "<record_hash>", ...},
     "outputs": {"paper/figures/x.png": "<sha256>", ...}}

Entries may also be objects (``{"record_hash": ...}`` / ``{"sha256": ...}``) or lists of objects with a
``path`` key; all three spellings are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smoothnet.audit.checks import FAIL, PASS, SKIP, Check, check_maker
from smoothnet.io import loads_json, sha256_file

GROUP = "freshness"


class ReportManifestError(ValueError):
    """The report manifest exists but cannot be read."""


_check = check_maker(GROUP)


def _entries(section: Any, hash_key: str, where: str) -> dict[str, str]:
    if section is None:
        return {}
    if isinstance(section, list):
        pairs = [(item.get("path"), item.get(hash_key)) for item in section if isinstance(item, dict)]
    elif isinstance(section, dict):
        pairs = [(k, v.get(hash_key) if isinstance(v, dict) else v) for k, v in section.items()]
    else:
        raise ReportManifestError(f"{where}: expected a mapping or list, got {type(section).__name__}")
    bad = [p for p, h in pairs if not isinstance(p, str) or not isinstance(h, str)]
    if bad:
        raise ReportManifestError(f"{where}: entries without a path or {hash_key}: {bad[:3]}")
    return dict(pairs)


def load_report_manifest(path: Path) -> tuple[dict[str, str], dict[str, str]] | None:
    """``(records, outputs)`` as ``{path: hash}``; ``None`` if the manifest does not exist."""
    if not path.exists():
        return None
    try:
        manifest = loads_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ReportManifestError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(manifest, dict):
        raise ReportManifestError(f"{path}: expected a JSON object")
    records = _entries(manifest.get("records"), "record_hash", f"{path} records")
    outputs = _entries(manifest.get("outputs"), "sha256", f"{path} outputs")
    return records, outputs


def check_record_cited(record_rel: str, current_hash: str, cited: dict[str, str] | None) -> Check:
    """The report cites this record with its current hash (or does not render it at all)."""
    if cited is None:
        return _check(
            "report cites current record", "record_hash", SKIP, "no report manifest: report not rendered yet"
        )
    if record_rel not in cited:
        return _check(
            "report cites current record",
            "record_hash",
            SKIP,
            "not rendered in the report (another profile/kind)",
        )
    if cited[record_rel] != current_hash:
        return _check(
            "report cites current record",
            "record_hash",
            FAIL,
            f"the report was rendered from record_hash {cited[record_rel][:12]}..., the record is now "
            f"{current_hash[:12]}...: the record changed after the report was rendered (re-render, or restore it)",
        )
    return _check(
        "report cites current record", "record_hash", PASS, f"record_hash {current_hash[:12]}... cited"
    )


def check_report(
    root: Path, manifest_path: Path, audited: set[str], report_locked: bool = False
) -> list[Check]:
    """Report-level checks: cited records exist and are audited, every rendered file has its cited sha256.

    A missing manifest fails when dvc.lock locks the report stage (``report_locked``): the report was
    rendered, so deleting its manifest must not turn every freshness check into a skip."""
    try:
        loaded = load_report_manifest(manifest_path)
    except ReportManifestError as exc:
        return [_check("report manifest", str(manifest_path), FAIL, str(exc))]
    if loaded is None:
        if report_locked:
            return [
                _check(
                    "report manifest",
                    str(manifest_path),
                    FAIL,
                    "missing, but dvc.lock locks the report stage: the rendered report cannot be checked "
                    "(restore it from git, or re-render with `dvc repro report`)",
                )
            ]
        return [
            _check(
                "report manifest", str(manifest_path), SKIP, "not present: the report has not been rendered"
            )
        ]
    records, outputs = loaded
    checks = []
    for rel in sorted(set(records) - audited):
        status = FAIL
        exists = (root / rel).exists()
        why = "was not found among the audited records" if exists else "no longer exists"
        checks.append(_check("cited record exists", rel, status, f"the report cites {rel}, which {why}"))
    for rel, cited in sorted(outputs.items()):
        path = root / rel
        if not path.exists():
            checks.append(_check("rendered file", rel, FAIL, "cited by the report manifest but missing"))
            continue
        digest = sha256_file(path)
        if digest != cited:
            checks.append(
                _check(
                    "rendered file",
                    rel,
                    FAIL,
                    f"sha256 {digest[:12]}... != manifest {cited[:12]}...: edited after rendering (re-run the report)",
                )
            )
        else:
            checks.append(_check("rendered file", rel, PASS, "sha256 matches the report manifest"))
    if not outputs:
        checks.append(
            _check("rendered file", str(manifest_path), FAIL, "the report manifest lists no rendered files")
        )
    return checks
