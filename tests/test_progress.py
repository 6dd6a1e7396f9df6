"""Training progress in a captured log: plain lines (no carriage returns) with batch, time and epsilon."""

from __future__ import annotations

import io

from smoothnet.training.progress import batch_progress, format_duration


def test_a_log_gets_plain_batch_lines():
    log = io.StringIO()  # not a terminal, as stderr under `dvc repro > log 2>&1`
    bar = batch_progress(range(4), desc="[run] epoch 2/9", enabled=True, every=0.0, stream=log)
    for _ in bar:
        bar.set_postfix(loss="1.234")
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("[run] epoch 2/9: batch 1/4 (25 %), 0s") and lines[-1].endswith("loss 1.234")
    assert len(lines) == 4 and "\r" not in log.getvalue()


def test_disabled_progress_prints_nothing():
    log = io.StringIO()
    assert list(batch_progress(range(3), desc="x", enabled=False, stream=log)) == [0, 1, 2]
    assert log.getvalue() == ""


def test_durations_read_as_hours_minutes_seconds():
    assert [format_duration(s) for s in (12, 245, 3720)] == ["12s", "4m 05s", "1h 02m"]
