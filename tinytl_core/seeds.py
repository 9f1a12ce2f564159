"""Repeated seeds of one configuration: the stable key of a configuration (with and without its seed) and
the runs of each configuration grouped, their seeds pooled -- **the** mean and spread over seeds that the
sweeps (CLI summary, Compare runs) and the budget planner (accuracy beside memory) both show.

Below both of those layers (they are siblings and cannot import each other); above ``adapt`` (a stored
run's configuration is read back through :class:`~tinytl_core.adapt.AdaptConfig`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import pandas as pd

from tinytl_core.adapt import AdaptConfig
from tinytl_core.quantities import MB, RunStatus
from tinytl_core.results import MEMORY, RUN


def config_key(config: AdaptConfig | Mapping[str, Any]) -> str:
    """A stable key of a configuration: the SHA-256 (16 hex digits) of its fields as sorted JSON.

    A stored run's ``config`` dict gets the same key as the :class:`AdaptConfig` it came from: the dict is
    read back through :meth:`AdaptConfig.from_dict`, so fields added in later versions take their
    defaults on both sides and keys of older runs do not change."""
    if not isinstance(config, AdaptConfig):
        config = AdaptConfig.from_dict(dict(config))
    text = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def seedless_key(config: AdaptConfig | Mapping[str, Any]) -> str:
    """:func:`config_key` with the seed left out: repeated seeds of one configuration share it."""
    if not isinstance(config, AdaptConfig):
        config = AdaptConfig.from_dict(dict(config))
    return config_key(replace(config, seed=0))


GROUP_COLUMNS: tuple[str, ...] = ("backbone", "mode", "dataset", "resolution", "batch_size", "steps")
"""What a group shows of its configuration (it is keyed by every setting but the seed)."""
SEED_GROUP_COLUMNS: tuple[str, ...] = (
    *GROUP_COLUMNS,
    "differs_in",
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
    "differs_in": "differs in",
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
    (:func:`seedless_key`: fields added by later versions take their defaults,
    so runs stored before and after an upgrade still group), or its identifying columns when it has no
    stored configuration."""
    config = run.get("config")
    if config:
        return seedless_key(config)
    identity = (RUN.backbone, RUN.mode, RUN.dataset, RUN.resolution, RUN.batch_size, RUN.steps_planned)
    return json.dumps([run.get(c) for c in identity])


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
                "differs_in": "",
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
    _name_what_differs(rows, [members[0].get("config") for members in groups.values()])
    return pd.DataFrame(rows, columns=list(SEED_GROUP_COLUMNS))


def _name_what_differs(rows: list[dict[str, Any]], configs: list[Mapping[str, Any] | None]) -> None:
    """Fill ``differs_in`` of groups that look alike in :data:`GROUP_COLUMNS` (GroupNorm vs BatchNorm,
    8-bit weights, another learning rate, ...): the settings that tell them apart, as ``name value``."""
    alike: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        alike.setdefault(tuple(row[c] for c in GROUP_COLUMNS), []).append(i)
    for members in alike.values():
        stored = [AdaptConfig.from_dict(dict(configs[i])).to_dict() for i in members if configs[i]]
        if len(members) < 2 or len(stored) < len(members):
            continue
        keys = [
            k
            for k in stored[0]
            if k != "seed" and len({json.dumps(c[k], sort_keys=True) for c in stored}) > 1
        ]
        for i, config in zip(members, stored):
            rows[i]["differs_in"] = ", ".join(f"{k.replace('_', ' ')} {config[k]}" for k in keys)
