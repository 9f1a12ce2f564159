"""The persistent job queue: adaptation runs waiting for, or trained by, worker processes.

Jobs live in the results store's SQLite file (tables ``jobs`` and ``job_events``, next to ``runs``), so a
restart of the app or of the workers loses nothing: queued jobs stay queued, and whatever claims next
picks them up. Every write is one ``BEGIN IMMEDIATE`` transaction through
:meth:`~tinytl_core.results.ResultsStore.execute` (WAL mode, busy time-out, retry on "locked"), so two
workers never claim the same job and thirty submitters wait for each other instead of failing.

A job goes ``queued`` -> ``running`` -> ``finished`` / ``failed`` / ``cancelled``. Its worker writes
progress (:class:`JobEvent` rows and the job's step / phase) at a bounded rate, with a heartbeat; a job
whose worker died -- the pool saw the process end (:meth:`JobQueue.fail_worker_jobs`), its process is gone
from this machine, or its heartbeat stopped (:meth:`JobQueue.recover`) -- is marked failed with the reason,
never left running. A job's run, once trained, is an ordinary row of ``runs`` (:attr:`Job.run_id`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from tinytl_core.adapt import AdaptConfig
from tinytl_core.data.uploads import dataset_display_name, register_pin_source
from tinytl_core.quantities import RunStatus
from tinytl_core.results import ResultsStore, default_db_path

log = logging.getLogger(__name__)

JOBS_SCHEMA_VERSION = 2
"""Version of the ``jobs`` / ``job_events`` / ``job_watchers`` tables (2 added ``job_watchers``), kept in
``schema_versions`` (the runs table has its own
``PRAGMA user_version``)."""
STALE_AFTER_S = 120.0
"""A running job whose heartbeat is older than this is failed by :meth:`JobQueue.recover` (workers beat
every fraction of a second from a thread of their own, whatever a training step costs)."""
DEAD_GRACE_S = 2.0
"""A job whose worker process is gone from this host is failed by :meth:`JobQueue.recover` only once its
last report is this old: the pool that watched the process says why it ended first (e.g. SIGKILL)."""
ENV_EVENTS_DAYS = "TINYTL_JOB_EVENTS_DAYS"
"""Environment variable: days the progress events of an ended job with a stored run are kept."""
DEFAULT_EVENTS_DAYS = 7.0
"""Default of :data:`ENV_EVENTS_DAYS`: long enough for the page that submitted a job to show its curves."""
MAX_STEP_EVENTS = 1000
"""Most step events kept per job: past it, a running job's older steps are thinned to every 2nd, 4th, ...
step (the curve keeps its shape), so a very long run neither bloats the database nor the page's polls."""
PRUNE_EVERY_S = 3600.0
"""Least time between two automatic prunes of the same database by one process
(:meth:`JobQueue.prune_events_if_due`)."""


class JobState(str, Enum):
    """Where a job stands in the queue."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"  # trained; its run's own status (finished, diverged) is Job.run_status
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        """True for finished, failed and cancelled."""
        return self in ENDED_JOB_STATES

    def __str__(self) -> str:
        return self.value


ENDED_JOB_STATES: frozenset[JobState] = frozenset({JobState.FINISHED, JobState.FAILED, JobState.CANCELLED})


class NotYourJobError(PermissionError):
    """Someone other than a job's owner asked to cancel it."""


@dataclass(frozen=True)
class JobEvent:
    """One progress event of a job: ``kind`` is phase, step or eval, ``data`` the fields of the matching
    :mod:`tinytl_core.adapt` event (:class:`~tinytl_core.adapt.StepEvent`, ...). ``id`` grows with time:
    pass the last one seen as ``after`` to :meth:`JobQueue.events` to read only what is new."""

    id: int
    job_id: int
    at: float
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class EventsSince:
    """What :meth:`JobQueue.events_since` read of one job: its ``events`` above the id given, and ``kept``,
    how many of its events up to that id are still stored (fewer than the reader holds: some were deleted
    since, so read the job again from the start)."""

    kept: int
    events: list[JobEvent]


@dataclass(frozen=True)
class Job:
    """One queued, running or ended adaptation run. Times are Unix seconds (``time.time()``).

    ``label`` names the dataset to people (an upload's file name, never a server path); ``owner`` is who
    submitted it (the app: its session id) and alone may cancel it; ``sweep`` the sweep it belongs to.
    ``step`` / ``total_steps`` / ``phase`` are the latest progress, ``heartbeat_at`` when its worker last
    reported. Once ended: ``run_id`` (the run in the results store, when one was stored), ``run_status``
    (the run's own status: finished, diverged, cancelled, failed), ``error`` (why it failed or stopped),
    ``result`` (the run's figures the app shows: accuracy, memory, time...)."""

    id: int
    state: JobState
    config: AdaptConfig
    label: str = ""
    owner: str | None = None
    sweep: str | None = None
    submitted_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    worker: str | None = None
    heartbeat_at: float | None = None
    cancel_requested: bool = False
    step: int = 0
    total_steps: int = 0
    phase: str = ""
    run_id: int | None = None
    run_status: RunStatus | None = None
    error: str = ""
    result: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def ended(self) -> bool:
        """True once the job is finished, failed or cancelled."""
        return self.state.ended

    @property
    def run_ids(self) -> tuple[int, ...]:
        """The runs this job stored (one, or none when it failed before training or was cancelled while
        queued)."""
        return () if self.run_id is None else (self.run_id,)

    @property
    def fraction(self) -> float:
        """Share of the planned steps done (1 once ended)."""
        if self.ended:
            return 1.0
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    def elapsed_s(self, now: float | None = None) -> float:
        """Seconds since it started (0 while queued), up to its end once ended."""
        if self.started_at is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else (now or time.time())
        return max(0.0, end - self.started_at)


_STATE_CHECK = f"CHECK (state IN ({', '.join(repr(s.value) for s in JobState)}))"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_versions (part TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    f"state TEXT NOT NULL {_STATE_CHECK}, config_json TEXT NOT NULL, label TEXT NOT NULL DEFAULT '', "
    "owner TEXT, sweep TEXT, submitted_at REAL NOT NULL, started_at REAL, ended_at REAL, worker TEXT, "
    "heartbeat_at REAL, cancel_requested INTEGER NOT NULL DEFAULT 0, step INTEGER NOT NULL DEFAULT 0, "
    "total_steps INTEGER NOT NULL DEFAULT 0, phase TEXT NOT NULL DEFAULT '', run_id INTEGER, "
    "run_status TEXT, error TEXT NOT NULL DEFAULT '', result_json TEXT)",
    "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id)",
    "CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, id)",
    "CREATE INDEX IF NOT EXISTS jobs_by_sweep ON jobs (sweep, id)",
    "CREATE TABLE IF NOT EXISTS job_events (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "job_id INTEGER NOT NULL, at REAL NOT NULL, kind TEXT NOT NULL, data_json TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS job_events_by_job ON job_events (job_id, id)",
    # Who else wants a job's run: a sweep that found its configuration already queued adopts that job
    # instead of queueing it twice. Its owner's cancel then hands the job over instead of stopping it.
    "CREATE TABLE IF NOT EXISTS job_watchers (job_id INTEGER NOT NULL, owner TEXT NOT NULL, "
    "since REAL NOT NULL, PRIMARY KEY (job_id, owner))",
)


@dataclass(frozen=True)
class EventsPruned:
    """What :meth:`JobQueue.prune_events` deleted: ``events`` rows of ``jobs`` jobs; ``kept_days`` the
    retention it applied."""

    events: int
    jobs: int
    kept_days: float


def events_keep_days() -> float:
    """``$TINYTL_JOB_EVENTS_DAYS`` when set (0 or more; fractions allowed), else
    :data:`DEFAULT_EVENTS_DAYS`. ``ValueError`` says what is wrong with the variable."""
    raw = os.environ.get(ENV_EVENTS_DAYS, "").strip()
    if not raw:
        return DEFAULT_EVENTS_DAYS
    try:
        days = float(raw)
    except ValueError:
        days = -1.0
    if not 0 <= days < float("inf"):
        raise ValueError(f"{ENV_EVENTS_DAYS} must be a number of days (0 or more), got {raw!r}")
    return days


def worker_name(pid: int | None = None) -> str:
    """The id a worker process goes by: ``host:pid`` (what :meth:`JobQueue.recover` checks for a dead
    process on this host)."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def process_owner(label: str, pid: int | None = None) -> str:
    """An owner name tied to this process, ``label (host:pid)``: a command-line sweep's. Two sweeps of the
    same grid then own their jobs apart, and one whose process is gone can be taken over
    (:meth:`JobQueue.adopt`)."""
    return f"{label} ({worker_name(pid)})"


def _owner_pid(owner: str | None) -> int | None:
    """The pid of a :func:`process_owner` name on this host (None for any other owner)."""
    if not owner or not owner.endswith(")") or " (" not in owner:
        return None
    return _local_pid(owner[owner.rindex(" (") + 2 : -1])


def _process_gone(owner: str | None) -> bool:
    """Whether ``owner`` is a :func:`process_owner` whose process on this host has ended."""
    pid = _owner_pid(owner)
    return pid is not None and not _pid_alive(pid)


def _local_pid(worker: str | None) -> int | None:
    """The pid of a worker running on this host (None for another host or a name not ``host:pid``)."""
    host, _, pid = (worker or "").rpartition(":")
    return int(pid) if host == socket.gethostname() and pid.isdigit() else None


_OPENED: set[Path] = set()
"""Databases this process opened a queue on: their queued and running jobs pin their uploads."""
_LAST_PRUNE: dict[Path, float] = {}
_ACTIVE = (JobState.QUEUED.value, JobState.RUNNING.value)


def queued_datasets() -> list[str]:
    """The dataset paths (uploads, folders) of every queued or running job in the databases this process
    opened a queue on, and the default one: what the uploads quota must not evict
    (:func:`tinytl_core.data.uploads.register_pin_source`). Built-in dataset names are left out."""
    paths = set(_OPENED)
    default = default_db_path()
    if default.exists():
        paths.add(default)
    out: list[str] = []
    for path in sorted(paths):
        if path.exists():
            out.extend(JobQueue(path).active_datasets())
    return out


register_pin_source(queued_datasets)


class JobQueue:
    """The job queue in the results database at ``db_path`` (default: the results store's own, see
    :func:`~tinytl_core.results.default_db_path`). Cheap to create; every call opens its own connection, so
    one object serves several threads, and several processes may open the same file."""

    def __init__(self, db_path: str | Path | None = None, *, timeout: float = 30.0):
        self.store = ResultsStore(db_path, timeout=timeout)
        self.path = self.store.path
        if self.store.execute(self._version) != JOBS_SCHEMA_VERSION:  # a read: pages create one per run
            self.store.execute(self._migrate, write=True)
        _OPENED.add(self.path)

    @staticmethod
    def _version(con: sqlite3.Connection) -> int | None:
        try:
            row = con.execute("SELECT version FROM schema_versions WHERE part = 'jobs'").fetchone()
        except sqlite3.OperationalError:  # no such table yet
            return None
        return None if row is None else int(row[0])

    @staticmethod
    def _migrate(con: sqlite3.Connection) -> None:
        for sql in _SCHEMA:
            con.execute(sql)
        row = con.execute("SELECT version FROM schema_versions WHERE part = 'jobs'").fetchone()
        if row is not None and row[0] > JOBS_SCHEMA_VERSION:
            raise ValueError("the job queue was written by a newer TinyTL Lab; upgrade")
        sql = "INSERT OR REPLACE INTO schema_versions (part, version) VALUES ('jobs', ?)"
        con.execute(sql, (JOBS_SCHEMA_VERSION,))

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"],
            state=JobState(row["state"]),
            config=AdaptConfig.from_dict(json.loads(row["config_json"])),
            label=row["label"],
            owner=row["owner"],
            sweep=row["sweep"],
            submitted_at=row["submitted_at"],
            started_at=row["started_at"],
            ended_at=row["ended_at"],
            worker=row["worker"],
            heartbeat_at=row["heartbeat_at"],
            cancel_requested=bool(row["cancel_requested"]),
            step=row["step"],
            total_steps=row["total_steps"],
            phase=row["phase"],
            run_id=row["run_id"],
            run_status=None if row["run_status"] is None else RunStatus(row["run_status"]),
            error=row["error"],
            result=None if row["result_json"] is None else json.loads(row["result_json"]),
        )

    # ------------------------------------------------------------------------------------ submitting
    def submit(
        self, config: AdaptConfig, *, owner: str | None = None, sweep: str | None = None, label: str = ""
    ) -> int:
        """Queue one run and return its job id. The configuration is checked first (``ValueError`` with
        the reason, nothing queued)."""
        return self.submit_many([config], owner=owner, sweep=sweep, label=label)[0]

    def submit_many(
        self,
        configs: Sequence[AdaptConfig],
        *,
        owner: str | None = None,
        sweep: str | None = None,
        label: str = "",
    ) -> list[int]:
        """Queue several runs in one transaction (all or none, in this order, next to each other in the
        queue); return their job ids. Every configuration is checked before anything is queued."""
        if not configs:
            raise ValueError("nothing to queue: give at least one configuration")
        for config in configs:
            config.validate()
        now = time.time()
        rows = [
            # the label is shown: an upload by its own name, never its server path
            (
                JobState.QUEUED.value,
                json.dumps(c.to_dict()),
                label or dataset_display_name(c.dataset),
                owner,
                sweep,
                now,
            )
            for c in configs
        ]

        def insert(con: sqlite3.Connection) -> list[int]:
            return [
                int(
                    con.execute(
                        "INSERT INTO jobs (state, config_json, label, owner, sweep, submitted_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        row,
                    ).lastrowid
                )
                for row in rows
            ]

        return self.store.execute(insert, write=True)

    # --------------------------------------------------------------------------------------- reading
    def get(self, job_id: int) -> Job:
        """One job by id (``KeyError`` if there is none)."""
        row = self.store.execute(
            lambda con: con.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        )
        if row is None:
            raise KeyError(f"no job with id {job_id}")
        return self._job(row)

    def list_jobs(
        self,
        *,
        owner: str | None = None,
        sweep: str | None = None,
        states: Iterable[JobState | str] | None = None,
        ids: Iterable[int] | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        """Jobs in queue order (oldest first), optionally only ``owner``'s, a ``sweep``'s, in ``states``
        or with the given ``ids``; ``limit`` keeps the newest N of them."""
        where, args = [], []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if sweep is not None:
            where.append("sweep = ?")
            args.append(sweep)
        for column, values in (
            ("state", None if states is None else [JobState(s).value for s in states]),
            ("id", None if ids is None else [int(i) for i in ids]),
        ):
            if values is not None:
                where.append(f"{column} IN ({', '.join('?' for _ in values)})" if values else "0")
                args.extend(values)
        sql = "SELECT * FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = self.store.execute(lambda con: con.execute(sql, args).fetchall())
        return [self._job(r) for r in reversed(rows)]

    def position(self, job_id: int) -> int | None:
        """Place of a queued job in line (1: next to be claimed); None once it is no longer queued."""

        def count(con: sqlite3.Connection) -> int | None:
            row = con.execute("SELECT state FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
            if row is None:
                raise KeyError(f"no job with id {job_id}")
            if row["state"] != JobState.QUEUED.value:
                return None
            return int(
                con.execute(
                    "SELECT COUNT(*) FROM jobs WHERE state = ? AND id <= ?", (JobState.QUEUED.value, job_id)
                ).fetchone()[0]
            )

        return self.store.execute(count)

    def counts(self) -> dict[JobState, int]:
        """How many jobs are in each state."""
        rows = self.store.execute(
            lambda con: con.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        )
        out = dict.fromkeys(JobState, 0)
        out.update({JobState(state): int(n) for state, n in rows})
        return out

    def active_datasets(self) -> list[str]:
        """The ``dataset`` of every queued or running job that is a path (an upload, a folder): what the
        queue still needs on disk."""
        sql = (
            "SELECT DISTINCT json_extract(config_json, '$.dataset') FROM jobs "
            f"WHERE state IN ({', '.join('?' for _ in _ACTIVE)})"
        )
        rows = self.store.execute(lambda con: con.execute(sql, _ACTIVE).fetchall())
        return [r[0] for r in rows if isinstance(r[0], str) and ("/" in r[0] or os.sep in r[0])]

    def events(self, job_id: int, after: int = 0, *, kinds: Iterable[str] | None = None) -> list[JobEvent]:
        """Progress events of a job with an id above ``after``, oldest first (optionally only ``kinds``)."""
        sql, args = "SELECT * FROM job_events WHERE job_id = ? AND id > ?", [int(job_id), int(after)]
        if kinds is not None:
            wanted = list(kinds)
            sql += f" AND kind IN ({', '.join('?' for _ in wanted)})"
            args.extend(wanted)
        rows = self.store.execute(lambda con: con.execute(sql + " ORDER BY id", args).fetchall())
        return [_event(r) for r in rows]

    def events_since(
        self, seen: Mapping[int, int], *, kinds: Iterable[str] | None = None
    ) -> dict[int, EventsSince]:
        """For each job id of ``seen`` (mapped to the id of the last event read of it, 0 for none): its
        events above that id, and how many of those up to it are still stored, all in one consistent
        read (a poller that keeps what it read checks nothing was deleted since: thinned, requeued,
        pruned). Optionally only ``kinds``."""
        kind_sql, wanted = "", [] if kinds is None else list(kinds)
        if kinds is not None:
            kind_sql = f" AND kind IN ({', '.join('?' for _ in wanted)})"

        def read(con: sqlite3.Connection) -> dict[int, EventsSince]:
            out = {}
            con.execute("BEGIN")  # one snapshot (WAL) for every job: counts and new events agree
            try:
                for job_id, after in seen.items():
                    args = [int(job_id), int(after), *wanted]
                    kept = con.execute(
                        f"SELECT COUNT(*) FROM job_events WHERE job_id = ? AND id <= ?{kind_sql}", args
                    ).fetchone()[0]
                    rows = con.execute(
                        f"SELECT * FROM job_events WHERE job_id = ? AND id > ?{kind_sql} ORDER BY id", args
                    ).fetchall()
                    out[int(job_id)] = EventsSince(int(kept), [_event(r) for r in rows])
            finally:
                con.execute("COMMIT")
            return out

        return self.store.execute(read) if seen else {}

    # -------------------------------------------------------------------------------------- cancelling
    def watch(self, job_id: int, owner: str) -> None:
        """Note that ``owner`` (a sweep that adopted the job rather than queue its configuration twice)
        waits for this job's run too: its owner's cancel then hands the job over to ``owner``."""

        def work(con: sqlite3.Connection) -> None:
            con.execute(
                "INSERT OR IGNORE INTO job_watchers (job_id, owner, since) SELECT id, ?, ? FROM jobs "
                "WHERE id = ? AND (owner IS NULL OR owner != ?)",
                (owner, time.time(), int(job_id), owner),
            )

        self.store.execute(work, write=True)

    def adopt(self, job_id: int, owner: str) -> bool:
        """``owner`` wants a job already queued or running (the same configuration of the same sweep). A job
        whose owner is a process on this host that is gone becomes ``owner``'s (True); any other job is
        watched (:meth:`watch`: its owner's cancel hands it over) and False is returned."""
        job = self.get(job_id)
        if job.owner != owner and _process_gone(job.owner):

            def take(con: sqlite3.Connection) -> bool:
                sql = "UPDATE jobs SET owner = ? WHERE id = ? AND owner = ?"
                return con.execute(sql, (owner, int(job_id), job.owner)).rowcount == 1

            if self.store.execute(take, write=True):
                return True
        if job.owner != owner:
            self.watch(job_id, owner)
        return job.owner == owner

    def watched_by(self, owner: str) -> set[int]:
        """Ids of the jobs not ended that ``owner`` waits for (:meth:`watch`), in one query."""
        rows = self.store.execute(
            lambda con: con.execute(
                "SELECT w.job_id FROM job_watchers w JOIN jobs j ON j.id = w.job_id "
                f"WHERE w.owner = ? AND j.state IN ({', '.join('?' * len(_ACTIVE))})",
                (owner, *_ACTIVE),
            ).fetchall()
        )
        return {r["job_id"] for r in rows}

    def watchers(self, job_id: int) -> list[str]:
        """Who else waits for the job's run (see :meth:`watch`), longest waiting first."""
        rows = self.store.execute(
            lambda con: con.execute(
                "SELECT owner FROM job_watchers WHERE job_id = ? ORDER BY since, rowid", (int(job_id),)
            ).fetchall()
        )
        return [r["owner"] for r in rows]

    def cancel(self, job_id: int, requester: str | None) -> Job:
        """Cancel a job on behalf of ``requester`` and return it as it now stands.

        A queued job is cancelled at once; a running one is asked to stop, and its worker stops within a
        step or so (its run is stored as cancelled); an ended job stays as it is. Only the job's owner may
        cancel it (``requester=None``: the server itself, e.g. an operator's command). When another sweep
        waits for the same run (:meth:`watch`), the owner's cancel hands the job over to it instead (the
        returned job has that new owner) and the run goes on (from its first step, if the worker training
        it stops with the canceller, as a command-line sweep's own workers do). A watcher's own cancel
        only withdraws its interest (or, when the owner's process is gone, takes the job and cancels it).
        Anyone else gets :class:`NotYourJobError` and the job goes on.
        """

        def work(con: sqlite3.Connection) -> None:
            row = con.execute("SELECT owner, state FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
            if row is None:
                raise KeyError(f"no job with id {job_id}")
            owner = row["owner"]
            waits = (
                requester is not None
                and con.execute(
                    "SELECT 1 FROM job_watchers WHERE job_id = ? AND owner = ?", (int(job_id), requester)
                ).fetchone()
            )
            if waits and owner not in (None, requester) and _process_gone(owner):
                # its sweep was killed: the sweep waiting for it owns it now (no one else may)
                con.execute("UPDATE jobs SET owner = ? WHERE id = ?", (requester, int(job_id)))
                con.execute(
                    "DELETE FROM job_watchers WHERE job_id = ? AND owner = ?", (int(job_id), requester)
                )
                owner = requester
            if requester is not None and owner is not None and requester != owner:
                withdrawn = con.execute(
                    "DELETE FROM job_watchers WHERE job_id = ? AND owner = ?", (int(job_id), requester)
                ).rowcount
                if withdrawn:
                    return
                raise NotYourJobError(
                    f"job {job_id} was submitted by another session; only that session can cancel it"
                )
            if requester is not None and row["state"] in _ACTIVE:
                heirs = con.execute(
                    "SELECT owner FROM job_watchers WHERE job_id = ? ORDER BY since, rowid", (int(job_id),)
                ).fetchall()
                # the longest waiting whose process still runs (a killed sweep waits no more)
                for heir in heirs:
                    new_owner = (heir["owner"], int(job_id))
                    con.execute("DELETE FROM job_watchers WHERE owner = ? AND job_id = ?", new_owner)
                    if not _process_gone(heir["owner"]):
                        con.execute("UPDATE jobs SET owner = ? WHERE id = ?", new_owner)
                        return
            con.execute("DELETE FROM job_watchers WHERE job_id = ?", (int(job_id),))
            if row["state"] == JobState.QUEUED.value:
                con.execute(
                    "UPDATE jobs SET state = ?, ended_at = ?, cancel_requested = 1, "
                    "error = 'cancelled before it started' WHERE id = ?",
                    (JobState.CANCELLED.value, time.time(), int(job_id)),
                )
            elif row["state"] == JobState.RUNNING.value:
                con.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (int(job_id),))

        self.store.execute(work, write=True)
        return self.get(job_id)

    # ------------------------------------------------------------------------------------ the workers
    def claim(self, worker: str, *, sweep: str | None = None) -> Job | None:
        """Give the oldest queued job to ``worker`` (marked running, atomically: no other worker gets it);
        None when nothing is queued. ``sweep``: that sweep's jobs only (the workers a sweep command starts
        train its own grid, not other users' jobs ahead of it). Jobs of dead workers on this host are
        failed first (:meth:`recover`)."""
        self.recover()
        now = time.time()

        def take(con: sqlite3.Connection) -> sqlite3.Row | None:
            row = con.execute(
                "SELECT id FROM jobs WHERE state = ?"
                + (" AND sweep = ?" if sweep is not None else "")
                + " ORDER BY id LIMIT 1",
                (JobState.QUEUED.value, *((sweep,) if sweep is not None else ())),
            ).fetchone()
            if row is None:
                return None
            con.execute(
                "UPDATE jobs SET state = ?, worker = ?, started_at = ?, heartbeat_at = ?, phase = 'starting' "
                "WHERE id = ?",
                (JobState.RUNNING.value, worker, now, now, row["id"]),
            )
            return con.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()

        row = self.store.execute(take, write=True)
        return None if row is None else self._job(row)

    def report(
        self,
        job_id: int,
        worker: str,
        events: Sequence[tuple[float, str, Mapping[str, Any]]] = (),
        *,
        step: int | None = None,
        total_steps: int | None = None,
        phase: str | None = None,
        max_step_events: int = MAX_STEP_EVENTS,
    ) -> bool:
        """A worker's progress report, in one transaction: new ``events`` as ``(time, kind, data)``, the
        latest step / total / phase, and a heartbeat. Past ``max_step_events`` step events the job's
        older steps are thinned (:data:`MAX_STEP_EVENTS`). Returns True when the job should stop (cancel
        asked, or the job is no longer this worker's: recovered as dead)."""
        now = time.time()
        sets, args = ["heartbeat_at = ?"], [now]
        for column, value in (("step", step), ("total_steps", total_steps), ("phase", phase)):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value)

        def work(con: sqlite3.Connection) -> bool:
            sql = "SELECT state, worker, cancel_requested FROM jobs WHERE id = ?"
            row = con.execute(sql, (job_id,)).fetchone()
            if row is None or row["state"] != JobState.RUNNING.value or row["worker"] != worker:
                return True
            con.executemany(
                "INSERT INTO job_events (job_id, at, kind, data_json) VALUES (?, ?, ?, ?)",
                [(job_id, at, kind, json.dumps(dict(data))) for at, kind, data in events],
            )
            if any(kind == "step" for _, kind, _ in events):
                _thin_steps(con, job_id, max_step_events)
            con.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*args, job_id))
            return bool(row["cancel_requested"])

        return self.store.execute(work, write=True)

    def finish(
        self,
        job_id: int,
        worker: str,
        state: JobState,
        *,
        run_id: int | None = None,
        run_status: RunStatus | None = None,
        error: str = "",
        result: Mapping[str, Any] | None = None,
        step: int | None = None,
        total_steps: int | None = None,
    ) -> bool:
        """End a running job of ``worker`` in ``state`` with its run and figures. False (and nothing
        written) when the job was no longer this worker's (e.g. failed by :meth:`recover` meanwhile)."""
        state = JobState(state)
        if not state.ended:
            raise ValueError(f"a job ends finished, failed or cancelled, not {state.value}")
        values = {
            "state": state.value,
            "ended_at": time.time(),
            "run_id": run_id,
            "run_status": None if run_status is None else RunStatus(run_status).value,
            "error": error,
            "result_json": None if result is None else json.dumps(dict(result)),
            "phase": "",
        }
        if step is not None:
            values["step"] = step
        if total_steps is not None:
            values["total_steps"] = total_steps
        sets = ", ".join(f"{k} = ?" for k in values)
        sql = f"UPDATE jobs SET {sets} WHERE id = ? AND state = ? AND worker = ?"
        args = (*values.values(), job_id, JobState.RUNNING.value, worker)
        return self.store.execute(lambda con: con.execute(sql, args).rowcount == 1, write=True)

    def requeue(self, job_id: int, worker: str) -> bool:
        """Put a running job of ``worker`` back at its place in the queue (the worker is shutting down and
        did not store a run); its progress events are dropped so it starts clean. False when it was no
        longer this worker's."""
        return self.store.execute(lambda con: _requeue(con, int(job_id), worker), write=True)

    def requeue_worker_jobs(self, worker: str) -> list[int]:
        """Put every running job of ``worker`` back in the queue, at its place (the pool stopped that
        worker, by force if it did not stop in time: its jobs are not its fault, nor failed). A job whose
        owner had asked to cancel it ends cancelled instead. Returns the ids put back in the queue."""

        def work(con: sqlite3.Connection) -> list[int]:
            rows = con.execute(
                "SELECT id, cancel_requested FROM jobs WHERE state = ? AND worker = ?",
                (JobState.RUNNING.value, worker),
            ).fetchall()
            con.executemany(
                "UPDATE jobs SET state = ?, ended_at = ?, phase = '', "
                "error = 'cancelled (its worker was stopped before the run was stored)' WHERE id = ?",
                [(JobState.CANCELLED.value, time.time(), r["id"]) for r in rows if r["cancel_requested"]],
            )
            return [r["id"] for r in rows if not r["cancel_requested"] and _requeue(con, r["id"], worker)]

        return self.store.execute(work, write=True)

    def fail_worker_jobs(self, worker: str, reason: str) -> list[int]:
        """Mark every running job of ``worker`` failed with ``reason`` (its process is gone); return their
        ids."""

        def work(con: sqlite3.Connection) -> list[int]:
            ids = [
                r["id"]
                for r in con.execute(
                    "SELECT id FROM jobs WHERE state = ? AND worker = ?", (JobState.RUNNING.value, worker)
                )
            ]
            con.executemany(
                "UPDATE jobs SET state = ?, ended_at = ?, error = ?, phase = '' WHERE id = ?",
                [(JobState.FAILED.value, time.time(), reason, i) for i in ids],
            )
            return ids

        return self.store.execute(work, write=True)

    def recover(self, stale_after_s: float = STALE_AFTER_S) -> list[int]:
        """Fail the running jobs whose worker is gone: its process no longer exists on this host, or it has
        not reported for ``stale_after_s`` (another host, or a hung process). Returns their ids. Reads
        first and writes only when there is something to recover."""
        now = time.time()
        running = self.store.execute(
            lambda con: con.execute(
                "SELECT id, worker, heartbeat_at FROM jobs WHERE state = ?", (JobState.RUNNING.value,)
            ).fetchall()
        )
        dead: dict[str, str] = {}
        for row in running:
            pid = _local_pid(row["worker"])
            beat = row["heartbeat_at"] or 0.0
            if pid is not None and not _pid_alive(pid) and now - beat > DEAD_GRACE_S:
                dead[row["worker"]] = (
                    f"the worker process ({pid}) ended without finishing the job (killed, out of memory, "
                    "or the server stopped)"
                )
            elif now - beat > stale_after_s:
                dead[row["worker"]] = (
                    f"the worker stopped responding (no progress report for over {stale_after_s:.0f} s)"
                )
        return [i for worker, reason in dead.items() for i in self.fail_worker_jobs(worker, reason)]

    # ------------------------------------------------------------------------------------ housekeeping
    def prunable_events(self, keep_days: float | None = None) -> tuple[int, int]:
        """``(events, jobs)`` that :meth:`prune_events` with ``keep_days`` would delete now."""
        where, args = self._prunable(keep_days)
        sql = f"SELECT COUNT(*), COUNT(DISTINCT job_id) FROM job_events WHERE job_id IN ({where})"
        row = self.store.execute(lambda con: con.execute(sql, args).fetchone())
        return int(row[0]), int(row[1])

    def event_count(self) -> int:
        """How many progress events are stored (all jobs)."""
        return int(
            self.store.execute(lambda con: con.execute("SELECT COUNT(*) FROM job_events").fetchone()[0])
        )

    def prune_events(self, keep_days: float | None = None) -> EventsPruned:
        """Delete the progress events of jobs that ended over ``keep_days`` days ago (default
        :func:`events_keep_days`) **and** stored a run: the run's history in ``runs`` holds the same curves.

        Never touched: events of queued or running jobs, and of ended jobs without a stored run (a worker
        killed mid-run, a run that failed before it was stored): their events are the only record of what
        they did (and at most :data:`MAX_STEP_EVENTS` steps each). Reads first; writes only when there is
        something to delete."""
        days = events_keep_days() if keep_days is None else float(keep_days)
        if not days >= 0:
            raise ValueError(f"events are kept 0 or more days, got {keep_days}")
        if self.prunable_events(days)[0] == 0:
            return EventsPruned(0, 0, days)
        where, args = self._prunable(days)

        def work(con: sqlite3.Connection) -> EventsPruned:
            ids = [
                r[0]
                for r in con.execute(
                    f"SELECT DISTINCT job_id FROM job_events WHERE job_id IN ({where})", args
                )
            ]
            n = con.execute(f"DELETE FROM job_events WHERE job_id IN ({where})", args).rowcount
            return EventsPruned(int(n), len(ids), days)

        return self.store.execute(work, write=True)

    def prune_events_if_due(self, every_s: float = PRUNE_EVERY_S) -> EventsPruned | None:
        """:meth:`prune_events` at most once per ``every_s`` seconds per database in this process (the
        pool calls it when it starts, workers after each job); None when not due. Never raises: a bad
        :data:`ENV_EVENTS_DAYS` or a busy database is logged and tried again next time."""
        now = time.monotonic()
        last = _LAST_PRUNE.get(self.path)
        if last is not None and now - last < every_s:
            return None
        _LAST_PRUNE[self.path] = now
        try:
            return self.prune_events()
        except (ValueError, sqlite3.Error) as exc:
            log.warning("pruning the job events of %s failed: %s", self.path, exc)
            return None

    @staticmethod
    def _prunable(keep_days: float | None) -> tuple[str, list[Any]]:
        days = events_keep_days() if keep_days is None else float(keep_days)
        ended = [s.value for s in ENDED_JOB_STATES]
        where = (
            f"SELECT id FROM jobs WHERE state IN ({', '.join('?' for _ in ended)}) "
            "AND run_id IS NOT NULL AND ended_at < ?"
        )
        return where, [*ended, time.time() - days * 86400.0]

    def wait(self, job_ids: Iterable[int], timeout: float | None = None, *, poll_s: float = 0.2) -> list[Job]:
        """Wait until every job of ``job_ids`` has ended and return them; ``TimeoutError`` (saying how
        many are left) when ``timeout`` seconds pass first."""
        ids = [int(i) for i in job_ids]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            jobs = self.list_jobs(ids=ids)
            missing = set(ids) - {j.id for j in jobs}
            if missing:
                raise KeyError(f"no job with id {min(missing)}")
            left = [j for j in jobs if not j.ended]
            if not left:
                return jobs
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{len(left)} of {len(ids)} job(s) still queued or running")
            time.sleep(poll_s)

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` of the whole database ('ok' when sound)."""
        rows = self.store.execute(lambda con: con.execute("PRAGMA integrity_check").fetchall())
        return "; ".join(str(r[0]) for r in rows)


def _event(row: sqlite3.Row) -> JobEvent:
    return JobEvent(row["id"], row["job_id"], row["at"], row["kind"], json.loads(row["data_json"]))


def _requeue(con: sqlite3.Connection, job_id: int, worker: str) -> bool:
    """Back to the queue at its place, progress and events dropped: a running job of ``worker`` whose
    owner did not ask to cancel it."""
    done = con.execute(
        "UPDATE jobs SET state = ?, worker = NULL, started_at = NULL, heartbeat_at = NULL, "
        "step = 0, total_steps = 0, phase = '' "
        "WHERE id = ? AND state = ? AND worker = ? AND cancel_requested = 0",
        (JobState.QUEUED.value, job_id, JobState.RUNNING.value, worker),
    ).rowcount
    if done:
        con.execute("DELETE FROM job_events WHERE job_id = ?", (job_id,))
    return bool(done)


def _thin_steps(con: sqlite3.Connection, job_id: int, cap: int) -> None:
    """Keep at most about ``cap`` step events of a job: past it, only the steps that are multiples of a
    power-of-two stride (chosen from the latest step so about ``cap / 2`` remain) and the latest one."""
    count, latest, last_id = con.execute(
        "SELECT COUNT(*), MAX(json_extract(data_json, '$.step')), MAX(id) FROM job_events "
        "WHERE job_id = ? AND kind = 'step'",
        (job_id,),
    ).fetchone()
    if count <= cap or not latest:
        return
    stride = 2
    while latest / stride > max(1, cap // 2):
        stride *= 2
    con.execute(
        "DELETE FROM job_events WHERE job_id = ? AND kind = 'step' AND id < ? "
        "AND json_extract(data_json, '$.step') % ? != 0",
        (job_id, last_id, stride),
    )
