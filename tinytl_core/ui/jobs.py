"""The Adapt page's side of the job queue (no Streamlit): what a browser session submits, sees and cancels.

Runs train in worker processes (:mod:`tinytl_core.jobs`), never in the app's process, so any number of
sessions can submit at once: each mode is one job in the queue. A session sees its own jobs
(:func:`session_jobs`: place in line, progress, curves polled from the store, results), cancels only its own
(:func:`cancel_job`), and the server starts its pool of workers once (:func:`start_pool`).

A page that polls keeps a :class:`JobWatch` per session: each poll reads only the events newer than the
last one it saw, and rebuilds the curves chart and the results table only when what they show changed.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tinytl_core.adapt import AdaptConfig
from tinytl_core.jobs import (
    Job,
    JobEvent,
    JobQueue,
    JobState,
    NotYourJobError,
    WorkerPool,
    default_pool_size,
    failed_message,
    result_summary,
)
from tinytl_core.quantities import RunStatus
from tinytl_core.results import MEMORY, RUN, run_table
from tinytl_core.ui import vega
from tinytl_core.ui.errors import public_text

__all__ = [
    "RESULT_COLUMNS",
    "JobView",
    "JobWatch",
    "NotYourJobError",
    "SessionJobs",
    "cancel_job",
    "failed_message",
    "result_summary",
    "session_jobs",
    "start_pool",
    "submit_modes",
]

RESULT_COLUMNS: tuple[str, ...] = (
    RUN.mode,
    RUN.status,
    RUN.final_val_acc,
    RUN.best_val_acc,
    RUN.steps_done,
    MEMORY.total_modelled_bytes,
    MEMORY.total_measured_bytes,
    RUN.total_time_s,
    RUN.images_per_s,
    RUN.id,
    RUN.message,
)
"""The columns of :meth:`SessionJobs.results_frame` (one row per job), in order."""
SESSION_LIMIT = 12
"""How many of a session's latest jobs the Adapt page shows."""
CURVE_KINDS = ("step", "eval")
"""The job events the curves are drawn from."""


def start_pool(db_path: str | Path | None = None) -> WorkerPool | None:
    """Start the app's pool of worker processes on the results database (size: :func:`default_pool_size`,
    i.e. ``$TINYTL_WORKERS`` or half the cores); None when it is set to 0 (workers run by hand)."""
    size = default_pool_size()
    return WorkerPool(size, db_path).start() if size else None


def submit_modes(queue: JobQueue, configs: Sequence[AdaptConfig], *, owner: str, label: str) -> list[int]:
    """Queue one job per mode of one backbone on one dataset (in order, next to each other in line) for the
    session ``owner``; ``label`` names the dataset to people. Bad settings raise ``ValueError`` before
    anything is queued."""
    if not configs:
        raise ValueError("choose at least one mode to train")
    if len({(c.backbone, c.dataset) for c in configs}) != 1:
        raise ValueError("all runs of one submission use the same backbone and dataset")
    return queue.submit_many(configs, owner=owner, label=label)


def cancel_job(queue: JobQueue, job_id: int, session: str) -> Job:
    """Cancel a job for the ``session`` that asks: its own only (:class:`NotYourJobError` otherwise)."""
    if not session:
        raise NotYourJobError("a session without an id cannot cancel jobs")
    return queue.cancel(job_id, session)


def job_status(job: Job) -> str:
    """What a job's status column says: queued, running, or once ended its run's status (finished,
    diverged, cancelled) or failed."""
    if not job.ended:
        return job.state.value
    if job.state is JobState.FINISHED and job.run_status is not None:
        return job.run_status.value
    return job.state.value


@dataclass(frozen=True)
class JobView:
    """One of a session's jobs as the page shows it: the job, its place in line (queued only) and its
    curves so far (the :class:`~tinytl_core.adapt.StepEvent` / ``EvalEvent`` fields as dicts) and the id
    of the newest of their events (0: none yet)."""

    job: Job
    position: int | None
    steps: tuple[dict[str, Any], ...] = ()
    evals: tuple[dict[str, Any], ...] = ()
    last_event: int = 0

    @property
    def status(self) -> str:
        """See :func:`job_status`."""
        return job_status(self.job)

    @property
    def unsuccessful(self) -> bool:
        """Ended on a problem: failed or diverged."""
        return self.job.ended and self.status in (RunStatus.FAILED.value, RunStatus.DIVERGED.value)

    @property
    def error(self) -> str:
        """Why the job failed, as a page may show it: no server paths
        (:func:`~tinytl_core.ui.errors.public_text`; the worker's text may come from any library)."""
        return public_text(self.job.error)

    @property
    def name(self) -> str:
        """``job 3``: a job's own number. Never ``#3``, which every page keeps for *run* ids (Compare runs'
        delete takes ``#3``: a job's number there would name another run)."""
        return f"job {self.job.id}"

    @property
    def label(self) -> str:
        """``job 3 bias``: the curves' legend (the mode gives the colour)."""
        return f"{self.name} {self.job.config.mode}"

    def line(self) -> str:
        """One line of progress: place in line, or step and phase, or how it ended."""
        job = self.job
        head = f"{self.name} {job.config.mode}"
        if job.state is JobState.QUEUED:
            ahead = (self.position or 1) - 1
            return (
                f"{head} · queued, {ahead} job(s) ahead of it" if ahead else f"{head} · queued, next in line"
            )
        if job.state is JobState.RUNNING:
            text = f"{head} · step {job.step} of {job.total_steps or '?'}"
            text += " · stopping" if job.cancel_requested else ""
            return text + (f" · {job.phase}" if job.phase else "")
        return f"{head} · {self.status}"


@dataclass(frozen=True)
class SessionJobs:
    """A session's latest jobs (oldest first) and the queue around them."""

    views: tuple[JobView, ...]
    running: int
    """Jobs training now, everyone's."""
    queued: int
    """Jobs waiting, everyone's."""

    @property
    def active(self) -> bool:
        """True while one of the session's jobs is queued or running (the page polls)."""
        return any(not v.job.ended for v in self.views)

    def queue_text(self, workers: int | None) -> str:
        """The queue in one sentence (``workers``: the app's pool size; None when it has none)."""
        pool = (
            f"{workers} worker process(es) in this server"
            if workers
            else "no workers started by this server: run `python -m tinytl_core worker`"
        )
        return f"Queue: {self.running} training, {self.queued} waiting · {pool}."

    def series(self) -> list[tuple[str, Sequence[dict[str, Any]], Sequence[dict[str, Any]]]]:
        """``(label, steps, evals)`` of each job with a curve, for
        :func:`~tinytl_core.ui.vega.curves_chart`."""
        return [(v.label, v.steps, v.evals) for v in self.views if v.steps or v.evals]

    def curves_key(self) -> Hashable:
        """Changes whenever :meth:`series` does (a new event, a job restarted after a requeue)."""
        return tuple((v.label, v.last_event, len(v.steps), len(v.evals)) for v in self.views)

    def results_key(self) -> Hashable:
        """Changes whenever :meth:`results_frame` does (status, step, message; the result comes once
        ended)."""
        return tuple((v.job.id, v.status, v.job.step, v.job.error, v.job.ended) for v in self.views)

    def results_frame(self) -> pd.DataFrame:
        """One row per job (:data:`RESULT_COLUMNS`): status, accuracy (%), memory (MB), time, run id;
        missing figures are blanks."""
        rows = [
            {
                **(v.job.result or {}),
                RUN.mode: v.job.config.mode,
                RUN.status: v.status,
                RUN.message: v.error or None,
                RUN.steps_done: v.job.step,
            }
            for v in self.views
        ]
        return run_table(rows, RESULT_COLUMNS)


def session_jobs(queue: JobQueue, owner: str, *, limit: int = SESSION_LIMIT) -> SessionJobs:
    """The latest ``limit`` jobs of the session ``owner`` with their place in line and curves, and the
    queue's counts, read in full (a page that polls keeps a :class:`JobWatch` instead)."""
    return JobWatch().read(queue, owner, limit=limit)


@dataclass
class _Curves:
    """The curve events read so far of one job run (a requeued job starts again: new ``started_at``)."""

    started_at: float
    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    last_event: int = 0

    @property
    def count(self) -> int:
        return len(self.steps) + len(self.evals)

    def add(self, events: Sequence[JobEvent]) -> None:
        for event in events:
            (self.steps if event.kind == "step" else self.evals).append(event.data)
            self.last_event = event.id


class JobWatch:
    """One browser session's view of its jobs across polls, so a poll costs the server little.

    :meth:`read` returns what :func:`session_jobs` returns, but keeps each job's curve events and reads only
    those newer than the last one seen, in one read for all jobs (a job whose kept events were deleted
    meanwhile -- thinned steps of a long run, events pruned -- is read again in full); :meth:`curves` and
    :meth:`results` rebuild the chart and the results table only when what they show changed. The Adapt page
    keeps one in ``st.session_state``; a lock keeps overlapping reruns of one session consistent.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._curves: dict[int, _Curves] = {}
        self._chart: tuple[Hashable, tuple[pd.DataFrame, dict[str, Any]]] | None = None
        self._results: tuple[Hashable, pd.DataFrame] | None = None

    def read(self, queue: JobQueue, owner: str, *, limit: int = SESSION_LIMIT) -> SessionJobs:
        """The latest ``limit`` jobs of the session ``owner`` with their place in line and curves, and the
        queue's counts (a handful of small reads: the page polls this every couple of seconds)."""
        jobs = queue.list_jobs(owner=owner, limit=limit)
        counts = queue.counts()
        mine_waiting = any(j.state is JobState.QUEUED for j in jobs)
        waiting = [j.id for j in queue.list_jobs(states=[JobState.QUEUED])] if mine_waiting else []
        with self._lock:
            # A queued job has nothing to draw; a requeued one dropped its events and starts again.
            started = {j.id: j.started_at for j in jobs if j.started_at is not None}
            self._curves = {i: c for i, c in self._curves.items() if started.get(i) == c.started_at}
            seen = {i: self._curves[i].last_event if i in self._curves else 0 for i in started}
            read = queue.events_since(seen, kinds=CURVE_KINDS)
            stale = [i for i in read if i in self._curves and read[i].kept != self._curves[i].count]
            if stale:  # some of what this session holds was deleted since (thinned, pruned): start again
                read.update(queue.events_since(dict.fromkeys(stale, 0), kinds=CURVE_KINDS))
            for job_id, new in read.items():
                curves = self._curves.get(job_id) if job_id not in stale else None
                if curves is None:
                    curves = self._curves[job_id] = _Curves(started[job_id])
                curves.add(new.events)
            views = []
            for job in jobs:
                position = waiting.index(job.id) + 1 if job.id in waiting else None
                c = self._curves.get(job.id)
                if c is None:
                    views.append(JobView(job, position))
                else:
                    views.append(JobView(job, position, tuple(c.steps), tuple(c.evals), c.last_event))
        return SessionJobs(tuple(views), counts[JobState.RUNNING], counts[JobState.QUEUED])

    def curves(self, mine: SessionJobs) -> tuple[pd.DataFrame, dict[str, Any]] | None:
        """``(data, spec)`` of :func:`~tinytl_core.ui.vega.curves_chart` for ``mine`` (None: no curve yet),
        the same objects as last time while no event arrived."""
        key = mine.curves_key()
        with self._lock:
            if self._chart is None or self._chart[0] != key:
                series = mine.series()
                self._chart = (key, vega.curves_chart(series)) if series else None
            return None if self._chart is None else self._chart[1]

    def results(self, mine: SessionJobs) -> pd.DataFrame:
        """:meth:`SessionJobs.results_frame`, rebuilt only when a row changed."""
        key = mine.results_key()
        with self._lock:
            if self._results is None or self._results[0] != key:
                self._results = (key, mine.results_frame())
            return self._results[1]
