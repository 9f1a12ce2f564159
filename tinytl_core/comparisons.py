"""Per-mode memory of one backbone: every fine-tuning mode analysed on the ``meta`` device.

The memory model's comparisons live here, above :mod:`tinytl_core.modes` (which prepares each mode) and
:mod:`tinytl_core.memory` (which analyses one prepared model).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import pandas as pd

from tinytl_core.memory import MemoryReport, analyze
from tinytl_core.memory.report import TOTALS
from tinytl_core.modes import ModeNotApplicable, prepare_model, resolve_modes

TABLE_COLUMNS: tuple[str, ...] = (
    TOTALS.weights_bytes,
    TOTALS.grads_optimizer_bytes,
    TOTALS.activations_necessary_bytes,
    TOTALS.activations_stock_bytes,
    TOTALS.transient_bytes,
    TOTALS.total_modelled_bytes,
    TOTALS.total_stock_bytes,
)
"""The :class:`~tinytl_core.memory.ReportTotals` fields of a :func:`compare_modes` row, in order."""


def mode_reports(
    backbone: str,
    *,
    resolution: int | None,
    batch_size: int,
    optimizer: str = "adam",
    accounting: str = "complete",
    modes: str | Iterable[str] | None = None,
    group_norm: bool = False,
) -> dict[str, MemoryReport | str]:
    """Analyse ``backbone`` in each mode; a mode that does not apply maps to the reason (a string)."""
    out: dict[str, MemoryReport | str] = {}
    for mode in resolve_modes(modes):
        try:
            prepared = prepare_model(  # analyze() models stock layers: no engine conversion to trace
                backbone, mode, resolution=resolution, group_norm=group_norm, device="meta", engine=False
            )
        except ModeNotApplicable as exc:
            out[mode.name] = str(exc)
            continue
        report = analyze(
            prepared.model,
            input_size=prepared.data.input_size,
            batch_size=batch_size,
            optimizer=optimizer,
            accounting=accounting,
        )
        report.totals = replace(report.totals, mode=mode.name, backbone=backbone)
        out[mode.name] = report
    return out


def compare_modes(
    backbone: str,
    *,
    resolution: int | None,
    batch_size: int,
    optimizer: str = "adam",
    accounting: str = "complete",
    modes: str | Iterable[str] | None = None,
    group_norm: bool = False,
) -> pd.DataFrame:
    """One row per mode: weights, gradients + optimizer state, activations (necessary and stock PyTorch),
    transient, totals (bytes), ``ratio_to_full`` (total / total of ``full``, NaN without ``full``),
    ``applicable`` and ``reason`` (why a mode does not apply). Built on the ``meta`` device.
    ``resolution`` None means the backbone's default input size.
    """
    return table_from_reports(
        mode_reports(
            backbone,
            resolution=resolution,
            batch_size=batch_size,
            optimizer=optimizer,
            accounting=accounting,
            modes=modes,
            group_norm=group_norm,
        )
    )


def table_from_reports(reports: dict[str, MemoryReport | str]) -> pd.DataFrame:
    """The :func:`compare_modes` table from :func:`mode_reports` output."""
    records = []
    for name, report in reports.items():
        if isinstance(report, str):
            records.append({"mode": name, "applicable": False, "reason": report})
            continue
        t = report.totals
        records.append(
            {
                "mode": name,
                "applicable": True,
                "reason": "",
                "trainable_params": t.n_trainable,
                "params": t.n_params,
                **{k: getattr(t, k) for k in TABLE_COLUMNS},
            }
        )
    table = pd.DataFrame.from_records(
        records, columns=["mode", "applicable", "reason", "trainable_params", "params", *TABLE_COLUMNS]
    )
    total = table[TOTALS.total_modelled_bytes]
    full = total[(table["mode"] == "full") & table["applicable"]]
    table["ratio_to_full"] = total / float(full.iloc[0]) if len(full) else float("nan")
    return table
