"""A worker process: claim queued jobs one at a time, train each with :func:`tinytl_core.adapt.adapt`, write
its progress and result into the results database (:mod:`tinytl_core.jobs.queue`).

Training runs in the process's main thread; a small reporter thread writes the buffered progress events,
the latest step and a heartbeat every :data:`PROGRESS_INTERVAL_S` seconds (one transaction each, however
fast the steps are), and reads back whether a cancel was asked for, which stops the training at its next
step. SIGTERM / SIGINT (the pool stopping, Ctrl-C) and the death of the parent process (``parent_pid``:
the app that started the pool) shut the worker down: the job it was training goes back to the queue, at
its place, without a stored run, so a restart resumes it. A SIGKILL cannot be caught: the pool (or any
other worker's next claim, :meth:`~tinytl_core.jobs.queue.JobQueue.recover`) marks that job failed.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tinytl_core.adapt import (
    AdaptResult,
    EvalEvent,
    PhaseEvent,
    ProgressEvent,
    StepEvent,
    adapt,
    explained_message,
)
from tinytl_core.data import DatasetUnavailable
from tinytl_core.jobs.queue import Job, JobQueue, JobState, worker_name
from tinytl_core.quantities import RunStatus
from tinytl_core.results import RUN, ResultsStore

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.5
"""How often a worker writes progress (and beats, and reads a cancel): at most one transaction per job per
interval, so watchers and workers never queue behind per-step writes."""
IDLE_POLL_S = 0.5
"""How often an idle worker looks for a queued job."""
SUMMARY_FIELDS: tuple[str, ...] = (
    RUN.status,
    RUN.message,
    RUN.final_val_acc,
    RUN.best_val_acc,
    RUN.final_train_acc,
    RUN.steps_done,
    RUN.total_time_s,
    RUN.images_per_s,
    RUN.n_trainable,
    RUN.n_total,
    RUN.pretrained_loaded,
    RUN.device,
    RUN.resolution,
)
"""The :class:`~tinytl_core.adapt.AdaptResult` fields :func:`result_summary` keeps."""
_EVENT_KINDS = {PhaseEvent: "phase", StepEvent: "step", EvalEvent: "eval"}
Runner = Callable[..., AdaptResult]
"""What trains a job: :func:`~tinytl_core.adapt.adapt` or a stand-in with its signature (tests)."""


def result_summary(result: AdaptResult) -> dict[str, Any]:
    """The figures of an ended run that the app shows (JSON-ready): :data:`SUMMARY_FIELDS`, the run's id
    in the store (``id``), its memory figures (:class:`~tinytl_core.quantities.RunMemory` fields, when
    recorded), ``memory_error``, ``backbone_message`` and ``notes`` (settings the run adjusted)."""
    summary = {name: getattr(result, name) for name in SUMMARY_FIELDS}
    summary[RUN.status] = RunStatus(result.status).value
    return {
        **summary,
        RUN.id: result.run_id,
        **(asdict(result.memory) if result.memory is not None else {}),
        "memory_error": result.memory_error,
        "backbone_message": result.backbone_message,
        "notes": list(result.notes),
    }


def failed_message(exc: BaseException) -> str:
    """What a failed job says: the library's own message for the problems it explains (``ValueError``,
    ``RuntimeError``: bad settings, data unavailable, a diverging loss); for anything else (an ``OSError``
    may hold server paths) its kind and a reference to the traceback in the worker's log."""
    if isinstance(exc, DatasetUnavailable):  # says which dataset and what to do (offline, no download)
        return str(exc)
    explained = explained_message(exc)
    if explained is not None:
        return explained
    reference = uuid.uuid4().hex[:8]
    log.error("job failed (reference %s)", reference, exc_info=exc)
    advice = " Lower the batch size or the resolution." if isinstance(exc, MemoryError) else ""
    return (
        f"{type(exc).__name__} while training.{advice} If it keeps happening, report reference "
        f"`{reference}`: the details are in the worker's log under it."
    )


class _WorkerStore(ResultsStore):
    """The results store, except that a run cut short by the worker's own shutdown is not saved: its job
    goes back to the queue and is trained again from the start."""

    def __init__(self, path: Path, skip: threading.Event):
        super().__init__(path)
        self._skip = skip

    def save_run(self, record: Any) -> int:  # type: ignore[override]
        if self._skip.is_set() and RunStatus(record[RUN.status]) is RunStatus.CANCELLED:
            return None  # type: ignore[return-value]
        return super().save_run(record)


class _Reporter:
    """Buffers a job's progress events and writes them (with the latest step and a heartbeat) from its own
    thread every ``interval`` seconds; sets ``cancel`` when the job should stop."""

    def __init__(self, queue: JobQueue, job: Job, worker: str, shutdown: threading.Event, interval: float):
        self.queue, self.job_id, self.worker, self.interval = queue, job.id, worker, interval
        self.shutdown = shutdown
        self.cancel = threading.Event()  # what adapt() checks before every step
        self.asked = False  # the job's owner asked to cancel (not a shutdown)
        self._lock = threading.Lock()
        self._buffer: list[tuple[float, str, dict[str, Any]]] = []
        self._progress: dict[str, Any] = {}
        self._training_phase = ""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"tinytl-report-{job.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def on_event(self, event: ProgressEvent) -> None:
        """adapt()'s progress callback: buffer the event, remember the step and phase (no I/O here)."""
        with self._lock:
            self._buffer.append((time.time(), _EVENT_KINDS[type(event)], asdict(event)))
            if isinstance(event, PhaseEvent):
                self._progress["phase"] = event.message
                if event.phase != "eval":
                    self._training_phase = event.message
            else:
                self._progress["step"] = event.step
                self._progress["total_steps"] = event.total_steps
                final = isinstance(event, EvalEvent) and event.final
                self._progress["phase"] = "" if final else self._training_phase

    def flush(self) -> None:
        """Write what is buffered; stop the training when asked to (cancel, or the job is not ours)."""
        with self._lock:
            events, self._buffer = self._buffer, []
            progress = dict(self._progress)
        try:
            stop = self.queue.report(self.job_id, self.worker, events, **progress)
        except Exception:  # a locked or busy database: keep the events for the next report
            log.warning("progress report of job %s failed; retrying", self.job_id, exc_info=True)
            with self._lock:
                self._buffer[:0] = events
            return
        if stop and not self.shutdown.is_set():
            self.asked = True
        if stop or self.shutdown.is_set():
            self.cancel.set()

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            self.flush()

    def close(self) -> None:
        """Stop the thread and write what is left."""
        self._done.set()
        self._thread.join()
        self.flush()


def run_job(
    queue: JobQueue,
    job: Job,
    worker: str,
    *,
    shutdown: threading.Event | None = None,
    interval: float = PROGRESS_INTERVAL_S,
    runner: Runner = adapt,
) -> JobState:
    """Train one claimed job to its end and record it; return the state it ended in (``QUEUED`` when the
    worker's shutdown put it back in the queue)."""
    shutdown = shutdown or threading.Event()
    reporter = _Reporter(queue, job, worker, shutdown, interval)
    store = _WorkerStore(queue.path, shutdown)
    reporter.start()
    try:
        result = runner(job.config, progress=reporter.on_event, cancel=reporter.cancel, store=store)
    except Exception as exc:
        reporter.close()
        queue.finish(job.id, worker, JobState.FAILED, run_status=RunStatus.FAILED, error=failed_message(exc))
        return JobState.FAILED
    reporter.close()
    status = RunStatus(result.status)
    if status is RunStatus.CANCELLED and shutdown.is_set() and not reporter.asked:
        if queue.requeue(job.id, worker):
            return JobState.QUEUED
        # Refused: its owner asked to cancel it meanwhile (before the reporter read it: a Ctrl-C on a
        # sweep does both at once). It ends cancelled here, not left running for the pool to call failed.
    state = {RunStatus.FINISHED: JobState.FINISHED, RunStatus.DIVERGED: JobState.FINISHED}.get(
        status, JobState.CANCELLED if status is RunStatus.CANCELLED else JobState.FAILED
    )
    queue.finish(
        job.id,
        worker,
        state,
        run_id=result.run_id,
        run_status=status,
        error="" if status is RunStatus.FINISHED else result.message,
        result=result_summary(result),
        step=result.steps_done,
        total_steps=result.steps_planned,
    )
    return state


SIGNAL_POLL_S = 0.2
"""How soon a received SIGTERM / SIGINT or a gone parent stops the worker."""


def _parent_gone(parent_pid: int | None) -> bool:
    return parent_pid is not None and os.getppid() != parent_pid


def run_worker(
    db_path: str | Path | None = None,
    *,
    worker_id: str | None = None,
    max_jobs: int | None = None,
    idle_exit_s: float | None = None,
    threads: int | None = None,
    parent_pid: int | None = None,
    shutdown: threading.Event | None = None,
    poll_s: float = IDLE_POLL_S,
    interval: float = PROGRESS_INTERVAL_S,
    runner: Runner = adapt,
    sweep: str | None = None,
) -> int:
    """Claim and train jobs until told to stop; return how many jobs it ended.

    Args:
        db_path: the results database holding the queue (default: the results store's).
        worker_id: its name in the queue (default ``host:pid``, which lets a crash be recognised).
        max_jobs: stop after this many jobs; idle_exit_s: stop after this long with nothing queued.
        threads: PyTorch threads for training (``torch.set_num_threads``; default: PyTorch's).
        parent_pid: stop (and requeue the current job) when this process is no longer the parent.
        shutdown: set it to stop (the current job goes back to the queue); SIGTERM and SIGINT set it when
            this runs in the main thread.
        poll_s: how often to look for a job when idle; interval: how often to report progress.
        runner: what trains a job (:func:`~tinytl_core.adapt.adapt`; tests pass a cheap stand-in).
        sweep: train only this sweep's jobs (a sweep command's own workers).
    """
    queue = JobQueue(db_path)
    worker = worker_id or worker_name()
    shutdown = shutdown or threading.Event()
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    received: list[int] = []  # signals noted by the handler, turned into `shutdown` by the watcher
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue  # ignored by whoever started us (a sweep run in the background): keep ignoring it
            # No Event.set() here: it takes the event's lock, and a second signal arriving while the first
            # handler holds it deadlocked the worker for good (it outlived the app's server). A list
            # append takes no lock the handler could be interrupted in.
            signal.signal(sig, lambda signum, _frame: received.append(signum))
    finished = threading.Event()  # ends the watcher when this returns (a thread, reused by tests)
    watcher = threading.Thread(target=_watch, args=(parent_pid, received, shutdown, finished), daemon=True)
    watcher.start()
    try:
        return _work(queue, worker, shutdown, max_jobs, idle_exit_s, poll_s, interval, runner, sweep)
    finally:
        finished.set()


def _work(
    queue: JobQueue,
    worker: str,
    shutdown: threading.Event,
    max_jobs: int | None,
    idle_exit_s: float | None,
    poll_s: float,
    interval: float,
    runner: Runner,
    sweep: str | None = None,
) -> int:
    """:func:`run_worker`'s loop: claim and train jobs until told to stop."""
    log.info("worker %s on %s", worker, queue.path)
    done, idle_since = 0, time.monotonic()
    while not shutdown.is_set() and (max_jobs is None or done < max_jobs):
        job = queue.claim(worker, sweep=sweep)
        if job is None:
            if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                break
            shutdown.wait(poll_s)
            continue
        log.info("job %s: %s %s on %s", job.id, job.config.backbone, job.config.mode, job.label)
        state = run_job(queue, job, worker, shutdown=shutdown, interval=interval, runner=runner)
        log.info("job %s %s", job.id, state.value)
        done += state is not JobState.QUEUED
        queue.prune_events_if_due()  # at most hourly per process; a read when nothing is due
        idle_since = time.monotonic()
    return done


def _watch(
    parent_pid: int | None, received: list[int], shutdown: threading.Event, finished: threading.Event
) -> None:
    """Set ``shutdown`` (from this thread, never from a signal handler) when a signal was received or the
    parent process is gone; end with the worker (``finished``)."""
    while not finished.wait(SIGNAL_POLL_S) and not shutdown.is_set():
        if received:
            log.info("signal %s: shutting down", received[0])
            shutdown.set()
        elif _parent_gone(parent_pid):
            log.info("the parent process %s is gone: shutting down", parent_pid)
            shutdown.set()
