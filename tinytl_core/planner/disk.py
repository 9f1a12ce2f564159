"""A folder of JSON files keyed by hashes: the disk side of the planner's profile cache and the Memory
Explorer's report cache (:mod:`tinytl_core.planner.profile`, :mod:`tinytl_core.planner.reports`).

A file is written atomically (a reader never sees half of one) and read as JSON only (nothing is
executed); a damaged or missing file reads as None, so the caller builds it again. The folder is safe to
delete. ``TINYTL_PLANNER_CACHE=0`` turns every such folder off (reads miss, writes are dropped).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tinytl_core.paths import cache_dir

DISK_ENV = "TINYTL_PLANNER_CACHE"


class JsonFolder:
    """JSON files named by :meth:`key` under ``folder`` (None: ``<data home>/<name>``, or no folder at all
    when ``disk`` is False; ``disk`` None reads :data:`DISK_ENV`)."""

    def __init__(self, name: str, folder: str | Path | None = None, *, disk: bool | None = None) -> None:
        if disk is None:
            disk = os.environ.get(DISK_ENV, "1") != "0"
        self.folder = Path(folder) if folder is not None else (cache_dir(name) if disk else None)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(*parts: Any) -> str:
        """The file name (a hash) of ``parts``, any JSON-able values (dict keys in sorted order)."""
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def path(self, key: str) -> Path | None:
        """Where ``key``'s file lives (None without a folder)."""
        return self.folder / f"{key}.json" if self.folder is not None else None

    def read(self, key: str) -> Any | None:
        """The JSON data stored under ``key``; None when there is none or it cannot be read."""
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):  # damaged or hostile: rebuilt
            return None

    def write(self, key: str, data: Any) -> None:
        """Store ``data`` under ``key`` atomically; a full disk or data JSON cannot hold loses only the
        cached copy (the caller has the data)."""
        path = self.path(key)
        if path is None:
            return
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
        except (OSError, TypeError, ValueError):
            tmp.unlink(missing_ok=True)

    def clear(self) -> int:
        """Delete every file; returns how many were deleted."""
        if self.folder is None:
            return 0
        n = 0
        for f in self.folder.glob("*.json"):
            f.unlink(missing_ok=True)
            n += 1
        return n
