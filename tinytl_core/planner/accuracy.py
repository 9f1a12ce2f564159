"""Accuracy beside memory: validation accuracy of stored runs per (backbone, mode, resolution, batch size,
dataset), mean and spread over seeds (:func:`tinytl_core.seeds.group_seeds`, the sweeps' own grouping),
for the planner's table and chart.

Batch size matters (it changes the gradient noise and, at batch 1, the normalisation), so a planned
configuration gets the accuracy of runs at **its own** batch size when there are any; otherwise that of
the nearest batch size measured for the same backbone, mode and resolution, labelled "at batch N" so it
is never mistaken for a measurement of the planned batch (:func:`attach_accuracy`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from tinytl_core.seeds import group_seeds

KEYS: tuple[str, ...] = ("backbone", "mode", "resolution")
ACCURACY_COLUMNS: tuple[str, ...] = (
    *KEYS,
    "batch_size",
    "dataset",
    "steps",
    "accuracy_mean",
    "accuracy_spread",
    "n_runs",
    "source",
)
"""Columns of :func:`accuracy_table`: accuracy as a fraction, spread = the sample standard deviation over
seeds (NaN for one seed), as :func:`tinytl_core.seeds.group_seeds` computes them."""
STORED, REFERENCE = "stored", "reference"
NOT_MEASURED = "not measured yet"


def accuracy_table(runs: Iterable[Mapping[str, Any]], *, source: str = STORED) -> pd.DataFrame:
    """Finished runs, seeds pooled (:func:`~tinytl_core.seeds.group_seeds`), one row per backbone, mode,
    resolution, batch size and dataset: where several configurations share those (other steps or learning
    rates), the one trained longest, then with the most seeds. ``source``: ``stored`` runs of the results
    store or bundled ``reference`` runs. Runs without a final accuracy or resolution are left out."""
    groups = group_seeds([r for r in runs if r.get("resolution") and r.get("batch_size")], finished_only=True)
    if groups.empty:
        return pd.DataFrame(columns=list(ACCURACY_COLUMNS))
    groups = groups.assign(
        resolution=groups["resolution"].astype(int),
        batch_size=groups["batch_size"].astype(int),
        accuracy_mean=groups["acc_mean_pct"] / 100,
        accuracy_spread=groups["acc_std_pct"] / 100,
        n_runs=groups["seeds"].astype(int),
        source=source,
    )
    keys = [*KEYS, "batch_size", "dataset"]
    groups = groups.sort_values(["steps", "n_runs"], ascending=False, na_position="last", kind="stable")
    return groups.drop_duplicates(keys).sort_values(keys)[list(ACCURACY_COLUMNS)].reset_index(drop=True)


def datasets_measured(table: pd.DataFrame) -> list[str]:
    """The datasets an :func:`accuracy_table` has runs on, sorted."""
    return sorted(str(d) for d in table["dataset"].dropna().unique())


def attach_accuracy(configs: pd.DataFrame, table: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """``configs`` with ``accuracy_mean``, ``accuracy_spread``, ``n_runs``, ``accuracy_batch`` (the batch
    size it was measured at) and ``accuracy_source`` of runs on ``dataset`` with the same backbone, mode
    and resolution: at the configuration's own batch size if measured, else at the nearest measured batch
    size (the larger on a tie); stored runs before reference ones at the same batch. ``accuracy_source``
    is :data:`NOT_MEASURED` where there are none."""
    part = table[table["dataset"] == dataset]
    out = configs.copy()
    columns = {"accuracy_mean": np.nan, "accuracy_spread": np.nan, "n_runs": 0, "accuracy_batch": np.nan}
    for name, default in columns.items():
        out[name] = default
    out["accuracy_source"] = NOT_MEASURED
    if not len(part) or not len(out):
        return out
    measured = {key: group for key, group in part.groupby(list(KEYS), sort=False)}
    picks = []
    for index, backbone, mode, resolution, batch in zip(
        out.index, out["backbone"], out["mode"], out["resolution"], out["batch_size"]
    ):
        group = measured.get((backbone, mode, int(resolution)))
        if group is None:
            continue
        distance = (group["batch_size"] - int(batch)).abs()
        ranked = group.assign(
            _d=distance, _neg_batch=-group["batch_size"], _rank=(group["source"] != STORED).astype(int)
        ).sort_values(["_d", "_neg_batch", "_rank"], kind="stable")
        picks.append((index, ranked.iloc[0]))
    for index, best in picks:
        out.loc[index, ["accuracy_mean", "accuracy_spread", "n_runs", "accuracy_batch"]] = [
            best["accuracy_mean"],
            best["accuracy_spread"],
            best["n_runs"],
            best["batch_size"],
        ]
        out.loc[index, "accuracy_source"] = best["source"]
    return out


def format_accuracy(
    mean: float | None,
    spread: float | None,
    n_runs: int | None,
    source: str,
    *,
    batch: int | None = None,
    measured_batch: float | None = None,
) -> str:
    """``'84.0 ± 1.3 % (2 runs)'`` (± the standard deviation over seeds; none for one run), with
    ``' at batch 8'`` when measured at another batch than ``batch``, ``' (reference)'`` for bundled
    runs, or :data:`NOT_MEASURED`."""
    if mean is None or pd.isna(mean):
        return NOT_MEASURED
    n = int(n_runs or 0)
    spread_text = "" if spread is None or pd.isna(spread) else f" ± {100 * spread:.1f}"
    text = f"{100 * mean:.1f}{spread_text} % ({n} run{'s' if n != 1 else ''}"
    if measured_batch is not None and not pd.isna(measured_batch) and batch is not None:
        if int(measured_batch) != int(batch):
            text += f", at batch {int(measured_batch)}"
    text += ")"
    return text + (" (reference)" if source == REFERENCE else "")
