"""Repeated seeds of one configuration grouped: mean and spread of accuracy and memory (the points of the
paper's memory-vs-accuracy figure), for the sweep CLI's summary and the Compare runs page."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from tinytl_core.quantities import MB, RunStatus
from tinytl_core.results import MEMORY, RUN
from tinytl_core.sweeps.grid import seedless_key

GROUP_COLUMNS: tuple[str, ...] = ("backbone", "mode", "dataset", "resolution", "batch_size", "steps")
"""What a group shows of its configuration (it is keyed by every setting but the seed)."""
SEED_GROUP_COLUMNS: tuple[str, ...] = (
    *GROUP_COLUMNS,
    "seeds",
    "acc_mean_pct",
    "acc_std_pct",
    "acc_min_pct",
    "acc_max_pct",
    "peak_mean_MB",
    "peak_std_MB",
    "modelled_mean_MB",
    "run_ids",
)
"""Columns of :func:`group_seeds`, in order."""
SEED_GROUP_HEADERS: dict[str, str] = {
    "backbone": "backbone",
    "mode": "mode",
    "dataset": "dataset",
    "resolution": "px",
    "batch_size": "batch",
    "steps": "steps",
    "seeds": "seeds",
    "acc_mean_pct": "val acc mean %",
    "acc_std_pct": "val acc std %",
    "acc_min_pct": "val acc min %",
    "acc_max_pct": "val acc max %",
    "peak_mean_MB": "step peak measured MB (mean)",
    "peak_std_MB": "step peak std MB",
    "modelled_mean_MB": "step peak modelled MB (mean)",
    "run_ids": "runs",
}
"""Column -> header of a :func:`group_seeds` table."""


def seed_group_key(run: Mapping[str, Any]) -> str:
    """What repeated seeds share: the run's stored configuration without its seed
    (:func:`~tinytl_core.sweeps.grid.seedless_key`: fields added by later versions take their defaults,
    so runs stored before and after an upgrade still group), or its identifying columns when it has no
    stored configuration."""
    config = run.get("config")
    if config:
        return seedless_key(config)
    return json.dumps([run.get(c) for c in (RUN.backbone, RUN.mode, RUN.dataset, RUN.resolution)])


def group_seeds(runs: Iterable[Mapping[str, Any]], *, finished_only: bool = True) -> pd.DataFrame:
    """One row per configuration, its seeds pooled: the number of seeds, validation accuracy (mean,
    sample standard deviation, min, max; in %) and the measured step peak (``total_measured_bytes``; mean
    and standard deviation in MB), the modelled peak's mean, and the ids of the runs. Standard deviations
    of a single seed are NaN (no spread to tell). Only finished runs with an accuracy count (unless
    ``finished_only`` is False). Rows in first-seen order of ``runs``."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        if finished_only and RunStatus(run[RUN.status]) is not RunStatus.FINISHED:
            continue
        if run.get(RUN.final_val_acc) is None:
            continue
        groups.setdefault(seed_group_key(run), []).append(run)
    rows = []
    for members in groups.values():
        first = members[0]
        acc = pd.Series([100 * float(r[RUN.final_val_acc]) for r in members])
        peak = pd.Series([r.get(MEMORY.total_measured_bytes) for r in members], dtype=float) / MB
        modelled = pd.Series([r.get(MEMORY.total_modelled_bytes) for r in members], dtype=float) / MB
        rows.append(
            {
                "backbone": first.get(RUN.backbone),
                "mode": first.get(RUN.mode),
                "dataset": first.get(RUN.dataset),
                "resolution": first.get(RUN.resolution),
                "batch_size": first.get(RUN.batch_size),
                "steps": first.get(RUN.steps_planned),
                "seeds": len(members),
                "acc_mean_pct": acc.mean(),
                "acc_std_pct": acc.std(ddof=1) if len(acc) > 1 else float("nan"),
                "acc_min_pct": acc.min(),
                "acc_max_pct": acc.max(),
                "peak_mean_MB": peak.mean(),
                "peak_std_MB": peak.std(ddof=1) if peak.count() > 1 else float("nan"),
                "modelled_mean_MB": modelled.mean(),
                "run_ids": ", ".join(f"#{r[RUN.id]}" for r in members if r.get(RUN.id) is not None),
            }
        )
    return pd.DataFrame(rows, columns=list(SEED_GROUP_COLUMNS))
