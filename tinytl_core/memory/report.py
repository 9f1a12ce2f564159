"""Result objects and text tables for the memory model (MB = 10^6 bytes, as in the paper)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from tinytl_core.quantities import (
    CUDA_WORKSPACES_NOTE,
    MB,
    ModelledMemory,
    RunMemory,
    Unit,
    describe,
    format_bytes,
    format_mb,
    names,
    quantity,
)

__all__ = [
    "MB",
    "MODE_COLUMNS",
    "MeasuredPeaks",
    "MemoryReport",
    "ReportTotals",
    "format_modes",
    "merge_measured",
]


@dataclass
class ReportTotals(ModelledMemory):
    """The totals of a :class:`MemoryReport` (bytes) and the settings it was modelled with.

    The modelled figures shared with a run's (:class:`~tinytl_core.quantities.ModelledMemory`: weights,
    gradients + optimizer state, necessary and stock activations, ``total_modelled_bytes``), plus the
    transient working sets, the total with stock activations and, in the paper accounting, the stored
    activations. See :mod:`tinytl_core.memory.accounting`.
    """

    n_params: int | None = quantity("parameters", Unit.COUNT, short="params")
    n_trainable: int | None = quantity("trainable parameters", Unit.COUNT, short="trainable params")
    activations_stored_bytes: float | None = quantity(
        "activations stored (paper accounting)",
        short="act. stored",
        help="Paper accounting: the sum of what each layer stores (the necessary figure is the peak).",
    )
    transient_bytes: float | None = quantity(
        "transient working set",
        short="transient",
        help="The step's peak minus the stored activations: inputs, outputs and pending residual inputs "
        "of the layer running.",
    )
    transient_stock_bytes: float | None = quantity(
        "transient working set, stock PyTorch", short="transient stock"
    )
    total_stock_bytes: float | None = quantity(
        "total with stock activations",
        short="total stock",
        help="Weights + gradients + optimizer state + what stock PyTorch stores + its transient.",
    )
    n_rows: int | None = quantity("trace rows", Unit.COUNT, short="rows")
    accounting: str = "complete"
    input_size: tuple[int, int, int] = (0, 0, 0)
    batch_size: int | None = None
    optimizer: str = ""
    frozen_weight_bits: int | None = None
    output_shape: tuple[int, ...] | None = None
    mode: str = ""
    backbone: str = ""


@dataclass
class MeasuredPeaks:
    """The measured peak of one real training step (bytes), with stock PyTorch layers and with the
    engine's: what a user checks (see :mod:`tinytl_core.memory.timeline`)."""

    peak_measured_stock_bytes: float | None = quantity(
        "step peak, stock PyTorch, measured",
        short="peak stock measured",
        help="The most bytes alive at once in one real step with stock PyTorch layers (weights, optimizer "
        "state, input, activations, gradients, temporaries): PyTorch's profiler, or "
        "torch.cuda.max_memory_allocated on CUDA. " + CUDA_WORKSPACES_NOTE,
    )
    peak_measured_engine_bytes: float | None = quantity(
        "step peak, engine, measured",
        short="peak engine measured",
        help="The same with the training engine's layers.",
    )


TOTALS = names(ReportTotals)
MEMORY = names(RunMemory)
PEAKS = names(MeasuredPeaks)

MODE_COLUMNS: tuple[str, ...] = (
    TOTALS.weights_bytes,
    TOTALS.grads_optimizer_bytes,
    TOTALS.activations_necessary_bytes,
    TOTALS.activations_stock_bytes,
    MEMORY.activations_measured_stock_bytes,
    MEMORY.activations_measured_engine_bytes,
    TOTALS.total_modelled_bytes,
    PEAKS.peak_measured_stock_bytes,
    PEAKS.peak_measured_engine_bytes,
)
"""Per-mode byte columns the CLI shows (in MB), in order, headed by their short labels; then ``x full``."""
RATIO_COLUMN, RATIO_HEADER = "ratio_to_full", "x full"
SUMMARY_FIELDS: tuple[str, ...] = (
    TOTALS.weights_bytes,
    TOTALS.grads_optimizer_bytes,
    TOTALS.activations_necessary_bytes,
    TOTALS.activations_stock_bytes,
    TOTALS.transient_bytes,
    TOTALS.total_modelled_bytes,
    TOTALS.total_stock_bytes,
)
"""The totals :meth:`MemoryReport.summary` lists."""


@dataclass
class MemoryReport:
    """Per-layer memory table and totals of one model, mode, input size, batch size and optimizer.

    ``layers``: one row per layer call in execution order (see
    :data:`tinytl_core.memory.accounting.LAYER_COLUMNS`); ``totals``: the sums (bytes) and settings
    (:class:`ReportTotals`).
    """

    layers: pd.DataFrame
    totals: ReportTotals = field(default_factory=ReportTotals)

    def summary(self) -> str:
        """A short multi-line text summary of the totals."""
        t = self.totals
        c, h, w = t.input_size
        lines = [
            f"{t.accounting} accounting, batch {t.batch_size}, {c}x{h}x{w}, "
            f"optimizer {t.optimizer}: {t.n_trainable or 0:,} of {t.n_params or 0:,} parameters train",
        ]
        for name in SUMMARY_FIELDS:
            label = describe(name, ReportTotals).label
            if name == TOTALS.activations_necessary_bytes and t.accounting == "paper":
                label = "activations (paper: peak, stored + working set)"
            lines.append(f"  {label:<44}{format_mb(getattr(t, name)):>12} MB")
        return "\n".join(lines)

    def top_layers(self, n: int = 10, column: str = TOTALS.activations_necessary_bytes) -> pd.DataFrame:
        """The ``n`` rows storing the most bytes in ``column``."""
        return self.layers.nlargest(n, column)


def format_modes(table: pd.DataFrame) -> str:
    """Render a :func:`~tinytl_core.comparisons.compare_modes` table as aligned text, each figure in the
    unit its size calls for (:func:`~tinytl_core.quantities.format_bytes`: ``2.90 MB`` beside ``2.52 TB``
    at 1024 px and batch 4096; never millions of MB, never a small figure rounded to 0.0)."""
    cols = [c for c in MODE_COLUMNS if c in table.columns]
    ratio = [RATIO_HEADER] if RATIO_COLUMN in table.columns else []
    header = ["mode", *(describe(c, ReportTotals, RunMemory, MeasuredPeaks).short for c in cols), *ratio]
    rows = []
    for _, r in table.iterrows():
        if not r.get("applicable", True):
            rows.append([r["mode"], f"not applicable: {r.get('reason', '')}"])
            continue
        cells = [r["mode"], *(format_bytes(r[c]) for c in cols)]
        if ratio:
            cells.append("-" if pd.isna(r[RATIO_COLUMN]) else f"{r[RATIO_COLUMN]:.2f}")
        rows.append(cells)
    full_rows = [r for r in rows if len(r) == len(header)]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *full_rows)]

    def line(cells: list) -> str:
        padded = (str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded)

    out = [line(header)]
    for r in rows:
        out.append(line(r) if len(r) == len(header) else f"{r[0].ljust(widths[0])}  {r[1]}")
    return "\n".join(out) + "\n(decimal units: KB = 10^3, MB = 10^6, GB = 10^9 bytes)"


def merge_measured(
    layers: pd.DataFrame, measured: pd.DataFrame, column: str = MEMORY.activations_measured_bytes
) -> pd.DataFrame:
    """``layers`` (an analysis table) with the ``activations_measured_bytes`` column of a measurement's
    ``per_layer`` table beside it as ``column``, matched by layer name, call number and row kind (rows
    the measurement did not keep saved nothing: 0)."""
    keys = ["layer", "call", "kind"]
    part = measured[[*keys, MEMORY.activations_measured_bytes]].rename(
        columns={MEMORY.activations_measured_bytes: column}
    )
    merged = layers.merge(part, on=keys, how="left")
    merged[column] = merged[column].fillna(0).astype("int64")
    return merged
