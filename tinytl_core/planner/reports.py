"""The Memory Explorer's per-mode reports (:func:`tinytl_core.comparisons.mode_reports`) on disk, keyed like
the planner's profiles: a setting seen once -- by any session, before any server restart -- is read back
in milliseconds instead of traced again (every mode of a curated backbone takes seconds).

One JSON file per (backbone, resolution, batch size, optimizer, accounting, GroupNorm, modes) under
``<data home>/explorer-cache`` (safe to delete; ``TINYTL_PLANNER_CACHE=0`` turns it off with the profile
cache). The key holds :data:`REPORT_FORMAT` and :func:`~tinytl_core.planner.profile.cache_version`
(``TRACE_FORMAT``, torch, timm): bump ``TRACE_FORMAT`` when the figures' code changes. Loading reads JSON
only; nothing is executed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, fields
from pathlib import Path

import pandas as pd

from tinytl_core.comparisons import mode_reports
from tinytl_core.memory import MemoryReport, ReportTotals
from tinytl_core.modes import resolve_modes
from tinytl_core.planner.disk import JsonFolder
from tinytl_core.planner.profile import cache_version

REPORT_FORMAT = 1
"""Bump when the stored form of a :class:`~tinytl_core.memory.MemoryReport` changes."""
CACHE_NAME = "explorer-cache"
_TUPLES = {f.name for f in fields(ReportTotals) if f.name in ("input_size", "output_shape")}


def report_to_json(report: MemoryReport | str) -> dict:
    """A report (or the reason a mode does not apply) as plain JSON data."""
    if isinstance(report, str):
        return {"reason": report}
    layers = report.layers
    return {
        "columns": list(layers.columns),
        "dtypes": [str(d) for d in layers.dtypes],
        "rows": layers.astype(object).where(layers.notna(), None).values.tolist(),
        "totals": asdict(report.totals),
    }


def report_from_json(data: dict) -> MemoryReport | str:
    """Rebuild :func:`report_to_json` output (plain data: no code runs)."""
    if "reason" in data:
        return str(data["reason"])
    layers = pd.DataFrame(data["rows"], columns=data["columns"])
    layers = layers.astype(dict(zip(data["columns"], data["dtypes"])))
    totals = {k: tuple(v) if k in _TUPLES and v is not None else v for k, v in data["totals"].items()}
    return MemoryReport(layers, ReportTotals(**totals))


class ReportCache:
    """Per-mode reports on disk (see the module docstring). ``folder`` None: ``<data home>/explorer-cache``,
    or no disk cache when ``TINYTL_PLANNER_CACHE=0`` (then :meth:`reports` always traces)."""

    def __init__(self, folder: str | Path | None = None, *, disk: bool | None = None) -> None:
        self.files = JsonFolder(CACHE_NAME, folder, disk=disk)
        self.folder = self.files.folder
        self.version = f"r{REPORT_FORMAT}-{cache_version()}"
        self.built = 0  # settings traced (cache misses)
        self.loaded = 0  # settings read from disk

    def key(self, backbone: str, settings: dict) -> str:
        """The cache key of one setting (a hash; the file name)."""
        return self.files.key(self.version, backbone, settings)

    def reports(
        self,
        backbone: str,
        *,
        resolution: int | None,
        batch_size: int,
        optimizer: str = "adam",
        accounting: str = "complete",
        modes: str | Iterable[str] | None = None,
        group_norm: bool = False,
    ) -> dict[str, MemoryReport | str]:
        """:func:`tinytl_core.comparisons.mode_reports` with the same arguments, from disk when this
        setting was traced before (then stored)."""
        mode_names = [m.name for m in resolve_modes(modes)]
        settings = {
            "resolution": resolution,
            "batch_size": batch_size,
            "optimizer": optimizer.lower(),
            "accounting": accounting,
            "modes": mode_names,
            "group_norm": group_norm,
        }
        key = self.key(backbone, settings)
        data = self.files.read(key)
        if data is not None:
            try:
                out = {name: report_from_json(data[name]) for name in mode_names}
                self.loaded += 1
                return out
            except (ValueError, TypeError, KeyError, AttributeError):
                pass  # of another form: traced again
        out = mode_reports(backbone, **settings)  # the settings are mode_reports' own arguments
        self.built += 1
        self.files.write(key, {name: report_to_json(r) for name, r in out.items()})
        return out
