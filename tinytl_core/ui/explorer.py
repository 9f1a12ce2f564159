"""The Memory Explorer's data: modelled totals per mode, a real measured step, per-layer tables.

The modelled side is :func:`tinytl_core.comparisons.mode_reports` (shape-only, on ``meta``); this module adds
what the page shows beside it: one real training step measured twice -- with stock PyTorch layers and
with the training engine's memory-lean layers (:func:`tinytl_core.engine.convert`) -- and tables that put
the measured bytes next to the modelled ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tinytl_core.adapt import is_small_batch_error, resolve_device, small_batch_problem
from tinytl_core.backbones import known_shape_error
from tinytl_core.memory import (
    MB,
    MemoryLimitError,
    MemoryReport,
    ReportTotals,
    StockAndEngine,
    measure,
    measure_stock_and_engine,
)
from tinytl_core.memory.report import MEMORY, TOTALS
from tinytl_core.modes import prepare_model
from tinytl_core.quantities import RunMemory, describe
from tinytl_core.reports import in_own_unit


def label(name: str) -> str:
    """The label of a memory quantity (a :class:`~tinytl_core.memory.ReportTotals` or
    :class:`~tinytl_core.quantities.RunMemory` field)."""
    return describe(name, ReportTotals, RunMemory).label


COMPONENTS: tuple[str, ...] = (
    TOTALS.weights_bytes,
    TOTALS.grads_optimizer_bytes,
    TOTALS.activations_necessary_bytes,
    TOTALS.transient_bytes,
)
"""The stacked parts of a mode's modelled total (complete accounting), bottom to top."""
COMPONENT_LABELS: tuple[str, ...] = tuple(label(c) for c in COMPONENTS)

ACTIVATION_FIGURES: tuple[str, ...] = (
    TOTALS.activations_necessary_bytes,
    TOTALS.activations_stock_bytes,
    MEMORY.activations_measured_stock_bytes,
    MEMORY.activations_measured_engine_bytes,
)
"""The activation figures compared per mode: modelled necessary and stock, measured stock and engine."""
ACTIVATION_LABELS: tuple[str, ...] = tuple(label(f) for f in ACTIVATION_FIGURES)


@dataclass
class StepMeasurement(StockAndEngine):
    """One real training step of a mode, measured with stock layers and with the engine
    (:class:`~tinytl_core.memory.StockAndEngine`). ``engine`` is None when the engine could not run this
    model (``engine_error`` says why)."""

    mode: str = ""


def measure_mode(
    backbone: str,
    mode: str,
    *,
    resolution: int,
    batch_size: int,
    optimizer: str = "adam",
    group_norm: bool = False,
    modelled: MemoryReport | None = None,
    engine: bool = True,
    device: str = "auto",
) -> StepMeasurement:
    """Build ``backbone`` in ``mode`` with real (random) weights and measure one training step.

    With stock PyTorch layers and -- with ``engine`` -- with the training engine's, on the same model
    (:func:`~tinytl_core.memory.measure_stock_and_engine`). ``modelled`` (the meta analysis of the same
    configuration) lets the memory check skip a second analysis. Raises
    :class:`~tinytl_core.memory.MemoryLimitError` (before allocating) when the step would not fit, and
    ValueError for a bad configuration.
    """
    target = resolve_device(device)
    if modelled is not None and modelled.totals.accounting != "complete":
        modelled = None  # the memory check needs the complete accounting (gradients, working set)
    prepared = prepare_model(
        backbone, mode, resolution=resolution, group_norm=group_norm, device=target, engine=False
    )
    kwargs = {
        "input_size": prepared.data.input_size,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "modelled": modelled,
    }
    try:
        if not engine:
            return StepMeasurement(measure(prepared.model, **kwargs), None, "engine not requested", mode)
        both = measure_stock_and_engine(prepared.model, **kwargs)
    except (ValueError, RuntimeError) as exc:  # PyTorch's text said in words where it is a known case
        if isinstance(exc, MemoryLimitError):
            raise
        if is_small_batch_error(exc):
            raise ValueError(small_batch_problem(batch_size, resolution)) from None
        plain = known_shape_error(str(exc))
        if plain:
            raise ValueError(f"{backbone} does not run at {resolution} px: {plain}") from None
        raise
    return StepMeasurement(both.stock, both.engine, both.engine_error, mode)


def layer_table(report: MemoryReport, measured: StockAndEngine | None = None) -> pd.DataFrame:
    """The per-layer table of ``report`` with ``activations_measured_stock_bytes`` and
    ``activations_measured_engine_bytes`` beside the modelled columns when ``measured`` is given
    (:meth:`~tinytl_core.memory.StockAndEngine.layer_table`)."""
    table = report.layers.copy()
    return table if measured is None else measured.layer_table(table)


def components_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Long form of a :func:`~tinytl_core.comparisons.compare_modes` table for stacked bars: one row per
    applicable mode and component (``mode``, ``component``, ``MB``), modes in the table's order."""
    rows = []
    for _, r in table[table["applicable"]].iterrows():
        for key, text in zip(COMPONENTS, COMPONENT_LABELS):
            rows.append({"mode": r["mode"], "component": text, "MB": float(r[key]) / MB})
    return pd.DataFrame(rows, columns=["mode", "component", "MB"])


def activation_frame(table: pd.DataFrame, measured: dict[str, StepMeasurement] | None = None) -> pd.DataFrame:
    """Long form of the activation figures per applicable mode (``mode``, ``figure``, ``MB``): modelled
    necessary and stock for every mode, measured stock and engine for the modes in ``measured``."""
    measured = measured or {}
    rows = []
    for _, r in table[table["applicable"]].iterrows():
        necessary, stock, stock_measured, engine_measured = ACTIVATION_FIGURES
        values = {necessary: r[necessary], stock: r[stock]}
        m = measured.get(r["mode"])
        if m is not None:
            values[stock_measured] = m.stock_bytes
            if m.engine_bytes is not None:
                values[engine_measured] = m.engine_bytes
        for key, value in values.items():
            rows.append({"mode": r["mode"], "figure": label(key), "MB": float(value) / MB})
    return pd.DataFrame(rows, columns=["mode", "figure", "MB"])


def totals_in_mb(table: pd.DataFrame) -> pd.DataFrame:
    """A :func:`~tinytl_core.comparisons.compare_modes` table for display: byte columns in MB (10^6 bytes),
    rounded; ``ratio_to_full`` kept."""
    out = table.copy()
    for col in [c for c in out.columns if c.endswith("_bytes")]:
        out[col.removesuffix("_bytes") + "_MB"] = (pd.to_numeric(out.pop(col)) / MB).round(2)
    out["ratio_to_full"] = pd.to_numeric(out["ratio_to_full"]).round(3)
    return out


_LAYER_HEADERS: dict[str, str] = {
    "call": "call #",
    "input_shape": "input shape",
    "output_shape": "output shape",
    "input_bytes": "input",
    "output_bytes": "output",
    "param_bytes": "parameters",
    "trainable_param_bytes": "trainable parameters",
    "necessary_reason": "why (rule)",
    "pending_residual_bytes": "pending residual",
    "working_bytes": "working set",
    "applicable": "applies",
    "reason": "why not",
    "trainable_params": "trainable parameters",
    "params": "parameters",
    "ratio_to_full": "% of full fine-tuning",
}
"""Headers of the per-layer and per-mode table columns that are not declared quantities."""
_COUNTS = frozenset({"call", "trainable_params", "params", "n_params", "n_trainable", "n_rows"})


def _blank(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a tuple or list (a shape): not blank
        return False


def _header(column: str) -> str:
    if column in _LAYER_HEADERS:
        return _LAYER_HEADERS[column]
    try:  # a declared quantity: its short label, without the unit (added from the column's scale)
        return describe(column, ReportTotals, RunMemory).short
    except KeyError:
        return column.removesuffix("_bytes").replace("_", " ")


def readable_table(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str | None]]:
    """``(frame, formats)``: a per-layer (:func:`layer_table`) or per-mode
    (:func:`~tinytl_core.comparisons.compare_modes`) table as the page shows it -- readable headers, each
    byte column in the unit its largest value reads best in (B, KB, MB, GB: :func:`bytes_unit`, named in
    its header), counts as whole numbers, empty columns dropped; ``formats`` maps each numeric header to a
    printf format (None: text). The CSV downloads keep the raw columns (bytes, field names)."""
    out: dict[str, pd.Series] = {}
    formats: dict[str, str | None] = {}
    for column in table.columns:
        values = table[column]
        if values.map(_blank).all():
            continue
        header = _header(column)
        if column.endswith("_bytes"):
            scaled, unit, fmt = in_own_unit(pd.to_numeric(values, errors="coerce"))
            header = f"{header} ({unit})"
            out[header], formats[header] = scaled.round(2), fmt
        elif column in _COUNTS:
            out[header] = pd.to_numeric(values, errors="coerce").round().astype("Int64")
            formats[header] = "localized"
        elif column == "ratio_to_full":  # a share, not a bare ratio: its direction cannot be misread
            out[header] = (100 * pd.to_numeric(values, errors="coerce")).round(0)
            formats[header] = "%.0f%%"
        else:
            out[header] = values
            formats[header] = None
    return pd.DataFrame(out), formats
