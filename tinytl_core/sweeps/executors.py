"""Where a sweep's configurations train: local worker processes through the job queue (the default), Ray
tasks, or this process.

Ray tasks and this process run :func:`train_config`: one configuration in, one :class:`TaskOutcome` out
(the run's record with its result and curves, or why it could not run), and the driver
(:func:`tinytl_core.sweeps.runner.run_sweep`) alone writes the results store, so a Ray cluster's nodes
need no access to the database. Local workers are the job queue's (:mod:`tinytl_core.jobs`): they share
the database's file and store each run themselves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from tinytl_core.adapt import AdaptConfig, adapt
from tinytl_core.jobs import (
    Job,
    JobQueue,
    JobState,
    NotYourJobError,
    WorkerPool,
    default_pool_size,
    process_owner,
)
from tinytl_core.jobs.worker import failed_message
from tinytl_core.modes import ModeNotApplicable
from tinytl_core.quantities import RunStatus
from tinytl_core.sweeps.grid import config_key, sweep_id

POLL_S = 0.25
"""How often an executor waiting on its workers looks at the cancel event."""


class OutcomeKind(str, Enum):
    """What became of one configuration."""

    RAN = "ran"  # it trained: ``record`` holds the run (finished, cancelled, failed or diverged)
    NOT_APPLICABLE = "not applicable"  # the mode does not apply to this backbone
    ERROR = "error"  # it could not start (dataset unavailable, ...) or its worker died
    CANCELLED = "cancelled"  # cancelled before it started


@dataclass
class TaskOutcome:
    """The result of :func:`train_config`, sent back to the driver. ``record`` is
    :meth:`~tinytl_core.adapt.AdaptResult.to_record` (config, history, memory, accuracy...) when it ran
    and the driver is to store it; ``run_id`` when a worker stored it already."""

    key: str
    kind: OutcomeKind
    record: dict[str, Any] | None = None
    message: str = ""
    worker: str = ""
    run_id: int | None = None  # the run a queue worker stored itself (``record`` is None then)

    @property
    def status(self) -> RunStatus | None:
        """The status of a run in ``record``, None otherwise."""
        return RunStatus(self.record["status"]) if self.record is not None else None


class _Collector:
    """Stands in for a results store inside a worker: :func:`adapt` hands it the record of the run
    (also of a run that fails and re-raises), which goes back to the driver instead of a database."""

    def __init__(self) -> None:
        self.record: dict[str, Any] | None = None

    def save_run(self, record: Mapping[str, Any]) -> int:
        self.record = dict(record)
        return 0


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def train_config(config: Mapping[str, Any], cancel: threading.Event | None = None) -> TaskOutcome:
    """Train one configuration (an :meth:`AdaptConfig.to_dict`) and return its outcome; never raises for
    a problem of the configuration itself (the outcome says what happened)."""
    cfg = AdaptConfig.from_dict(dict(config))
    key, collector = config_key(cfg), _Collector()
    try:
        adapt(cfg, cancel=cancel, store=collector)  # type: ignore[arg-type] -- a store's save_run is all it uses
    except ModeNotApplicable as exc:
        return TaskOutcome(key, OutcomeKind.NOT_APPLICABLE, message=str(exc), worker=_worker_name())
    except Exception as exc:  # noqa: BLE001 -- reported per configuration; the sweep goes on
        if collector.record is None:  # failed before the run started: nothing was recorded
            message = failed_message(exc)
            return TaskOutcome(key, OutcomeKind.ERROR, message=message, worker=_worker_name())
    return TaskOutcome(key, OutcomeKind.RAN, record=collector.record, worker=_worker_name())


OutcomeCallback = Callable[[TaskOutcome], None]


class SweepExecutor(Protocol):
    """Runs configurations and reports each outcome as it arrives (in any order) to ``on_outcome``, which
    is called in the caller's thread. Stops early when ``cancel`` is set; a ``KeyboardInterrupt`` stops
    its workers and propagates."""

    name: str

    def run(
        self, configs: Sequence[AdaptConfig], on_outcome: OutcomeCallback, cancel: threading.Event
    ) -> None: ...


class InlineExecutor:
    """One configuration after the other in this process (``--workers 0``): no process start-up, for
    small sweeps, tests and debugging. A cancel stops the run in progress at its next step (kept as
    cancelled); Ctrl-C does the same and then propagates."""

    name = "this process"

    def run(
        self, configs: Sequence[AdaptConfig], on_outcome: OutcomeCallback, cancel: threading.Event
    ) -> None:
        for config in configs:
            if cancel.is_set():
                return
            outcome = train_config(config.to_dict(), cancel)
            on_outcome(outcome)
            if outcome.status is RunStatus.CANCELLED and not cancel.is_set():
                raise KeyboardInterrupt  # adapt() turned Ctrl-C into a cancelled run: stop the sweep too


class QueueExecutor:
    """Configurations as jobs of the persistent job queue (:class:`~tinytl_core.jobs.JobQueue`, in the
    results database ``db_path``), trained by local worker processes: a
    :class:`~tinytl_core.jobs.WorkerPool` of ``workers`` started for the sweep, or with ``workers=0`` the
    workers already serving that database (the app's pool, ``python -m tinytl_core worker``). Workers
    store each run themselves; outcomes carry the run's id.

    Jobs are tagged with the sweep (``sweep``: give the whole grid's
    :func:`~tinytl_core.sweeps.grid.sweep_id`, the same on every resume; default: that of the
    configurations given) and owned by ``owner``: a sweep started again adopts its jobs still queued or
    running
    instead of queueing them twice. A cancel or Ctrl-C cancels the sweep's jobs that have not ended (a
    running one stops within a step or two and is stored as cancelled).
    """

    def __init__(
        self,
        db_path: str | Path | None = None,
        workers: int | None = None,
        *,
        sweep: str | None = None,
        owner: str | None = None,
        threads: int | None = None,
    ):
        self.db_path = db_path
        self.workers = default_pool_size() if workers is None else int(workers)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        self.sweep, self.owner, self.threads = sweep, owner, threads
        self.name = (
            f"{self.workers} local worker process{'es' if self.workers != 1 else ''}"
            if self.workers
            else "the workers serving the job queue"
        )

    def submit(self, configs: Sequence[AdaptConfig]) -> tuple[JobQueue, dict[int, str], str]:
        """Queue the configurations (adopting this sweep's jobs still queued or running); return the queue,
        job id -> configuration key, and the owner the jobs were queued under."""
        queue = JobQueue(self.db_path)
        sweep = self.sweep or sweep_id(configs)
        # a command-line sweep owns its jobs as this process: an identical sweep running beside it shares
        # them without being able to stop them
        owner = self.owner or process_owner(f"sweep {sweep}")
        jobs: dict[int, str] = {}
        live = queue.list_jobs(sweep=sweep, states=[JobState.QUEUED, JobState.RUNNING])
        adopted = {config_key(j.config): j.id for j in live}
        wanted = {config_key(c): c for c in configs}
        for key, job_id in adopted.items():
            if key in wanted:
                jobs[job_id] = key
                queue.adopt(job_id, owner)  # watched: if its owner cancels, it is handed over to us
        new = [c for k, c in wanted.items() if k not in adopted]
        if new:
            ids = queue.submit_many(new, owner=owner, sweep=sweep)
            jobs.update(zip(ids, (config_key(c) for c in new)))
        return queue, jobs, owner

    def run(
        self, configs: Sequence[AdaptConfig], on_outcome: OutcomeCallback, cancel: threading.Event
    ) -> None:
        if not configs:
            return
        queue, jobs, owner = self.submit(configs)
        pool = None
        if self.workers:
            # its own workers train its own grid: other users' jobs queued before it are not theirs to run
            sweep = self.sweep or sweep_id(configs)  # as submit tagged them: no query needed
            pool = WorkerPool(
                min(self.workers, len(jobs)), queue.path, threads=self.threads, sweep=sweep
            ).start()
        pending = set(jobs)
        try:
            while pending and not cancel.is_set():
                for job in queue.list_jobs(ids=pending):
                    if job.ended:
                        pending.discard(job.id)
                        on_outcome(job_outcome(job, jobs[job.id]))
                if pending:
                    cancel.wait(POLL_S)
        finally:
            if pending:  # cancelled or interrupted: this sweep's jobs that have not ended stop
                stopping = []  # (a job another sweep also waits for is handed over to it and goes on)
                for job_id in pending:
                    with contextlib.suppress(KeyError, NotYourJobError):
                        if queue.cancel(job_id, owner).owner in (owner, None):
                            stopping.append(job_id)
                with contextlib.suppress(TimeoutError):
                    queue.wait(stopping, timeout=STOP_WAIT_S)
            if pool is not None:
                pool.stop()


STOP_WAIT_S = 20.0
"""How long a stopped sweep waits for its running jobs to honour the cancel before stopping the workers."""


def job_outcome(job: Job, key: str) -> TaskOutcome:
    """The outcome of an ended job: its stored run, or why it has none."""
    if job.run_id is not None:
        return TaskOutcome(key, OutcomeKind.RAN, run_id=job.run_id, worker=job.worker or "")
    if job.state is JobState.CANCELLED:
        return TaskOutcome(key, OutcomeKind.CANCELLED, message=job.error, worker=job.worker or "")
    kind = OutcomeKind.NOT_APPLICABLE if "does not apply" in job.error else OutcomeKind.ERROR
    return TaskOutcome(key, kind, message=job.error, worker=job.worker or "")


RAY_MISSING = (
    "Ray is not installed: `pip install 'tinytl-lab[ray]'` (or `pip install 'ray[default]'`) to run sweeps "
    "on Ray, "
    "or leave out --ray to use local worker processes"
)


def import_ray() -> Any:
    """The ``ray`` module; ``ImportError`` with :data:`RAY_MISSING` (what to install) when it is absent."""
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_MISSING) from None
    return ray


class RayExecutor:
    """Each configuration a Ray task (:func:`train_config` on a node, ``cpus_per_task`` CPUs each) whose
    outcome comes back to the driver.

    ``address``: a Ray cluster's address (``ray://host:10001`` or ``host:6379``) is joined; None starts a
    local Ray instance for this sweep (stopped at the end); ``"auto"`` joins the Ray cluster running on
    this machine, or starts a local one when there is none. ``init_kwargs`` go to ``ray.init`` (e.g.
    ``num_cpus=2, include_dashboard=False``). An already initialised Ray is used as it is and left running.
    Nodes need this package installed (same versions as the driver).
    """

    def __init__(
        self, address: str | None = None, *, cpus_per_task: float = 1, init_kwargs: Mapping | None = None
    ):
        self.address = address
        self.cpus_per_task = cpus_per_task
        self.init_kwargs = dict(init_kwargs or {})
        self.name = f"Ray ({address or 'local'})"

    def _init(self, ray: Any) -> bool:
        """Connect or start Ray; True when this executor started it (and so shuts it down)."""
        if ray.is_initialized():
            return False
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline machines: no usage report
        kwargs = {"include_dashboard": False, "logging_level": logging.WARNING, **self.init_kwargs}
        if self.address == "auto":
            try:
                ray.init(address="auto", **{k: v for k, v in kwargs.items() if k != "num_cpus"})
                return True
            except ConnectionError:
                pass  # no cluster running here: start a local one
            ray.init(**kwargs)
        elif self.address:
            try:
                with warnings.catch_warnings():  # Ray's own timeout warning: the error below says it
                    warnings.simplefilter("ignore")
                    ray.init(address=self.address, **{k: v for k, v in kwargs.items() if k != "num_cpus"})
            except Exception as exc:  # noqa: BLE001 -- Ray raises several kinds; one clear sentence
                raise ConnectionError(
                    f"cannot reach the Ray cluster at {self.address} ({_first_line(exc)}); check the address "
                    "and that the cluster is running (`ray status` on its head node)"
                ) from None
        else:
            ray.init(**kwargs)
        return True

    def run(
        self, configs: Sequence[AdaptConfig], on_outcome: OutcomeCallback, cancel: threading.Event
    ) -> None:
        ray = import_ray()
        if not configs:
            return
        started = self._init(ray)
        task = ray.remote(num_cpus=self.cpus_per_task, max_retries=0)(train_config)
        refs = {task.remote(c.to_dict()): config_key(c) for c in configs}
        pending = list(refs)
        try:
            while pending and not cancel.is_set():
                done, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
                for ref in done:
                    try:
                        outcome = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 -- the task's worker crashed or was lost
                        outcome = TaskOutcome(refs[ref], OutcomeKind.ERROR, message=_first_line(exc))
                    on_outcome(outcome)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()


def _first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its class name when it has none): said to people."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


RAY_ADDRESS = re.compile(
    r"^(?:ray://)?(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(?P<port>\d{1,5})$"
)
"""A Ray cluster's address: ``host:port`` or ``ray://host:port``."""


def check_ray_address(address: str | None) -> None:
    """``ValueError`` unless ``address`` is None (a local instance), ``auto`` or a ``host:port`` /
    ``ray://host:port`` with a valid port: checked before Ray is imported or anything is queued (``bogus://x``
    reached Ray as 'Module: bogus does not exist')."""
    if address is None or address == "auto":
        return
    match = RAY_ADDRESS.match(address)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ValueError(
            f"Ray address {address!r}: give 'auto', host:port or ray://host:port (e.g. 10.0.0.5:6379)"
        )
