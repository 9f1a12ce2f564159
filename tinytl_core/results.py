"""SQLite results store: one row per adaptation run (configuration, history, accuracy, memory, timings).

The database lives at ``$TINYTL_RESULTS_DB`` or ``data_home()/results.sqlite`` (or a path given to
:class:`ResultsStore`). It runs in WAL mode with a busy time-out and writes each run in one ``BEGIN
IMMEDIATE`` transaction, so concurrent writers (two CLI processes, the app and the CLI) wait for each
other instead of failing or losing rows, and a run is either stored completely or not at all.

Rows come back as plain dicts (``pandas.DataFrame(store.list_runs())`` works directly); the JSON columns
``config``, ``history``, ``memory`` and ``versions`` are decoded. A field damaged outside the app (a hand
edit, a broken disk) never makes other runs, or the rest of its own run, unreadable: it reads as ``None``,
the run's :data:`DAMAGED` entry names it and a warning names the run and the field (once per process);
such a run can still be shown, exported and deleted.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from tinytl_core.paths import data_home, valid_text
from tinytl_core.quantities import (
    ENDED_STATUSES,
    Quantity,
    RunMemory,
    RunStatus,
    Unit,
    describe,
    names,
    quantities,
    quantity,
)

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")
log = logging.getLogger(__name__)
ENV_DB = "TINYTL_RESULTS_DB"
SCHEMA_VERSION = 4
"""1: the first version. 2: ``activations_measured_stock_bytes`` and ``activations_measured_engine_bytes``
columns (filled from the stored memory JSON when an older database is opened). 3: the status CHECK
accepts ``diverged``; SQLite cannot alter a CHECK constraint, so an older table is rebuilt (copied into a
new table in one transaction, ids and the id sequence kept). 4: ``group_norm`` and ``weight_bits`` columns
(GroupNorm + weight standardisation; frozen weights at 8 bits), filled from each older run's stored
configuration (``weight_bits`` 32 where it has none). Whenever :data:`ENDED_STATUSES` changes the
check text changes, and opening a database whose check differs rebuilds it the same way."""


@dataclass
class RunInfo:
    """The scalar columns of a stored run besides its memory figures (:class:`RunMemory`), each with its
    label and unit, declared once: the store's schema, its CSV export and every run table
    (:func:`run_table`) read them from here. ``id`` is the store's key (``AdaptResult.run_id``)."""

    id: int | None = quantity("run id", Unit.COUNT, short="id")
    status: str | None = quantity("status", Unit.TEXT)
    message: str | None = quantity("message", Unit.TEXT)
    backbone: str | None = quantity("backbone", Unit.TEXT)
    mode: str | None = quantity("mode", Unit.TEXT)
    dataset: str | None = quantity("dataset", Unit.TEXT)
    num_classes: int | None = quantity("classes", Unit.COUNT)
    n_train: int | None = quantity("training images", Unit.COUNT, short="train images")
    n_val: int | None = quantity("validation images", Unit.COUNT, short="val images")
    skipped_files: int | None = quantity("skipped files", Unit.COUNT, short="skipped")
    resolution: int | None = quantity("resolution (px)", Unit.COUNT, short="px")
    batch_size: int | None = quantity("batch size", Unit.COUNT, short="batch")
    optimizer: str | None = quantity("optimizer", Unit.TEXT)
    lr: float | None = quantity("learning rate", Unit.NUMBER, short="lr")
    label_smoothing: float | None = quantity("label smoothing", Unit.NUMBER)
    seed: int | None = quantity("seed", Unit.COUNT)
    steps_planned: int | None = quantity("steps planned", Unit.COUNT)
    steps_done: int | None = quantity("steps done", Unit.COUNT, short="steps")
    epochs_done: float | None = quantity("epochs done", Unit.NUMBER, short="epochs")
    device: str | None = quantity("device", Unit.TEXT)
    pretrained: bool | None = quantity("pretrained weights asked for", Unit.FLAG, short="pretrained")
    pretrained_loaded: bool | None = quantity("pretrained weights loaded", Unit.FLAG, short="loaded")
    group_norm: bool | None = quantity("GroupNorm + weight standardisation", Unit.FLAG, short="GN+WS")
    weight_bits: int | None = quantity(
        "frozen weight bits",
        Unit.COUNT,
        short="weight bits",
        help="8: frozen conv and linear weights stored as 8-bit codes, dequantised on the fly; 32: float.",
    )
    n_trainable: int | None = quantity("trainable parameters", Unit.COUNT, short="trainable params")
    n_total: int | None = quantity("parameters", Unit.COUNT, short="params")
    final_val_acc: float | None = quantity(
        "validation accuracy",
        Unit.FRACTION,
        short="val acc",
        help="Validation accuracy at the end of the run.",
    )
    final_val_loss: float | None = quantity("validation loss", Unit.NUMBER, short="val loss")
    best_val_acc: float | None = quantity("best validation accuracy", Unit.FRACTION, short="best val acc")
    final_train_acc: float | None = quantity("training accuracy (running)", Unit.FRACTION, short="train acc")
    setup_time_s: float | None = quantity("setup time", Unit.SECONDS, short="setup")
    train_time_s: float | None = quantity("training time", Unit.SECONDS, short="train time")
    eval_time_s: float | None = quantity("evaluation time", Unit.SECONDS, short="eval time")
    total_time_s: float | None = quantity("time", Unit.SECONDS)
    images_per_s: float | None = quantity(
        "training images per second", Unit.NUMBER, short="images/s", digits=1
    )
    started_at: str | None = quantity("started (UTC)", Unit.TEXT)
    ended_at: str | None = quantity("ended (UTC)", Unit.TEXT)


RUN = names(RunInfo)
MEMORY = names(RunMemory)
REQUIRED: tuple[str, ...] = (RUN.status, RUN.backbone, RUN.mode, RUN.dataset)
_SQL_TYPES = {
    Unit.TEXT: "TEXT",
    Unit.COUNT: "INTEGER",
    Unit.FLAG: "INTEGER",
    Unit.BYTES: "INTEGER",
    Unit.FRACTION: "REAL",
    Unit.NUMBER: "REAL",
    Unit.SECONDS: "REAL",
}


def _columns() -> dict[str, str]:
    """Scalar columns in display order (memory after the accuracies) with their SQLite types."""
    info = [q for q in quantities(RunInfo) if q.name != RUN.id]
    cut = [q.name for q in info].index(RUN.final_train_acc) + 1
    return {
        q.name: _SQL_TYPES[q.unit] + (" NOT NULL" if q.name in REQUIRED else "")
        for q in (*info[:cut], *quantities(RunMemory), *info[cut:])
    }


COLUMNS: dict[str, str] = _columns()
"""Scalar columns, in display order, with their SQLite types (from :class:`RunInfo` and :class:`RunMemory`).
JSON columns are stored as TEXT."""
JSON_COLUMNS: tuple[str, ...] = ("config", "history", "memory", "versions")
_JSON_KINDS: dict[str, type] = {"config": dict, "history": list, "memory": dict, "versions": dict}
"""What each JSON column decodes to; anything else in it (``[1]`` as a config) counts as damaged."""
DAMAGED = "damaged"
"""Key of a read run naming the fields (columns or JSON fields) whose stored value could not be read; they
read as None. Present only on damaged runs; :meth:`ResultsStore.save_run` ignores it (Undo of a delete)."""
_WARNED: set[tuple[str, int, str]] = set()  # (database, run id, field) already warned about
FLAGS: tuple[str, ...] = tuple(q.name for q in quantities(RunInfo) if q.unit is Unit.FLAG)


def _memory_columns(memory: Mapping[str, Any] | None) -> dict[str, int]:
    """The memory figures of a stored ``memory`` dict that get their own columns (as integers)."""
    figures = RunMemory.from_dict(memory)
    if figures is None:
        return {}
    return {
        q.name: int(getattr(figures, q.name))
        for q in quantities(RunMemory)
        if getattr(figures, q.name) is not None
    }


_CONFIG_COLUMNS = {RUN.group_norm: False, RUN.weight_bits: 32}
"""Columns (schema 4) an older run's stored configuration fills, with the value it ran with if absent."""


def _decode_json(raw: Any, name: str) -> tuple[Any, bool]:
    """The stored JSON field ``name`` decoded, and whether it is damaged (then the value is None): text
    that is not JSON, or JSON of the wrong kind. Never raises: one damaged row must not hide the others."""
    if raw is None:
        return None, False
    try:
        value = json.loads(raw)
    except (TypeError, ValueError, RecursionError):  # not JSON, a blob that is not UTF-8, absurd nesting
        return None, True
    if value is not None and not isinstance(value, _JSON_KINDS[name]):
        return None, True
    return value, False


def _fits_column(value: Any, sql_type: str) -> bool:
    """Whether a stored scalar has its column's type (SQLite keeps any value in any column: a hand edit
    can put text in a number column, which tables and charts cannot convert)."""
    if value is None:
        return True
    if sql_type.startswith("TEXT"):
        return isinstance(value, str)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _setting(config: Mapping[str, Any], name: str) -> int:
    """The integer a stored configuration gives for the schema 4 column ``name`` (its default when absent
    or unreadable)."""
    try:
        return int(config.get(name, _CONFIG_COLUMNS[name]))
    except (TypeError, ValueError, OverflowError):
        return int(_CONFIG_COLUMNS[name])


def _fill_from_config(con: sqlite3.Connection, names: list[str]) -> None:
    """Fill the new ``names`` columns of every run from its ``config`` JSON (defaults where absent or
    damaged)."""
    if not names:
        return
    for row in con.execute("SELECT id, config_json FROM runs").fetchall():
        config = _decode_json(row["config_json"], "config")[0] or {}
        values = [_setting(config, name) for name in names]
        assignments = ", ".join(f"{name} = ?" for name in names)
        con.execute(f"UPDATE runs SET {assignments} WHERE id = ?", [*values, row["id"]])


def _status_check() -> str:
    """The table's CHECK on ``status``: exactly the :data:`ENDED_STATUSES`."""
    return f"CHECK (status IN ({', '.join(repr(s.value) for s in ENDED_STATUSES)}))"


def _create_table_sql(table: str) -> str:
    """``CREATE TABLE`` of the runs table (under ``table``) with today's columns and status check."""
    cols = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
    json_cols = ", ".join(f"{name}_json TEXT" for name in JSON_COLUMNS)
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY AUTOINCREMENT, {cols}, {json_cols}, "
        f"{_status_check()})"
    )


def default_db_path() -> Path:
    """``$TINYTL_RESULTS_DB`` if set, else ``data_home()/results.sqlite``."""
    env = os.environ.get(ENV_DB)
    return Path(env).expanduser() if env else data_home() / "results.sqlite"


class ResultsStore:
    """Runs stored in one SQLite file. Cheap to create; every call opens its own short connection, so
    one store object may be used from several threads (e.g. a Streamlit worker and the page)."""

    def __init__(self, path: str | Path | None = None, *, timeout: float = 30.0):
        self.path = Path(path).expanduser() if path is not None else default_db_path()
        self.timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._retry(self._migrate)

    # ------------------------------------------------------------------------------------- internals
    def _retry(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on a fresh connection, retrying while the database is locked.

        The busy time-out covers ordinary contention, but SQLite returns "locked" at once in a few cases
        (switching a new file to WAL, WAL recovery while another process opens it); each attempt is one
        transaction that was rolled back, so trying again is safe.
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.01
        while True:
            try:
                with self._connect() as con:
                    return work(con)
            except sqlite3.OperationalError as exc:
                transient = "locked" in str(exc) or "busy" in str(exc)
                if not transient or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(0.5, delay * 2)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so a writer takes the lock up front
        # (no deadlock-prone upgrade from a read transaction); busy timeout makes other writers wait.
        con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            con.row_factory = sqlite3.Row
            con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def _transaction(self, con: sqlite3.Connection) -> Iterator[None]:
        con.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def _migrate(self, con: sqlite3.Connection) -> None:
        if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            con.execute("PRAGMA journal_mode = WAL")  # persistent: set once per database file
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ValueError(f"{self.path} was written by a newer TinyTL Lab (schema {version}); upgrade")
        if version == SCHEMA_VERSION:
            return
        with self._transaction(con):
            version = con.execute("PRAGMA user_version").fetchone()[0]  # another process may have been first
            if version == SCHEMA_VERSION:
                return
            if version == 0:
                con.execute(_create_table_sql("runs"))
            else:
                self._upgrade(con)
                self._rebuild_if_check_differs(con)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    def _rebuild_if_check_differs(con: sqlite3.Connection) -> None:
        """Rebuild ``runs`` with today's status CHECK (:data:`ENDED_STATUSES`) when its own differs: create
        the new table, copy every row (ids included), drop the old one, rename, keep the id sequence so
        deleted ids are not reused. Runs inside the caller's transaction: all of it or nothing."""
        sql = con.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone()
        if sql is None or _status_check() in sql[0]:
            return
        old_cols = [row["name"] for row in con.execute("PRAGMA table_info(runs)")]
        cols = ", ".join(c for c in (RUN.id, *COLUMNS, *(f"{n}_json" for n in JSON_COLUMNS)) if c in old_cols)
        seq = con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'runs'").fetchone()
        con.execute("DROP TABLE IF EXISTS runs_rebuild")
        con.execute(_create_table_sql("runs_rebuild"))
        con.execute(f"INSERT INTO runs_rebuild ({cols}) SELECT {cols} FROM runs")
        con.execute("DROP TABLE runs")
        con.execute("ALTER TABLE runs_rebuild RENAME TO runs")
        if seq is not None:
            con.execute("DELETE FROM sqlite_sequence WHERE name = 'runs'")
            con.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('runs', ?)", (seq[0],))

    @staticmethod
    def _upgrade(con: sqlite3.Connection) -> None:
        """Bring a table written by an older version up to :data:`COLUMNS`: add the columns it lacks and
        fill the memory ones from each run's stored memory JSON (other new columns stay empty)."""
        present = {row["name"] for row in con.execute("PRAGMA table_info(runs)")}
        added = [name for name in COLUMNS if name not in present]
        for name in added:
            con.execute(f"ALTER TABLE runs ADD COLUMN {name} {COLUMNS[name]}")
        if not added:
            return
        _fill_from_config(con, [name for name in added if name in _CONFIG_COLUMNS])
        for row in con.execute("SELECT id, memory_json FROM runs WHERE memory_json IS NOT NULL").fetchall():
            memory = _decode_json(row["memory_json"], "memory")[0]
            try:
                found = _memory_columns(memory)
            except (TypeError, ValueError, OverflowError):  # figures of the wrong type: left empty
                found = {}
            figures = {k: v for k, v in found.items() if k in added}
            if figures:
                assignments = ", ".join(f"{name} = ?" for name in figures)
                con.execute(f"UPDATE runs SET {assignments} WHERE id = ?", [*figures.values(), row["id"]])

    def _row(self, row: sqlite3.Row) -> dict[str, Any]:
        """One stored row as a run dict. Damaged fields read as None and are named under :data:`DAMAGED`
        (with a warning), so one damaged row never makes a listing, a show or a delete fail."""
        out: dict[str, Any] = {RUN.id: row[RUN.id]}
        damaged = []
        for name, sql_type in COLUMNS.items():
            value = row[name]
            if not _fits_column(value, sql_type):
                damaged.append(name)
                value = None
            out[name] = value
        for name in JSON_COLUMNS:
            out[name], bad = _decode_json(row[f"{name}_json"], name)
            if bad:
                damaged.append(name)
        for flag in FLAGS:
            out[flag] = None if out[flag] is None else bool(out[flag])
        try:
            if out[RUN.status] is not None:
                out[RUN.status] = RunStatus(out[RUN.status])
        except ValueError:  # the CHECK constraint bypassed: keep the text, a table can still show it
            damaged.append(RUN.status)
        if damaged:
            out[DAMAGED] = damaged
            self._warn_damaged(out[RUN.id], damaged)
        return out

    def _warn_damaged(self, run_id: int, fields: list[str]) -> None:
        """Log once per process which fields of run ``run_id`` are damaged (pages reread runs often)."""
        new = [f for f in fields if (str(self.path), run_id, f) not in _WARNED]
        if not new:
            return
        _WARNED.update((str(self.path), run_id, f) for f in new)
        log.warning(
            "run %s in %s: stored %s damaged (changed outside TinyTL Lab?); read as empty",
            run_id,
            self.path,
            ", ".join(new) + (" is" if len(new) == 1 else " are"),
        )

    # ---------------------------------------------------------------------------------------- public
    def execute(self, work: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        """Run ``work`` on a fresh connection to this database (rows as :class:`sqlite3.Row`), retrying while
        it is locked; with ``write``, inside one ``BEGIN IMMEDIATE`` transaction (all of it or nothing, and
        no other writer in between). For the other tables sharing this file (the job queue,
        :mod:`tinytl_core.jobs`), so they use the same connection, retry and WAL settings as the runs."""
        if not write:
            return self._retry(work)

        def in_transaction(con: sqlite3.Connection) -> T:
            with self._transaction(con):
                return work(con)

        return self._retry(in_transaction)

    def save_run(self, record: Mapping[str, Any]) -> int:
        """Insert one run in a single transaction and return its id.

        ``record`` holds :data:`COLUMNS` keys (:data:`REQUIRED`: ``status``, ``backbone``, ``mode``,
        ``dataset``) and optionally the JSON fields ``config``, ``history``, ``memory``, ``versions``
        (a :data:`DAMAGED` note from a read run is ignored). Memory figures given in ``memory`` (a
        :class:`RunMemory` as a dict) also fill the memory columns unless set explicitly.
        """
        unknown = set(record) - set(COLUMNS) - set(JSON_COLUMNS) - {RUN.id, DAMAGED}
        if unknown:
            raise ValueError(f"unknown run field(s): {', '.join(sorted(unknown))}")
        missing = [k for k in REQUIRED if not record.get(k)]
        if missing:
            raise ValueError(f"a run needs {', '.join(missing)}")
        if record[RUN.status] not in ENDED_STATUSES:
            raise ValueError(
                f"status must be one of {', '.join(s.value for s in ENDED_STATUSES)}, "
                f"got {record[RUN.status]!r}"
            )
        values = {name: record.get(name) for name in COLUMNS}
        values[RUN.status] = RunStatus(values[RUN.status]).value
        for key, value in _memory_columns(record.get("memory")).items():
            if values[key] is None:
                values[key] = value
        for flag in FLAGS:
            if values[flag] is not None:
                values[flag] = int(bool(values[flag]))
        for name, value in values.items():  # e.g. a dataset folder whose name is not valid UTF-8
            if isinstance(value, str):
                values[name] = valid_text(value)
        for name in JSON_COLUMNS:
            values[f"{name}_json"] = json.dumps(record[name]) if record.get(name) is not None else None
        sql = f"INSERT INTO runs ({', '.join(values)}) VALUES ({', '.join('?' for _ in values)})"

        def insert(con: sqlite3.Connection) -> int:
            with self._transaction(con):
                return int(con.execute(sql, list(values.values())).lastrowid)

        return self._retry(insert)

    def get_run(self, run_id: int) -> dict[str, Any]:
        """One run by id (``KeyError`` if there is none)."""
        with self._connect() as con:
            row = con.execute("SELECT * FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise KeyError(f"no run with id {run_id} in {self.path}")
        return self._row(row)

    def list_runs(
        self,
        *,
        limit: int | None = None,
        status: str | None = None,
        dataset: str | None = None,
        backbone: str | None = None,
        mode: str | None = None,
    ) -> list[dict[str, Any]]:
        """Stored runs, newest first, optionally filtered by exact field values."""
        where, args = [], []
        for col, value in (
            (RUN.status, status),
            (RUN.dataset, dataset),
            (RUN.backbone, backbone),
            (RUN.mode, mode),
        ):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        sql = "SELECT * FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._connect() as con:
            return [self._row(r) for r in con.execute(sql, args).fetchall()]

    def count(self) -> int:
        """Number of stored runs."""
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def delete_run(self, run_id: int) -> None:
        """Delete one run (``KeyError`` if there is none)."""

        def delete(con: sqlite3.Connection) -> int:
            with self._transaction(con):
                return con.execute("DELETE FROM runs WHERE id = ?", (int(run_id),)).rowcount

        if self._retry(delete) == 0:
            raise KeyError(f"no run with id {run_id} in {self.path}")

    def export_csv(
        self,
        dest: str | Path | IO[str],
        run_ids: Iterable[int] | None = None,
        *,
        include_history: bool = False,
    ) -> int:
        """Write runs (all, or ``run_ids``) as CSV to a path or text file; return the number of rows.

        Scalar columns come first; ``config`` (and ``history`` if asked) follow as JSON strings.
        """
        runs = self.list_runs()
        if run_ids is not None:
            wanted = {int(i) for i in run_ids}
            runs = [r for r in runs if r[RUN.id] in wanted]
        header = [RUN.id, *COLUMNS, "config"] + (["history"] if include_history else [])
        with contextlib.ExitStack() as stack:
            fh = (
                dest
                if hasattr(dest, "write")
                else stack.enter_context(open(dest, "w", newline="", encoding="utf-8"))
            )  # type: ignore[arg-type]
            writer = csv.writer(fh)  # type: ignore[arg-type]
            writer.writerow(header)
            for run in runs:
                writer.writerow(
                    [
                        json.dumps(run[h]) if h in JSON_COLUMNS and run[h] is not None else run[h]
                        for h in header
                    ]
                )
        return len(runs)


def run_table(
    runs: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    headers: bool = True,
    digits: int | None = None,
) -> pd.DataFrame:
    """One row per run, the ``columns`` (fields of :class:`RunInfo` or :class:`RunMemory`, in order) in
    their display units: bytes in MB (10^6 bytes), fractions in %, each rounded to its quantity's digits
    (or to ``digits``); missing figures are blank (NaN), statuses their text.

    ``runs``: stored runs (:meth:`ResultsStore.list_runs`), ``AdaptResult.to_record()`` dicts, a job's
    result summaries -- any mappings with those keys. Columns are headed by each quantity's header
    (``val acc %``, ``total modelled MB``), or with ``headers=False`` by its key (``final_val_acc_pct``,
    ``total_modelled_MB``) for code that picks columns; :func:`run_headers` maps keys to headers.
    """
    import pandas as pd

    specs = [describe(name, RunInfo, RunMemory) for name in columns]
    rows = [[q.convert(run.get(q.name)) for q in specs] for run in runs]
    frame = pd.DataFrame(rows, columns=[q.header if headers else q.key for q in specs])
    for q, col in zip(specs, frame.columns):
        if q.unit.numeric:
            frame[col] = pd.to_numeric(frame[col])
            places = q.digits if digits is None or q.digits is None else digits
            if places is not None:
                frame[col] = frame[col].round(places)
    return frame


def run_headers(columns: Sequence[str]) -> dict[str, str]:
    """Key -> header of each of ``columns`` (for a :func:`run_table` built with ``headers=False``)."""
    return {q.key: q.header for q in (describe(name, RunInfo, RunMemory) for name in columns)}


def run_quantity(name: str) -> Quantity:
    """The declared quantity of a run column (:class:`RunInfo` or :class:`RunMemory` field)."""
    return describe(name, RunInfo, RunMemory)
