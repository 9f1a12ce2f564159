"""Stored runs (:class:`tinytl_core.results.ResultsStore`) shaped for the Compare runs page."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tinytl_core.memory import MB
from tinytl_core.results import ResultsStore

MEMORY_AXES: dict[str, str] = {
    "total_modelled_MB": "training memory, modelled (MB)",
    "total_measured_MB": "training memory, measured (MB)",
    "activations_measured_MB": "activations measured in one step (MB)",
}
"""Memory columns a run can be plotted against, and their axis titles."""

RUN_LABELS: dict[str, str] = {
    "id": "id",
    "status": "status",
    "backbone": "backbone",
    "mode": "mode",
    "dataset": "dataset",
    "resolution": "px",
    "batch_size": "batch",
    "steps_done": "steps",
    "val_acc_pct": "val acc %",
    "best_val_acc_pct": "best val acc %",
    "total_modelled_MB": "memory modelled MB",
    "total_measured_MB": "memory measured MB",
    "activations_measured_MB": "act. measured MB",
    "n_trainable": "trainable params",
    "total_time_s": "time s",
    "images_per_s": "images/s",
    "started_at": "started (UTC)",
    "message": "message",
}
"""Columns of :func:`runs_frame`, in order, and their display names."""
RUN_COLUMNS: tuple[str, ...] = tuple(RUN_LABELS)


def dataset_label(name: str | None) -> str:
    """A short name for a dataset: built-in / torchvision names as they are, uploads by file name."""
    if not name:
        return ""
    return Path(name).name if ("/" in name or "\\" in name) else name


def runs_frame(runs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per run with accuracy in % and memory in MB (10^6 bytes), in :data:`RUN_COLUMNS` order."""
    rows = []
    for r in runs:

        def mb(key: str, run: Mapping[str, Any] = r) -> float | None:
            return None if run.get(key) is None else run[key] / MB

        def pct(key: str, run: Mapping[str, Any] = r) -> float | None:
            return None if run.get(key) is None else 100 * run[key]

        rows.append(
            {
                **{
                    k: r.get(k)
                    for k in (
                        "id",
                        "status",
                        "backbone",
                        "mode",
                        "resolution",
                        "batch_size",
                        "steps_done",
                        "n_trainable",
                        "total_time_s",
                        "images_per_s",
                        "started_at",
                        "message",
                    )
                },
                "dataset": dataset_label(r.get("dataset")),
                "val_acc_pct": pct("final_val_acc"),
                "best_val_acc_pct": pct("best_val_acc"),
                "total_modelled_MB": mb("total_modelled_bytes"),
                "total_measured_MB": mb("total_measured_bytes"),
                "activations_measured_MB": mb("activations_measured_bytes"),
            }
        )
    frame = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    for col in (
        "val_acc_pct",
        "best_val_acc_pct",
        "total_modelled_MB",
        "total_measured_MB",
        "activations_measured_MB",
        "total_time_s",
        "images_per_s",
    ):
        frame[col] = pd.to_numeric(frame[col]).round(2)
    return frame


def filter_runs(frame: pd.DataFrame, **allowed: Sequence[Any] | None) -> pd.DataFrame:
    """Keep rows whose column ``name`` is in ``allowed[name]`` (an empty or None list keeps all)."""
    mask = pd.Series(True, index=frame.index)
    for column, values in allowed.items():
        if values:
            mask &= frame[column].isin(list(values))
    return frame[mask]


def run_label(run: Mapping[str, Any]) -> str:
    """How a run is named in pickers and legends: ``#id mode · backbone · dataset · acc``."""
    acc = run.get("val_acc_pct")
    acc_text = "" if acc is None or pd.isna(acc) else f" · {acc:.1f}%"
    return f"#{run['id']} {run['mode']} · {run['backbone']} · {dataset_label(run.get('dataset'))}{acc_text}"


def export_csv_text(store: ResultsStore, run_ids: Iterable[int] | None = None) -> str:
    """The store's CSV export (all runs, or ``run_ids``) as text, for a download button."""
    buffer = io.StringIO()
    store.export_csv(buffer, run_ids)
    return buffer.getvalue()
