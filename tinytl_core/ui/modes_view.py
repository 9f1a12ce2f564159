"""The Fine-tuning modes page's table: :func:`tinytl_core.reports.trainable_table` for people (no Streamlit).

Headers and decimals come from the quantities declared on :class:`TrainableFigures`; a column with nothing
in it (e.g. ``note`` when every mode applies) is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tinytl_core.quantities import Unit, quantities, quantity


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
