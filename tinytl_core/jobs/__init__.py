"""Adaptation runs outside the app's process: a persistent job queue in the results database
(:mod:`~tinytl_core.jobs.queue`), the worker process that trains queued jobs
(:mod:`~tinytl_core.jobs.worker`, ``python -m tinytl_core worker``) and a pool of local workers
(:mod:`~tinytl_core.jobs.pool`, started by the app)."""

from tinytl_core.jobs.pool import WorkerPool, default_pool_size, exit_reason
from tinytl_core.jobs.queue import (
    ENDED_JOB_STATES,
    Job,
    JobEvent,
    JobQueue,
    JobState,
    NotYourJobError,
    process_owner,
)
from tinytl_core.jobs.worker import failed_message, result_summary, run_job, run_worker

__all__ = [
    "ENDED_JOB_STATES",
    "Job",
    "JobEvent",
    "JobQueue",
    "JobState",
    "NotYourJobError",
    "WorkerPool",
    "default_pool_size",
    "exit_reason",
    "failed_message",
    "process_owner",
    "result_summary",
    "run_job",
    "run_worker",
]
