"""SQLite results store: one row per adaptation run (configuration, history, accuracy, memory, timings).

The database lives at ``$TINYTL_RESULTS_DB`` or ``data_home()/results.sqlite`` (or a path given to
:class:`ResultsStore`). It runs in WAL mode with a busy time-out and writes each run in one ``BEGIN
IMMEDIATE`` transaction, so concurrent writers (two CLI processes, the app and the CLI) wait for each
other instead of failing or losing rows, and a run is either stored completely or not at all.

Rows come back as plain dicts (``pandas.DataFrame(store.list_runs())`` works directly); the JSON columns
``config``, ``history``, ``memory`` and ``versions`` are decoded.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from tinytl_core.paths import data_home

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")
ENV_DB = "TINYTL_RESULTS_DB"
STATUSES: tuple[str, ...] = ("finished", "cancelled", "failed")
SCHEMA_VERSION = 1

# Scalar columns, in display order, with their SQLite types. JSON columns are stored as TEXT.
COLUMNS: dict[str, str] = {
    "status": "TEXT NOT NULL", "message": "TEXT",
    "backbone": "TEXT NOT NULL", "mode": "TEXT NOT NULL", "dataset": "TEXT NOT NULL",
    "num_classes": "INTEGER", "n_train": "INTEGER", "n_val": "INTEGER", "skipped_files": "INTEGER",
    "resolution": "INTEGER", "batch_size": "INTEGER", "optimizer": "TEXT", "lr": "REAL",
    "label_smoothing": "REAL", "seed": "INTEGER", "steps_planned": "INTEGER", "steps_done": "INTEGER",
    "epochs_done": "REAL", "device": "TEXT", "pretrained": "INTEGER", "pretrained_loaded": "INTEGER",
    "n_trainable": "INTEGER", "n_total": "INTEGER",
    "final_val_acc": "REAL", "final_val_loss": "REAL", "best_val_acc": "REAL", "final_train_acc": "REAL",
    "weights_bytes": "INTEGER", "grads_optimizer_bytes": "INTEGER", "activations_necessary_bytes": "INTEGER",
    "activations_stock_bytes": "INTEGER", "total_modelled_bytes": "INTEGER",
    "activations_measured_bytes": "INTEGER", "total_measured_bytes": "INTEGER",
    "setup_time_s": "REAL", "train_time_s": "REAL", "eval_time_s": "REAL", "total_time_s": "REAL",
    "images_per_s": "REAL", "started_at": "TEXT", "ended_at": "TEXT",
}
JSON_COLUMNS: tuple[str, ...] = ("config", "history", "memory", "versions")
MEMORY_KEYS: tuple[str, ...] = (
    "weights_bytes", "grads_optimizer_bytes", "activations_necessary_bytes", "activations_stock_bytes",
    "total_modelled_bytes", "activations_measured_bytes", "total_measured_bytes",
)
"""Keys of ``tinytl_core.memory.training_memory_figures`` that get their own columns."""


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
        cols = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
        json_cols = ", ".join(f"{name}_json TEXT" for name in JSON_COLUMNS)
        with self._transaction(con):
            con.execute(
                "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                f"{cols}, {json_cols}, CHECK (status IN ({', '.join(repr(s) for s in STATUSES)})))")
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    def _row(row: sqlite3.Row) -> dict[str, Any]:
        out = {"id": row["id"]}
        out.update({name: row[name] for name in COLUMNS})
        for name in JSON_COLUMNS:
            raw = row[f"{name}_json"]
            out[name] = json.loads(raw) if raw is not None else None
        for flag in ("pretrained", "pretrained_loaded"):
            out[flag] = None if out[flag] is None else bool(out[flag])
        return out

    # ---------------------------------------------------------------------------------------- public
    def save_run(self, record: Mapping[str, Any]) -> int:
        """Insert one run in a single transaction and return its id.

        ``record`` holds :data:`COLUMNS` keys (``status``, ``backbone``, ``mode``, ``dataset`` are
        required) and optionally the JSON fields ``config``, ``history``, ``memory``, ``versions``.
        Memory figures given in ``memory`` also fill the memory columns unless set explicitly.
        """
        unknown = set(record) - set(COLUMNS) - set(JSON_COLUMNS) - {"id"}
        if unknown:
            raise ValueError(f"unknown run field(s): {', '.join(sorted(unknown))}")
        missing = [k for k in ("status", "backbone", "mode", "dataset") if not record.get(k)]
        if missing:
            raise ValueError(f"a run needs {', '.join(missing)}")
        if record["status"] not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {record['status']!r}")
        values = {name: record.get(name) for name in COLUMNS}
        memory = record.get("memory") or {}
        for key in MEMORY_KEYS:
            if values[key] is None and memory.get(key) is not None:
                values[key] = int(memory[key])
        for flag in ("pretrained", "pretrained_loaded"):
            if values[flag] is not None:
                values[flag] = int(bool(values[flag]))
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

    def list_runs(self, *, limit: int | None = None, status: str | None = None, dataset: str | None = None,
                  backbone: str | None = None, mode: str | None = None) -> list[dict[str, Any]]:
        """Stored runs, newest first, optionally filtered by exact field values."""
        where, args = [], []
        for col, value in (("status", status), ("dataset", dataset), ("backbone", backbone), ("mode", mode)):
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

    def export_csv(self, dest: str | Path | IO[str], run_ids: Iterable[int] | None = None, *,
                   include_history: bool = False) -> int:
        """Write runs (all, or ``run_ids``) as CSV to a path or text file; return the number of rows.

        Scalar columns come first; ``config`` (and ``history`` if asked) follow as JSON strings.
        """
        runs = self.list_runs()
        if run_ids is not None:
            wanted = {int(i) for i in run_ids}
            runs = [r for r in runs if r["id"] in wanted]
        header = ["id", *COLUMNS, "config"] + (["history"] if include_history else [])
        with contextlib.ExitStack() as stack:
            fh = dest if hasattr(dest, "write") else stack.enter_context(
                open(dest, "w", newline="", encoding="utf-8"))  # type: ignore[arg-type]
            writer = csv.writer(fh)  # type: ignore[arg-type]
            writer.writerow(header)
            for run in runs:
                writer.writerow([json.dumps(run[h]) if h in JSON_COLUMNS and run[h] is not None else run[h]
                                 for h in header])
        return len(runs)


SUMMARY_COLUMNS: dict[str, str] = {
    "id": "id", "status": "status", "backbone": "backbone", "mode": "mode", "dataset": "dataset",
    "resolution": "px", "batch_size": "batch", "steps_done": "steps", "final_val_acc": "val acc %",
    "best_val_acc": "best %", "n_trainable": "trainable", "total_modelled_bytes": "modelled MB",
    "total_measured_bytes": "measured MB", "activations_measured_bytes": "act. measured MB",
    "total_time_s": "time s", "started_at": "started",
}
"""Columns of :func:`summary_frame` and their display names."""


def summary_frame(runs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """A compact ``pandas.DataFrame`` of runs for display: accuracy in %, memory in MB (10^6 bytes)."""
    import pandas as pd

    rows = [{k: r.get(k) for k in SUMMARY_COLUMNS} for r in runs]
    frame = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    for col in ("final_val_acc", "best_val_acc"):
        frame[col] = (pd.to_numeric(frame[col]) * 100).round(1)
    for col in ("total_modelled_bytes", "total_measured_bytes", "activations_measured_bytes"):
        frame[col] = (pd.to_numeric(frame[col]) / 1e6).round(2)
    frame["total_time_s"] = pd.to_numeric(frame["total_time_s"]).round(1)
    return frame.rename(columns=SUMMARY_COLUMNS)
