"""Stored runs (:class:`tinytl_core.results.ResultsStore`) shaped for the Compare runs page."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sqlite3
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tinytl_core.data import dataset_display_name
from tinytl_core.modes import MODES
from tinytl_core.quantities import MB, Unit
from tinytl_core.reports import in_own_unit
from tinytl_core.results import MEMORY, RUN, ResultsStore, run_headers, run_quantity, run_table
from tinytl_core.ui.errors import public_text

RUN_COLUMNS: tuple[str, ...] = (
    RUN.id,
    RUN.status,
    RUN.backbone,
    RUN.mode,
    RUN.dataset,
    RUN.resolution,
    RUN.batch_size,
    RUN.group_norm,
    RUN.weight_bits,
    RUN.steps_done,
    RUN.final_val_acc,
    RUN.best_val_acc,
    MEMORY.total_modelled_bytes,
    MEMORY.total_measured_bytes,
    MEMORY.activations_measured_bytes,
    RUN.n_trainable,
    RUN.total_time_s,
    RUN.images_per_s,
    RUN.started_at,
    RUN.message,
)
"""The run fields the Compare runs table shows, in order."""
RUN_HEADERS: dict[str, str] = run_headers(RUN_COLUMNS)
"""Column key of :func:`runs_frame` -> its header (from each quantity's metadata)."""
MEMORY_AXES: tuple[str, ...] = (
    MEMORY.total_modelled_bytes,
    MEMORY.total_measured_bytes,
    MEMORY.activations_measured_bytes,
)
"""Memory figures a run can be plotted against (:func:`memory_axis` gives the column and title of one)."""
ACCURACY = run_quantity(RUN.final_val_acc)
"""The accuracy runs are plotted and labelled with (column :attr:`~tinytl_core.quantities.Quantity.key`)."""


def column_formats(columns: Sequence[str] = RUN_COLUMNS) -> dict[str, tuple[str, str | None]]:
    """Key -> ``(header, printf format)`` of each of ``columns``, from the quantities' metadata: every
    rounded figure (%, MB, s) with its own decimals (``%.1f``), counts as integers (``%d``), text as it is
    (None). One rule for every column, so no figure is left unformatted."""
    out: dict[str, tuple[str, str | None]] = {}
    for name in columns:
        q = run_quantity(name)
        if q.digits is not None and q.unit.numeric:
            fmt: str | None = f"%.{q.digits}f"
        elif q.unit is Unit.COUNT:
            fmt = "%d"
        else:
            fmt = None
        out[q.key] = (q.header, fmt)
    return out


def table_display(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, tuple[str, str | None]]]:
    """``(frame, formats)`` for the runs table: :func:`column_formats` with each size column in the unit
    its largest value calls for (:func:`~tinytl_core.quantities.bytes_unit`, named in its header: ``total
    modelled KB`` for the demo's runs, ``GB`` at 1024 px), so no size reads ``0.00`` or ``110,150.00``.
    The frame's keys stay (the page's filters and chart read the MB columns of :func:`runs_frame`)."""
    formats = column_formats()
    shown = frame.copy()
    for name in RUN_COLUMNS:
        q = run_quantity(name)
        if q.unit is not Unit.BYTES or q.key not in shown:
            continue
        shown[q.key], unit, fmt = in_own_unit(pd.to_numeric(shown[q.key], errors="coerce") * MB)
        formats[q.key] = (formats[q.key][0].removesuffix(" MB") + f" {unit}", fmt)
    return shown, formats


_ID = re.compile(r"^#?(\d+)$")


def parse_run_ids(text: str, known: Iterable[int]) -> tuple[list[int], list[str]]:
    """The run ids typed in ``text`` (``3``, ``#3``, separated by commas or spaces), exactly: ``#3`` is run 3
    and never run 13. Returns ``(ids in the order typed, without repeats; problems)``; a token that is not
    an id, or an id not among ``known``, is a problem and selects nothing."""
    known = set(known)
    ids: list[int] = []
    problems: list[str] = []
    for token in re.split(r"[,;\s]+", re.sub(r"#\s+", "#", text.strip())):
        if not token:
            continue
        match = _ID.match(token)
        if match is None:
            problems.append(f"{token!r} is not a run id (type numbers such as 3 or #3)")
            continue
        run_id = int(match.group(1))
        if run_id not in known:
            problems.append(f"there is no run #{run_id}")
        elif run_id not in ids:
            ids.append(run_id)
    return ids, problems


def restore_runs(store: ResultsStore, records: Iterable[Mapping[str, Any]]) -> list[int]:
    """Put back runs deleted in this session (``records`` as :meth:`ResultsStore.get_run` gave them), each
    under its own id when that id is still free (the store never reuses ids); returns the ids they have."""
    restored = []
    for record in records:
        old_id = int(record[RUN.id])
        new_id = store.save_run({k: v for k, v in record.items() if k != RUN.id})
        if new_id != old_id:
            with sqlite3.connect(store.path, timeout=30) as con:
                if con.execute("SELECT 1 FROM runs WHERE id = ?", (old_id,)).fetchone() is None:
                    con.execute("UPDATE runs SET id = ? WHERE id = ?", (old_id, new_id))
                    new_id = old_id
            con.close()
        restored.append(new_id)
    return restored


def memory_axis(name: str) -> tuple[str, str]:
    """The :func:`runs_frame` column of a memory figure and its axis title (``training memory, modelled
    (MB)``)."""
    q = run_quantity(name)
    return q.key, q.title


_UNITS: dict[str, Unit] = {name: run_quantity(name).unit for name in (*RUN, *MEMORY)}
"""Each run column's unit (what values it can take)."""


def dataset_label(name: str | None) -> str:
    """How a dataset is shown: built-in / torchvision names as they are, an upload by the user's own file
    name (:func:`tinytl_core.data.dataset_display_name`), any other path by its last part."""
    return dataset_display_name(name)


def public_run(run: Mapping[str, Any], *, figures: bool = True) -> dict[str, Any]:
    """``run`` as the app may show it to anyone: its dataset by :func:`dataset_label` (never the server
    path an upload is kept at), also in its stored configuration, its message without server paths
    (:func:`~tinytl_core.ui.errors.public_text`), and a figure its quantity cannot take (an accuracy of
    ``inf`` or over 100%, a negative size: ``Unit.plausible``) as missing. Every view of stored runs in
    the app reads them through this: tables, seed groups, labels, the planner's accuracy, the export
    (``figures`` False: its text fields only, the figures exported as stored)."""
    out = dict(run)
    for name, value in run.items() if figures else ():  # outside its quantity's range (inf, 1e300 %)
        unit = _UNITS.get(name)
        if unit is not None and not unit.plausible(value):
            out[name] = None
    if RUN.dataset in out:
        out[RUN.dataset] = dataset_label(out[RUN.dataset])
    if out.get(RUN.message):
        out[RUN.message] = public_text(out[RUN.message]) or None
    config = out.get("config")
    if isinstance(config, Mapping) and config.get("dataset"):
        out["config"] = {**config, "dataset": dataset_label(str(config["dataset"]))}
    return out


def runs_frame(runs: Iterable[Mapping[str, Any]], columns: Sequence[str] = RUN_COLUMNS) -> pd.DataFrame:
    """One row per run (:func:`public_run`), the ``columns`` (default :data:`RUN_COLUMNS`) with accuracy
    in % rounded to 2 decimals and memory in MB (10^6 bytes) unrounded (the table shows 2 decimals, a
    chart rescales them), keyed by each quantity's key
    (``final_val_acc_pct``, ``total_modelled_MB``; headers: :func:`~tinytl_core.results.run_headers`)."""
    return _frame([public_run(r) for r in runs], columns)


def _frame(shown: Sequence[Mapping[str, Any]], columns: Sequence[str] = RUN_COLUMNS) -> pd.DataFrame:
    """:func:`runs_frame` of runs already through :func:`public_run`."""
    frame = run_table(shown, columns, headers=False, digits=2)
    for name in columns:  # sizes unrounded: a chart scales them to KB or GB (5.17 KB was drawn at 10)
        q = run_quantity(name)
        if q.unit is Unit.BYTES:
            frame[q.key] = pd.to_numeric(pd.Series([r.get(name) for r in shown], dtype=object)) / MB
    return frame


@dataclass(frozen=True)
class StoredRuns:
    """Every stored run, read once per :func:`runs_version`: the store's records by id (histories
    included) and their :func:`runs_frame`."""

    records: dict[int, dict[str, Any]]
    frame: pd.DataFrame


def runs_version(store: ResultsStore) -> str:
    """A fingerprint of the store's runs that changes whenever a run is saved, deleted or restored, or the
    schema changes: the schema version and every run id. A run's row is never changed after it is saved
    (a restored run comes back under its own id with its own record), so its id stands for its content.
    Cheap (one scan of the id index, no JSON parsed), so a page can check it on every rerun and read the
    runs again only when it changed (:func:`load_runs`)."""

    def read(con: sqlite3.Connection) -> tuple[int, list[int]]:
        schema = int(con.execute("PRAGMA user_version").fetchone()[0])
        return schema, [int(row[0]) for row in con.execute("SELECT id FROM runs ORDER BY id")]

    schema, ids = store.execute(read)
    digest = hashlib.blake2b(array("q", ids).tobytes(), digest_size=16).hexdigest()
    return f"{schema}:{len(ids)}:{digest}"


def load_runs(store: ResultsStore) -> StoredRuns:
    """Every run of ``store`` (newest first) with its :func:`runs_frame`: the one read of the runs table
    (and parse of every history) that the Compare runs page caches per :func:`runs_version`."""
    records = {int(r[RUN.id]): public_run(r) for r in store.list_runs()}
    return StoredRuns(records, _frame(list(records.values())))  # public already: not twice


def mode_options(modes: Iterable[Any]) -> list[str]:
    """The modes a filter offers for ``modes`` (a column of stored runs): this version's modes in their
    order, then any other stored mode name (a run of another version or a hand-edited store) sorted, so
    every run can be filtered to."""
    present = {str(m) for m in modes if m is not None and not pd.isna(m)}
    return [m for m in MODES if m in present] + sorted(present - set(MODES))


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


def stored_run_label(record: Mapping[str, Any]) -> str:
    """:func:`run_label` of a run as the store returns it (raw fields, accuracy as a fraction)."""
    return run_label(runs_frame([record]).to_dict("records")[0])


def export_csv_text(store: ResultsStore, run_ids: Iterable[int] | None = None) -> str:
    """The store's CSV export (all runs, or ``run_ids``) as text, for a download button: datasets by
    :func:`dataset_label`, in the ``dataset`` column and in each ``config`` (no server path)."""
    buffer = io.StringIO()
    store.export_csv(buffer, run_ids)
    rows = list(csv.reader(io.StringIO(buffer.getvalue())))
    if not rows:
        return buffer.getvalue()
    header, out = rows[0], io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows[1:]:
        record = dict(zip(header, row))
        if "config" in record and record["config"]:
            record["config"] = json.loads(record["config"])
        shown = public_run(record, figures=False)
        if isinstance(shown.get("config"), Mapping):
            shown["config"] = json.dumps(shown["config"])
        writer.writerow([shown.get(h, "") for h in header])
    return out.getvalue()
