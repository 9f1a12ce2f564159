"""Typed figures: the MB formatter, quantity metadata and its lookups, run statuses, RunMemory."""

import json
import math
from dataclasses import asdict, dataclass, fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinytl_core.memory import ReportTotals
from tinytl_core.quantities import (
    ENDED_STATUSES,
    MB,
    ModelledMemory,
    RunMemory,
    RunStatus,
    Unit,
    describe,
    format_mb,
    names,
    quantities,
    quantity,
)
from tinytl_core.results import COLUMNS, RunInfo


def test_format_mb():
    assert MB == 10**6
    assert format_mb(12_345_678) == "12.3" and format_mb(12_345_678, 2) == "12.35"
    assert format_mb(1_234_567_890) == "1,234.6"  # thousands separated
    assert format_mb(0) == "0.0" and format_mb(49_999) == "0.0"
    assert format_mb(None) == "-" and format_mb(float("nan")) == "-" and format_mb(None, missing="–") == "–"
    assert format_mb(2.5e6, unit=True) == "2.5 MB" and format_mb(None, unit=True) == "-"


@dataclass
class Example:
    size_bytes: float | None = quantity("model size", help="All of it.")
    share: float | None = quantity("share trained", Unit.FRACTION, short="trained")
    label: str = "not a quantity"


def test_quantity_metadata_and_lookups():
    size, share = quantities(Example)  # only the declared quantities, in order
    assert (size.name, size.label, size.short, size.unit, size.help) == (
        "size_bytes",
        "model size",
        "model size",
        Unit.BYTES,
        "All of it.",
    )
    assert size.header == "model size MB" and size.title == "model size (MB)" and size.key == "size_MB"
    assert share.header == "trained %" and share.title == "share trained (%)" and share.key == "share_pct"
    assert size.value(12_345_678) == 12.35 and size.value(12_345_678, digits=0) == 12.0
    assert share.value(0.123456) == 12.3 and share.convert(0.5) == 50.0 and share.value(None) is None
    assert size.text(2e6) == "2.00 MB" and size.text(3e9) == "3.00 GB" and share.text(0.755) == "75.5 %"
    assert share.text(None, missing="–") == "–"
    assert describe("share", Example) == share
    assert describe("weights_bytes", Example, RunMemory).label == "weights"  # the first class that has it
    with pytest.raises(KeyError, match="no quantity 'label'"):
        describe("label", Example)  # a plain field is not a quantity
    assert Example() == Example(None, None)  # quantities default to None


def test_field_names_are_checked_attributes():
    memory = names(RunMemory)
    assert memory.total_modelled_bytes == "total_modelled_bytes"
    assert list(memory) == [f.name for f in fields(RunMemory)] and "weights_bytes" in memory
    with pytest.raises(AttributeError, match="RunMemory has no field 'total_bytes'"):
        memory.total_bytes  # noqa: B018 -- a typo fails where it is written


def test_run_status():
    assert [s.value for s in RunStatus] == [
        "waiting",
        "running",
        "finished",
        "cancelled",
        "failed",
        "diverged",
    ]
    assert ENDED_STATUSES == (RunStatus.FINISHED, RunStatus.CANCELLED, RunStatus.FAILED, RunStatus.DIVERGED)
    assert [s for s in RunStatus if s.unsuccessful] == [RunStatus.FAILED, RunStatus.DIVERGED]
    assert not RunStatus.RUNNING.ended and RunStatus.FAILED.ended
    assert RunStatus("finished") is RunStatus.FINISHED and RunStatus.FINISHED == "finished"
    assert f"[{RunStatus.CANCELLED}]" == "[cancelled]" and str(RunStatus.FAILED) == "failed"
    assert json.dumps({"status": RunStatus.FINISHED}) == '{"status": "finished"}'
    with pytest.raises(ValueError):
        RunStatus("done")


def test_one_declaration_per_quantity():
    """The report's totals and a run's figures share the modelled quantities (one field each), and every
    label is set once: no two quantities of a table's sources share a header."""
    shared = [f.name for f in fields(ModelledMemory)]
    assert [f.name for f in fields(RunMemory)][: len(shared)] == shared
    assert [f.name for f in fields(ReportTotals)][: len(shared)] == shared
    for name in shared:
        assert describe(name, ReportTotals) == describe(name, RunMemory)
    for sources in ((ReportTotals, RunMemory), (RunInfo, RunMemory)):
        every = [q for cls in sources for q in quantities(cls)]
        unique = {q.name: q for q in every}.values()
        assert len({q.header for q in unique}) == len(unique), sources
    # The store's memory columns are RunMemory's fields, as integers.
    assert {q.name for q in quantities(RunMemory)} <= set(COLUMNS)
    assert all(COLUMNS[q.name] == "INTEGER" for q in quantities(RunMemory))


def test_run_memory_reads_back_from_a_stored_dict():
    figures = RunMemory(weights_bytes=1.0, total_modelled_bytes=3.0, activations_measured_bytes=2.0)
    stored = json.loads(json.dumps(asdict(figures)))
    assert RunMemory.from_dict(stored) == figures
    assert RunMemory.from_dict({**stored, "from_a_later_version": 1}) == figures
    assert RunMemory.from_dict({"error": "RuntimeError: no trace"}) is None
    assert RunMemory.from_dict(None) is None and RunMemory.from_dict({}) is None
    assert math.isclose(figures.total_modelled_bytes, 3.0)


@settings(max_examples=400, deadline=None)
@given(st.floats(min_value=0, max_value=1e20, allow_nan=False))
def test_byte_figures_are_short_readable_and_right_at_every_size(nbytes):
    """Every size reads as at most three significant figures in a unit where it is at least 1 and under
    1,000 ("1,000 KB" for 999,999 bytes, "1,000,000 TB" for 10^18 used to be shown), and means its value."""
    from tinytl_core.quantities import BYTE_UNITS, format_bytes

    text = format_bytes(nbytes)
    number, unit = text.rsplit(" ", 1)
    value = float(number.replace(",", ""))
    factor = dict(BYTE_UNITS)[unit]
    assert value < 1000 and (value >= 1 or unit == "B"), text
    assert len(number.replace(",", "").replace(".", "").lstrip("0")) <= 3 or unit == "B", text
    assert abs(value * factor - nbytes) <= max(0.5, 0.005 * nbytes), text


@settings(max_examples=400, deadline=None)
@given(
    st.floats(min_value=0, allow_nan=False) | st.sampled_from([1e-300, 1.0, 1.04]),
    st.floats(min_value=0, allow_nan=False) | st.sampled_from([1e-300, 1.0, 1.04]),
)
def test_comparisons_never_say_the_wrong_direction(value, reference):
    from tinytl_core.quantities import format_ratio

    text = format_ratio(value, reference)
    assert len(text) < 45, text  # no 300-digit figures
    if "more than" in text:
        assert value > reference
    if "less than" in text:
        assert value < reference
    if text.startswith("same"):
        assert value == reference
    assert format_ratio(-1.0, 1.0) == format_ratio(1.0, float("inf")) == "-"  # no direction to say


def test_a_figure_its_unit_cannot_take_is_not_plausible():
    from tinytl_core.quantities import Unit

    assert Unit.FRACTION.plausible(0.5) and Unit.FRACTION.plausible(1) and Unit.FRACTION.plausible(None)
    for bad in (float("inf"), float("nan"), 1e300, -0.1, 1.01, "0.5", True):
        assert not Unit.FRACTION.plausible(bad), bad
    assert Unit.BYTES.plausible(0) and not Unit.BYTES.plausible(-1) and not Unit.SECONDS.plausible(-2.0)
    assert Unit.NUMBER.plausible(-3.5) and not Unit.NUMBER.plausible(float("-inf"))
    assert Unit.TEXT.plausible("anything") and Unit.FLAG.plausible(True)
