"""The per-sample method value: its string form (params, the measured table, run records) round-trips."""

from __future__ import annotations

import pytest

from smoothnet.privacy.method_select import CANDIDATES, MEASURED
from smoothnet.privacy.per_sample_method import (
    CLIPPINGS,
    CONV_PER_EXAMPLE,
    OPACUS_MODES,
    PerSampleMethod,
    parse_clipping_spec,
)

FORMS = [
    *OPACUS_MODES,
    *(f"fast:{c}" for c in CLIPPINGS),
    *(f"fast:{c}+{r}" for c in CLIPPINGS for r in CONV_PER_EXAMPLE),
]


@pytest.mark.parametrize("text", FORMS)
def test_string_form_round_trips(text):
    method = PerSampleMethod.parse(text)
    assert str(method) == text
    assert PerSampleMethod.parse(method) is method


def test_bare_fast_is_written_as_the_trainer_always_recorded_it():
    assert str(PerSampleMethod.parse("fast")) == "fast:auto"
    assert str(PerSampleMethod.parse("fast:")) == "fast:auto"


def test_fields_say_what_runs():
    method = PerSampleMethod.parse("fast:materialize+unfold")
    assert (method.mode, method.clipping, method.conv, method.conv_per_example) == (
        "fast",
        "materialize",
        "unfold",
        "unfold",
    )
    assert method.holds_every_gradient and method.clipped_sum_in_grad and not method.is_opacus
    assert PerSampleMethod.parse("fast:auto").conv_per_example == "auto"
    ghost = PerSampleMethod.parse("ghost")  # Opacus' ghost clipping, not the module's fast:ghost
    assert ghost.is_opacus and ghost.clipped_sum_in_grad and ghost != PerSampleMethod.parse("fast:ghost")
    assert not PerSampleMethod.parse("hooks").clipped_sum_in_grad


@pytest.mark.parametrize(
    "bad", ["fastest", "fast:auto+im2col", "fast:materialize+", "fast:loop", "opacus", ""]
)
def test_invalid_forms_are_refused_with_the_choices(bad):
    with pytest.raises(ValueError, match="fast"):
        PerSampleMethod.parse(bad)


def test_opacus_mode_takes_no_clipping():
    with pytest.raises(ValueError, match="no clipping"):
        PerSampleMethod("hooks", "materialize")


def test_table_entries_and_candidates_parse():
    for device in MEASURED.values():
        for table in ("fastest", "fastest_ours"):
            for spec, _ in device.get(table, {}).values():
                method = PerSampleMethod.from_table(spec)
                assert str(method) == (spec if spec in OPACUS_MODES else f"fast:{spec}")
    for methods in CANDIDATES.values():
        assert [str(PerSampleMethod.parse(m)) for m in methods] == list(methods)


def test_parse_clipping_spec():
    assert parse_clipping_spec("auto") == ("auto", "auto")
    assert parse_clipping_spec("ghost+grouped") == ("ghost", "grouped")
