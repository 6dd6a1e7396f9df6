"""The typed run record writes exactly the JSON the stored records hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from smoothnet.io import canonical_json
from smoothnet.records import RunRecord, best_epoch, find_records, load_record

ROOT = Path(__file__).resolve().parents[1]
STORED = find_records([ROOT / "runs", ROOT / "ablations" / "runs"])


@pytest.mark.parametrize("path", STORED, ids=[p.parent.name for p in STORED])
def test_a_stored_record_round_trips_through_the_typed_record_byte_for_byte(path):
    record = load_record(path)
    assert canonical_json(RunRecord.from_dict(record).to_dict()) == canonical_json(record)


def test_an_unknown_field_is_refused_not_dropped():
    record = load_record(STORED[0])
    record["privacy"]["invented"] = 1
    with pytest.raises(TypeError, match="invented"):
        RunRecord.from_dict(record)


def test_best_epoch_is_the_first_best_validation_and_the_last_without_validation():
    history = [
        {"epoch": 1, "val_accuracy": 0.5},
        {"epoch": 2, "val_accuracy": 0.6},
        {"epoch": 3, "val_accuracy": 0.6},
    ]
    assert best_epoch(history)["epoch"] == 2
    assert best_epoch([{"epoch": 1}, {"epoch": 2}])["epoch"] == 2
    assert best_epoch([]) == {}
