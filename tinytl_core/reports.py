"""Tables built from library results, shared by the CLI, the app and the notebooks: the trainable
parameters per mode (:func:`trainable_table`), the same for people (:func:`trainable_display`: headers and
decimals from the quantities declared on :class:`TrainableFigures`; a column with nothing in it, e.g.
``note`` when every mode applies, left out) and as aligned text (:func:`text_table`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from tinytl_core.modes import MODES, ModeResult
from tinytl_core.quantities import MB, Unit, bytes_unit, quantities, quantity

FP32_BYTES = 4


def trainable_table(results: Sequence[ModeResult]) -> pd.DataFrame:
    """One row per mode: trainable parameters, their fp32 bytes, share of the model, applicability."""
    rows = []
    for r in results:
        rows.append(
            {
                "mode": r.mode,
                "title": MODES[r.mode].title if r.mode in MODES else r.mode,
                "applicable": r.applicable,
                "trainable_params": r.n_trainable if r.applicable else None,
                "trainable_MB": r.n_trainable * FP32_BYTES / MB if r.applicable else None,
                "trainable_%": 100 * r.trainable_fraction if r.applicable else None,
                "total_params": r.n_total if r.applicable else None,
                "lite_residual_blocks": len(r.lite_residual_blocks),
                "note": r.reason,
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class TrainableFigures:
    """The shown columns of :func:`~tinytl_core.reports.trainable_table`, keyed by its column names (its
    values are in display units already: MB, %)."""

    title: str | None = quantity("mode", Unit.TEXT)
    trainable_params: int | None = quantity("trainable parameters", Unit.COUNT, short="trainable params")
    trainable_MB: float | None = quantity("trainable bytes (fp32)", Unit.BYTES, short="trainable", digits=3)
    trainable_pct: float | None = quantity("share of the model", Unit.FRACTION, short="share", digits=2)
    total_params: int | None = quantity("all parameters", Unit.COUNT, short="all params")
    lite_residual_blocks: int | None = quantity("lite residual blocks", Unit.COUNT)
    note: str | None = quantity("why not applicable", Unit.TEXT, short="why not applicable")


_SOURCE = {"trainable_pct": "trainable_%"}  # the table's column where its name is no identifier


def _empty(column: pd.Series) -> bool:
    return bool(column.map(lambda v: v is None or v == "" or (isinstance(v, float) and pd.isna(v))).all())


def trainable_display(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str | None]]:
    """``(frame, formats)``: the table with readable headers (from :class:`TrainableFigures`), figures
    rounded to their decimals, empty columns dropped; ``formats`` maps each header to a printf format
    (``%.3f``; ``localized`` for counts: thousands separators) or None for text."""
    out: dict[str, pd.Series] = {}
    formats: dict[str, str | None] = {}
    for q in quantities(TrainableFigures):
        column = table.get(_SOURCE.get(q.name, q.name))
        if column is None or _empty(column):
            continue
        if q.unit is Unit.TEXT:
            out[q.header] = column.fillna("")
            formats[q.header] = None
            continue
        numbers = pd.to_numeric(column, errors="coerce")
        if q.unit is Unit.COUNT:
            out[q.header] = numbers.round().astype("Int64")
            formats[q.header] = "localized"  # thousands separators
        else:
            out[q.header] = numbers.round(q.digits)
            formats[q.header] = f"%.{q.digits}f"
    return pd.DataFrame(out), formats


def in_own_unit(nbytes: pd.Series) -> tuple[pd.Series, str, str]:
    """A column of sizes in bytes in the one unit its largest calls for (:func:`bytes_unit`: B, KB, MB,
    GB, ...): ``(values in that unit, its name, a printf format)``. Every table that shows sizes (the
    Memory Explorer's, Compare runs') scales its columns this way."""
    unit, factor = bytes_unit(float(nbytes.abs().max()) if nbytes.notna().any() else 0.0)
    return nbytes / factor, unit, "%.2f" if factor > 1 else "%d"


MISSING = "-"
"""How a missing figure prints in a text table (never ``NaN`` or ``None``)."""


def frame_text(frame: pd.DataFrame, **to_string: object) -> str:
    """``frame.to_string(index=False)`` with every missing value (NaN, None, NA) as :data:`MISSING`; number
    columns keep their dtype, so each prints with one number of decimals (``5.50`` under ``3.54``)."""
    shown = frame.copy()
    for column in shown.columns:
        if not pd.api.types.is_numeric_dtype(shown[column]):  # None in a text column: na_rep misses it
            shown[column] = shown[column].astype(object).where(shown[column].notna(), MISSING)
    return shown.to_string(index=False, na_rep=MISSING, **to_string)


def text_table(frame: pd.DataFrame, formats: Mapping[str, str | None] | None = None) -> str:
    """``frame`` as aligned text for a terminal: each column by its printf format in ``formats``
    (``localized``: thousands separators; None or absent: as it is), numbers right-aligned, a missing
    value as :data:`MISSING`."""
    formats = formats or {}

    def cell(value: object, fmt: str | None) -> str:
        if value is None or (not isinstance(value, str) and bool(pd.isna(value))):
            return MISSING
        if fmt == "localized":
            return f"{int(value):,}"
        return fmt % value if fmt else str(value)

    columns = [[cell(v, formats.get(c)) for v in frame[c]] for c in frame.columns]
    widths = [max([len(str(c)), *(len(v) for v in col)]) for c, col in zip(frame.columns, columns)]
    numeric = [bool(formats.get(c)) for c in frame.columns]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line([str(c) for c in frame.columns]), *(line(row) for row in zip(*columns))])
