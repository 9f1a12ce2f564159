"""The Adapt page's side of the job queue (no Streamlit): what a browser session submits, sees and cancels.

Runs train in worker processes (:mod:`tinytl_core.jobs`), never in the app's process, so any number of
sessions can submit at once: each mode is one job in the queue. A session sees its own jobs
(:func:`session_jobs`: place in line, progress, curves polled from the store, results), cancels only its own
(:func:`cancel_job`), and the server starts its pool of workers once (:func:`start_pool`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tinytl_core.adapt import AdaptConfig
from tinytl_core.jobs import (
    Job,
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

__all__ = [
    "RESULT_COLUMNS",
    "JobView",
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
    curves so far (the :class:`~tinytl_core.adapt.StepEvent` / ``EvalEvent`` fields as dicts)."""

    job: Job
    position: int | None
    steps: tuple[dict[str, Any], ...] = ()
    evals: tuple[dict[str, Any], ...] = ()

    @property
    def status(self) -> str:
        """See :func:`job_status`."""
        return job_status(self.job)

    @property
    def unsuccessful(self) -> bool:
        """Ended on a problem: failed or diverged."""
        return self.job.ended and self.status in (RunStatus.FAILED.value, RunStatus.DIVERGED.value)

    @property
    def label(self) -> str:
        """``#id mode``: the curves' legend (the mode gives the colour)."""
        return f"#{self.job.id} {self.job.config.mode}"

    def line(self) -> str:
        """One line of progress: place in line, or step and phase, or how it ended."""
        job = self.job
        head = f"#{job.id} {job.config.mode}"
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
        :func:`~tinytl_core.ui.figures.curves_figure`."""
        return [(v.label, v.steps, v.evals) for v in self.views if v.steps or v.evals]

    def results_frame(self) -> pd.DataFrame:
        """One row per job (:data:`RESULT_COLUMNS`): status, accuracy (%), memory (MB), time, run id;
        missing figures are blanks."""
        rows = [
            {
                **(v.job.result or {}),
                RUN.mode: v.job.config.mode,
                RUN.status: v.status,
                RUN.message: v.job.error,
                RUN.steps_done: v.job.step,
            }
            for v in self.views
        ]
        return run_table(rows, RESULT_COLUMNS)


def session_jobs(queue: JobQueue, owner: str, *, limit: int = SESSION_LIMIT) -> SessionJobs:
    """The latest ``limit`` jobs of the session ``owner`` with their place in line and curves, and the
    queue's counts (a handful of small reads: the page polls this every second or two)."""
    jobs = queue.list_jobs(owner=owner, limit=limit)
    counts = queue.counts()
    waiting = [j.id for j in queue.list_jobs(states=[JobState.QUEUED])] if counts[JobState.QUEUED] else []
    views = []
    for job in jobs:
        position = waiting.index(job.id) + 1 if job.id in waiting else None
        events = queue.events(job.id, kinds=("step", "eval")) if job.started_at is not None else []
        steps = tuple(e.data for e in events if e.kind == "step")
        evals = tuple(e.data for e in events if e.kind == "eval")
        views.append(JobView(job, position, steps, evals))
    return SessionJobs(tuple(views), counts[JobState.RUNNING], counts[JobState.QUEUED])
