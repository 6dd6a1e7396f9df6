"""One audit finding (:class:`Check`) and small helpers every check module shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"
STATUSES = (PASS, FAIL, WARN, SKIP)


@dataclass(frozen=True)
class Check:
    """One finding: ``status`` is pass, fail, warn (noted, does not fail the audit) or skip (not applicable).

    ``field`` names what was checked, as a record field (``privacy.epsilon``), a params key
    (``params.lr``) or a file (``dvc.lock``), so a failure says exactly what to look at.
    """

    group: str  # privacy, provenance, freshness, sanity, canary
    name: str
    field: str
    status: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} not in {STATUSES}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def diff_values(expected: Any, actual: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted paths where two JSON-like values differ: ``[(path, expected, actual), ...]``.

    Missing keys show as ``"<missing>"``. Numbers compare by value (``7 == 7.0``); bools never equal numbers.
    """
    missing = "<missing>"
    if isinstance(expected, dict) and isinstance(actual, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(expected) | set(actual), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in expected:
                out.append((path, missing, actual[key]))
            elif key not in actual:
                out.append((path, expected[key], missing))
            else:
                out.extend(diff_values(expected[key], actual[key], path))
        return out
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        out = []
        for i, (a, b) in enumerate(zip(expected, actual, strict=True)):
            out.extend(diff_values(a, b, f"{prefix}[{i}]"))
        return out
    if isinstance(expected, bool) != isinstance(actual, bool) or expected != actual:
        return [(prefix, expected, actual)]
    return []


def short(value: Any, limit: int = 80) -> str:
    """A value for a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_maker(group: str) -> Callable[..., Check]:
    """``make(name, field, status, message, **details)``: a :class:`Check` of ``group``, for one check module."""

    def make(name: str, field: str, status: str, message: str, **details: Any) -> Check:
        return Check(group, name, field, status, message, details)

    return make
