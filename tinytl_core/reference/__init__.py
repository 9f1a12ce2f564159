"""Reference results that ship with the package, read-only.

- :func:`load_reference_runs`: a small sweep run by this project (the demo backbone on the built-in
  datasets, every mode, 3 seeds), as rows of the same type as
  :meth:`tinytl_core.results.ResultsStore.list_runs`; :func:`load_reference_set` adds its provenance
  (the command that produced it, when, library versions). Written by
  ``python -m tinytl_core sweep ... --export-reference PATH`` (:func:`write_reference`).
- :data:`PAPER_TABLE2`: the points TinyTL's paper published (Table 2: ProxylessNAS-Mobile, batch 8):
  :data:`tinytl_core.paper.TABLE2`'s methods and memory with their top-1 accuracy on each dataset.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tinytl_core.paper import TABLE2
from tinytl_core.quantities import RunStatus
from tinytl_core.results import FLAGS, RUN

REFERENCE_FILE = Path(__file__).with_name("demo_sweep.json")
"""The bundled reference sweep (package data)."""
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ReferenceSet:
    """A bundled set of runs and where it came from. ``command`` reproduces it."""

    label: str
    command: str
    description: str
    created: str
    versions: Mapping[str, str]
    runs: tuple[Mapping[str, Any], ...]

    @property
    def caption(self) -> str:
        """One line saying what the set is and how it was made."""
        return f"{self.label}: {len(self.runs)} runs, made {self.created[:10]} by `{self.command}`"


def _row(run: Mapping[str, Any]) -> dict[str, Any]:
    """A stored-run row from its JSON form: statuses as :class:`RunStatus`, flags as booleans."""
    row = copy.deepcopy(dict(run))
    row[RUN.status] = RunStatus(row[RUN.status])
    for flag in FLAGS:
        if row.get(flag) is not None:
            row[flag] = bool(row[flag])
    return row


def write_reference(
    runs: Iterable[Mapping[str, Any]],
    path: str | Path,
    *,
    label: str,
    command: str,
    description: str = "",
    versions: Mapping[str, str] | None = None,
) -> Path:
    """Write ``runs`` (rows of :meth:`~tinytl_core.results.ResultsStore.list_runs`) as a reference set:
    ids renumbered 1..N in order, the ``command`` that produced them and the libraries' ``versions``."""
    rows = []
    for i, run in enumerate(runs, start=1):
        row = {k: (v.value if isinstance(v, RunStatus) else v) for k, v in run.items()}
        row[RUN.id] = i
        rows.append(row)
    if not rows:
        raise ValueError("no finished runs to write as a reference set")
    payload = {
        "format": FORMAT_VERSION,
        "label": label,
        "command": command,
        "description": description,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": dict(versions or rows[0].get("versions") or {}),
        "runs": rows,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, separators=(",", ":")) + "\n", encoding="utf-8")
    return path


@functools.lru_cache(maxsize=4)
def _load(path: str) -> ReferenceSet:
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no reference set at {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not a reference set ({exc})") from None
    except RecursionError:  # JSON nested thousands deep
        raise ValueError(f"{path} is not a reference set (its JSON is nested too deeply)") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a reference set of format {FORMAT_VERSION}")
    return ReferenceSet(
        label=payload["label"],
        command=payload["command"],
        description=payload.get("description", ""),
        created=payload["created"],
        versions=payload.get("versions", {}),
        runs=tuple(_row(r) for r in payload["runs"]),
    )


def load_reference_set(path: str | Path | None = None) -> ReferenceSet:
    """The bundled reference set (or the one at ``path``), read once per process."""
    return _load(str(Path(path or REFERENCE_FILE).resolve()))


def load_reference_runs(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The reference set's runs, as :meth:`ResultsStore.list_runs` rows (a fresh copy: safe to change)."""
    return [copy.deepcopy(dict(r)) for r in load_reference_set(path).runs]


@dataclass(frozen=True)
class PaperPoint:
    """One published point of TinyTL's Table 2: ``method`` as the paper names it, the ``mode`` of this
    project that trains the same parts, ``memory_mb`` the paper's analytic training memory (stored
    activations x batch 8 + parameters, 10^6 bytes; not a measured peak), ``top1`` in %."""

    method: str
    mode: str
    resolution: int
    memory_mb: float
    dataset: str
    dataset_title: str
    top1: float


PAPER_BACKBONE = "ProxylessNAS-Mobile (paper)"
PAPER_SOURCE = "TinyTL (Cai et al., NeurIPS 2020), Table 2: ProxylessNAS-Mobile, batch 8"
PAPER_MEMORY_NOTE = (
    "the paper's memory is analytic (activations stored for backward x batch 8 + parameters), "
    "not a measured step peak"
)
_TABLE2_DATASETS = (
    ("flowers102", "Flowers"),
    ("cars", "Cars"),
    ("cub", "CUB"),
    ("food101", "Food"),
    ("pets", "Pets"),
    ("aircraft", "Aircraft"),
    ("cifar10", "CIFAR10"),
    ("cifar100", "CIFAR100"),
)
_TABLE2_TOP1 = {  # Table 2's top-1 (%) per dataset above, as published (REFERENCE.md)
    "FT-Last": (90.1, 50.9, 73.3, 68.7, 91.3, 44.9, 85.9, 68.8),
    "TinyTL-B": (93.5, 73.4, 75.3, 75.5, 92.1, 63.2, 93.7, 78.8),
    "TinyTL-L": (95.3, 84.2, 76.8, 79.2, 91.7, 76.4, 96.1, 80.9),
    "TinyTL-L+B": (95.5, 85.0, 77.1, 79.7, 91.8, 75.4, 95.9, 81.4),
    "TinyTL-L+B @320": (96.8, 88.8, 81.0, 82.9, 92.9, 82.3, 96.1, 81.5),
    "FT-Norm+Last": (94.3, 77.9, 76.3, 77.0, 92.2, 68.1, 94.8, 80.2),
    "FT-Full": (96.8, 90.2, 81.0, 84.6, 93.0, 86.0, 97.1, 84.1),
}
PAPER_TABLE2: tuple[PaperPoint, ...] = tuple(
    PaperPoint(m.method, m.mode, m.resolution, float(m.paper_mb), name, title, top1)
    for m in TABLE2
    for (name, title), top1 in zip(_TABLE2_DATASETS, _TABLE2_TOP1[m.method])
)
"""Every published point of Table 2 (7 methods x 8 datasets); ``dataset`` in this project's names where
it has the set (``flowers102``, ``pets``...)."""
PAPER_DATASETS: dict[str, str] = dict(_TABLE2_DATASETS)
"""Table 2's datasets: name -> the paper's title."""
