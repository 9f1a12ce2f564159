"""Accuracy beside memory: validation accuracy of stored runs, per (backbone, mode, resolution, dataset),
mean and spread over seeds -- for the planner's table and chart."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from tinytl_core.quantities import RunStatus

KEYS: tuple[str, ...] = ("backbone", "mode", "resolution")
ACCURACY_COLUMNS: tuple[str, ...] = (
    *KEYS,
    "dataset",
    "accuracy_mean",
    "accuracy_spread",
    "n_runs",
    "source",
)
"""Columns of :func:`accuracy_table`: accuracy as a fraction, spread = half the range over runs (seeds)."""
STORED, REFERENCE = "stored", "reference"
NOT_MEASURED = "not measured yet"


def accuracy_table(runs: Iterable[Mapping[str, Any]], *, source: str = STORED) -> pd.DataFrame:
    """Finished runs grouped by backbone, mode, resolution and dataset: mean validation accuracy, half the
    range over runs (seeds; 0 for one run), run count and ``source`` (``stored`` runs of the results store,
    or bundled ``reference`` runs). Runs without a final accuracy or resolution are left out."""
    records = [
        {
            "backbone": r.get("backbone"),
            "mode": r.get("mode"),
            "resolution": int(r["resolution"]),
            "dataset": r.get("dataset"),
            "acc": float(r["final_val_acc"]),
        }
        for r in runs
        if str(r.get("status", RunStatus.FINISHED.value)) == RunStatus.FINISHED.value
        and r.get("final_val_acc") is not None
        and not pd.isna(r.get("final_val_acc"))
        and r.get("resolution")
    ]
    if not records:
        return pd.DataFrame(columns=list(ACCURACY_COLUMNS))
    frame = pd.DataFrame.from_records(records)
    grouped = frame.groupby([*KEYS, "dataset"], sort=True)["acc"]
    out = grouped.agg(accuracy_mean="mean", lo="min", hi="max", n_runs="count").reset_index()
    out["accuracy_spread"] = (out["hi"] - out["lo"]) / 2
    out["source"] = source
    return out[list(ACCURACY_COLUMNS)]


def datasets_measured(table: pd.DataFrame) -> list[str]:
    """The datasets an :func:`accuracy_table` has runs on, sorted."""
    return sorted(str(d) for d in table["dataset"].dropna().unique())


def attach_accuracy(configs: pd.DataFrame, table: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """``configs`` with ``accuracy_mean``, ``accuracy_spread``, ``n_runs`` and ``accuracy_source`` of runs on
    ``dataset`` with the same backbone, mode and resolution (any batch size), stored runs before reference
    ones; ``accuracy_source`` is :data:`NOT_MEASURED` where there are none."""
    part = table[table["dataset"] == dataset].copy()
    part["rank"] = (part["source"] != STORED).astype(int)
    part = part.sort_values("rank").drop_duplicates(list(KEYS))
    part = part[[*KEYS, "accuracy_mean", "accuracy_spread", "n_runs", "source"]].rename(
        columns={"source": "accuracy_source"}
    )
    merged = configs.merge(part, on=list(KEYS), how="left")
    merged["accuracy_source"] = merged["accuracy_source"].fillna(NOT_MEASURED)
    return merged


def format_accuracy(mean: float | None, spread: float | None, n_runs: int | None, source: str) -> str:
    """``'84.0 ± 1.3 % (2 runs)'``, ``'… (reference)'``, or :data:`NOT_MEASURED`."""
    if mean is None or pd.isna(mean):
        return NOT_MEASURED
    n = int(n_runs or 0)
    text = f"{100 * mean:.1f} ± {100 * (spread or 0):.1f} % ({n} run{'s' if n != 1 else ''})"
    return text + (" (reference)" if source == REFERENCE else "")
