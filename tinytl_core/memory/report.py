"""Result objects and text tables for the memory model (MB = 10^6 bytes, as in the paper)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

MB = 1_000_000

# Per-mode columns shown by the CLI (bytes) and their short headers.
MODE_COLUMNS = {
    "weights_bytes": "weights",
    "grads_optimizer_bytes": "grads+opt",
    "activations_necessary_bytes": "act. necessary",
    "activations_stock_bytes": "act. stock",
    "activations_measured_stock_bytes": "act. stock measured",
    "activations_measured_engine_bytes": "act. engine measured",
    "total_bytes": "total",
    "ratio_to_full": "x full",
}


def megabytes(nbytes: float | None, digits: int = 1) -> str:
    """``nbytes`` as a string in MB (10^6 bytes); '-' for None/NaN."""
    if nbytes is None or pd.isna(nbytes):
        return "-"
    return f"{nbytes / MB:,.{digits}f}"


@dataclass
class MemoryReport:
    """Per-layer memory table and totals of one model, mode, input size, batch size and optimizer.

    ``layers``: one row per layer call in execution order (see
    :data:`tinytl_core.memory.accounting.LAYER_COLUMNS`); ``totals``: the sums (bytes) and settings.
    """

    layers: pd.DataFrame
    totals: dict = field(default_factory=dict)

    def summary(self) -> str:
        """A short multi-line text summary of the totals."""
        t = self.totals
        c, h, w = t.get("input_size", (0, 0, 0))
        lines = [
            f"{t.get('accounting', '?')} accounting, batch {t.get('batch_size')}, {c}x{h}x{w}, "
            f"optimizer {t.get('optimizer')}: {t.get('n_trainable', 0):,} of {t.get('n_params', 0):,} "
            "parameters train",
        ]
        necessary = "paper: peak, stored + working set" if t.get("accounting") == "paper" else "necessary"
        for label, key in (
            ("weights", "weights_bytes"),
            ("gradients + optimizer state", "grads_optimizer_bytes"),
            (f"activations ({necessary})", "activations_necessary_bytes"),
            ("activations (stock PyTorch saves)", "activations_stock_bytes"),
            ("transient working set", "transient_bytes"),
            ("total", "total_bytes"),
            ("total with stock activations", "total_stock_bytes"),
        ):
            lines.append(f"  {label:<44}{megabytes(t.get(key)):>12} MB")
        return "\n".join(lines)

    def top_layers(self, n: int = 10, column: str = "activation_necessary_bytes") -> pd.DataFrame:
        """The ``n`` rows storing the most bytes in ``column``."""
        return self.layers.nlargest(n, column)


def format_modes(table: pd.DataFrame) -> str:
    """Render a :func:`~tinytl_core.memory.compare.compare_modes` table as aligned text (MB)."""
    cols = [c for c in MODE_COLUMNS if c in table.columns]
    header = ["mode", *(MODE_COLUMNS[c] for c in cols)]
    rows = []
    for _, r in table.iterrows():
        if not r.get("applicable", True):
            rows.append([r["mode"], f"not applicable: {r.get('reason', '')}"])
            continue
        cells = [r["mode"]]
        for c in cols:
            cells.append("-" if pd.isna(r[c]) else f"{r[c]:.2f}" if c == "ratio_to_full" else megabytes(r[c]))
        rows.append(cells)
    full_rows = [r for r in rows if len(r) == len(header)]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *full_rows)]

    def line(cells: list) -> str:
        padded = (str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded)

    out = [line(header)]
    for r in rows:
        out.append(line(r) if len(r) == len(header) else f"{r[0].ljust(widths[0])}  {r[1]}")
    return "\n".join(out) + "\n(MB = 10^6 bytes)"


def merge_measured(
    layers: pd.DataFrame, measured: pd.DataFrame, column: str = "activation_measured_bytes"
) -> pd.DataFrame:
    """``layers`` (an analysis table) with the ``activation_measured_bytes`` column of a measurement's
    ``per_layer`` table beside it as ``column``, matched by layer name, call number and row kind (rows
    the measurement did not keep saved nothing: 0)."""
    keys = ["layer", "call", "kind"]
    part = measured[[*keys, "activation_measured_bytes"]].rename(
        columns={"activation_measured_bytes": column}
    )
    merged = layers.merge(part, on=keys, how="left")
    merged[column] = merged[column].fillna(0).astype("int64")
    return merged
