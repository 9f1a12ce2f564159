"""Stored runs (:class:`tinytl_core.results.ResultsStore`) shaped for the Compare runs page."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tinytl_core.results import MEMORY, RUN, ResultsStore, run_headers, run_quantity, run_table

RUN_COLUMNS: tuple[str, ...] = (
    RUN.id, RUN.status, RUN.backbone, RUN.mode, RUN.dataset, RUN.resolution, RUN.batch_size, RUN.steps_done,
    RUN.final_val_acc, RUN.best_val_acc, MEMORY.total_modelled_bytes, MEMORY.total_measured_bytes,
    MEMORY.activations_measured_bytes, RUN.n_trainable, RUN.total_time_s, RUN.images_per_s, RUN.started_at,
    RUN.message,
)
"""The run fields the Compare runs table shows, in order."""
RUN_HEADERS: dict[str, str] = run_headers(RUN_COLUMNS)
"""Column key of :func:`runs_frame` -> its header (from each quantity's metadata)."""
MEMORY_AXES: tuple[str, ...] = (
    MEMORY.total_modelled_bytes, MEMORY.total_measured_bytes, MEMORY.activations_measured_bytes,
)
"""Memory figures a run can be plotted against (:func:`memory_axis` gives the column and title of one)."""
ACCURACY = run_quantity(RUN.final_val_acc)
"""The accuracy runs are plotted and labelled with (column :attr:`~tinytl_core.quantities.Quantity.key`)."""


def memory_axis(name: str) -> tuple[str, str]:
    """The :func:`runs_frame` column of a memory figure and its axis title (``training memory, modelled
    (MB)``)."""
    q = run_quantity(name)
    return q.key, q.title


def dataset_label(name: str | None) -> str:
    """A short name for a dataset: built-in / torchvision names as they are, uploads by file name."""
    if not name:
        return ""
    return Path(name).name if ("/" in name or "\\" in name) else name


def runs_frame(runs: Iterable[Mapping[str, Any]], columns: Sequence[str] = RUN_COLUMNS) -> pd.DataFrame:
    """One row per run, the ``columns`` (default :data:`RUN_COLUMNS`) with accuracy in % and memory in MB
    (10^6 bytes), rounded to 2 decimals, keyed by each quantity's key (``final_val_acc_pct``,
    ``total_modelled_MB``; headers: :func:`~tinytl_core.results.run_headers`); uploaded datasets by file
    name."""
    shown = ({**r, RUN.dataset: dataset_label(r.get(RUN.dataset))} for r in runs)
    return run_table(shown, columns, headers=False, digits=2)


def filter_runs(frame: pd.DataFrame, **allowed: Sequence[Any] | None) -> pd.DataFrame:
    """Keep rows whose column ``name`` is in ``allowed[name]`` (an empty or None list keeps all)."""
    mask = pd.Series(True, index=frame.index)
    for column, values in allowed.items():
        if values:
            mask &= frame[column].isin(list(values))
    return frame[mask]


def run_label(run: Mapping[str, Any]) -> str:
    """How a run is named in pickers and legends: ``#id mode · backbone · dataset · acc``."""
    acc = run.get(ACCURACY.key)
    acc_text = "" if acc is None or pd.isna(acc) else f" · {acc:.1f}%"
    return f"#{run['id']} {run['mode']} · {run['backbone']} · {dataset_label(run.get('dataset'))}{acc_text}"


def export_csv_text(store: ResultsStore, run_ids: Iterable[int] | None = None) -> str:
    """The store's CSV export (all runs, or ``run_ids``) as text, for a download button."""
    buffer = io.StringIO()
    store.export_csv(buffer, run_ids)
    return buffer.getvalue()
