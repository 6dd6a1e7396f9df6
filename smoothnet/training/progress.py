"""Training progress that reads well both in a terminal and in a captured log (``dvc repro > log``).

On a terminal: a tqdm bar per epoch. Otherwise (stderr is a file or pipe, where tqdm's carriage returns
pile up into one unreadable line) a plain line at most every ``every`` seconds. Each epoch ends with one
line (see the trainer) giving elapsed and remaining time and epsilon so far.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm


def format_duration(seconds: float) -> str:
    """``"1h 02m"``, ``"4m 05s"`` or ``"12s"``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


class _Lines:
    """An iterable wrapper printing ``desc: batch i/n (p %), loss ...`` at most every ``every`` seconds."""

    def __init__(self, iterable: Iterable, desc: str, every: float, stream: Any) -> None:
        self.iterable, self.desc, self.every, self.stream = iterable, desc, every, stream
        self.postfix = ""
        try:
            self.total: int | None = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            self.total = None

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{key} {value}" for key, value in values.items())

    def __iter__(self) -> Iterator:
        start = last = time.perf_counter()
        for i, item in enumerate(self.iterable, start=1):
            yield item
            now = time.perf_counter()
            if now - last >= self.every:
                last = now
                where = (
                    f"batch {i}/{self.total} ({100 * i / self.total:.0f} %)" if self.total else f"batch {i}"
                )
                extra = f", {self.postfix}" if self.postfix else ""
                print(
                    f"{self.desc}: {where}, {format_duration(now - start)}{extra}",
                    file=self.stream,
                    flush=True,
                )


def batch_progress(iterable: Iterable, *, desc: str, enabled: bool, every: float = 60.0, stream: Any = None):
    """``iterable`` wrapped with progress output (see the module docstring); with ``set_postfix``."""
    stream = sys.stderr if stream is None else stream
    if enabled and not stream.isatty():
        return _Lines(iterable, desc, every, stream)
    return tqdm(iterable, desc=desc, leave=False, disable=not enabled, unit="batch", file=stream)
