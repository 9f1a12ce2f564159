"""Background adaptation jobs for the app: a worker thread runs :func:`tinytl_core.adapt.adapt` for one or
more modes in turn and writes its progress into a shared object that the page polls.

Streamlit must not be called from other threads, so the worker never touches the UI: it only updates a
:class:`TrainingJob` under a lock, and the page reads consistent copies with :meth:`TrainingJob.snapshot`
(e.g. from an ``st.fragment(run_every=...)``). :data:`JOBS` is the process-wide slot: one training at a
time, so two tabs never have two trainings fighting over the same cores -- a second
:meth:`JobSlot.submit` raises :class:`JobBusyError` with a message for the user.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from tinytl_core.adapt import AdaptConfig, AdaptResult, EvalEvent, PhaseEvent, ProgressEvent, StepEvent, adapt
from tinytl_core.data import DatasetUnavailable
from tinytl_core.quantities import RunStatus
from tinytl_core.results import MEMORY, RUN, ResultsStore, run_table
from tinytl_core.ui.errors import failure_message, failure_reference, log_failure

log = logging.getLogger(__name__)

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
"""The columns of :meth:`JobSnapshot.results_frame` (one row per mode), in order."""
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


class NotYourJobError(PermissionError):
    """Someone other than the session that started a job asked to stop it."""


class JobBusyError(RuntimeError):
    """A job is already running in this process; ``job`` is that job."""

    def __init__(self, job: TrainingJob):
        snap = job.snapshot()
        modes = ", ".join(m.mode for m in snap.modes)
        super().__init__(
            f"A training run is already going ({snap.backbone} on {snap.dataset_label}, mode(s) {modes}, "
            f"started {snap.elapsed_s:.0f} s ago, {100 * snap.fraction:.0f}% done). Only one training runs "
            "at a time on this machine: wait for it to finish, or stop it first."
        )
        self.job = job


@dataclass
class ModeProgress:
    """Progress of one mode of a job. ``steps`` / ``evals`` hold the :class:`~tinytl_core.adapt.StepEvent`
    and :class:`~tinytl_core.adapt.EvalEvent` fields as dicts; ``result`` the summary once it ended."""

    mode: str
    status: RunStatus = RunStatus.WAITING
    phase: str = ""
    message: str = ""
    total_steps: int = 0
    step: int = 0
    """The one step count shown everywhere (progress bar, table): the last step trained, or once the mode
    ended, the steps its result records."""
    training_phase: str = ""
    """The phase text while training (what ``phase`` returns to when an evaluation ends)."""
    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None

    @property
    def steps_done(self) -> int:
        return self.step

    @property
    def ended(self) -> bool:
        return RunStatus(self.status).ended


@dataclass(frozen=True)
class JobSnapshot:
    """A consistent copy of a job's state, safe to read while the worker goes on."""

    job_id: str
    owner: str
    backbone: str
    dataset_label: str
    running: bool
    cancelling: bool
    elapsed_s: float
    modes: tuple[ModeProgress, ...]
    error: str = ""

    @property
    def fraction(self) -> float:
        """Share of the planned steps done, over all modes (ended modes count as complete)."""
        planned = [max(1, m.total_steps) if m.total_steps else None for m in self.modes]
        known = [p for p in planned if p]
        per_mode = sum(known) / len(known) if known else 1
        total = done = 0.0
        for m, p in zip(self.modes, planned):
            size = p or per_mode
            total += size
            done += size if m.ended else min(m.steps_done, size)
        return done / total if total else 0.0

    @property
    def current(self) -> ModeProgress | None:
        """The mode being trained now (None when none is)."""
        return next((m for m in self.modes if m.status == RunStatus.RUNNING), None)

    def results_frame(self) -> pd.DataFrame:
        """One row per mode (:data:`RESULT_COLUMNS`): status, accuracy (%), memory (MB), time, run id;
        missing figures are blanks."""
        rows = [
            {
                **(m.result or {}),
                RUN.mode: m.mode,
                RUN.status: m.status,
                RUN.message: m.message,
                RUN.steps_done: m.steps_done,
            }
            for m in self.modes
        ]
        return run_table(rows, RESULT_COLUMNS)


def result_summary(result: AdaptResult) -> dict[str, Any]:
    """The figures of a finished (or cancelled / failed) run that the page shows: :data:`SUMMARY_FIELDS`,
    the run's id in the store (``id``), its memory figures (:class:`~tinytl_core.quantities.RunMemory`
    fields, when recorded), ``memory_error`` and ``backbone_message``."""
    return {
        **{name: getattr(result, name) for name in SUMMARY_FIELDS},
        RUN.id: result.run_id,
        **(asdict(result.memory) if result.memory is not None else {}),
        "memory_error": result.memory_error,
        "backbone_message": result.backbone_message,
        "notes": list(result.notes),  # settings the run adjusted (e.g. a batch larger than the data)
    }


Runner = Callable[..., AdaptResult]


def failed_message(exc: Exception) -> str:
    """What a failed mode shows: the library's own message for the problems it explains (``ValueError``,
    ``RuntimeError``: bad settings, a diverging loss), a short text without the exception's own (which may
    hold server paths) for anything else, e.g. an ``OSError``; the traceback is in the log."""
    if isinstance(exc, (ValueError, RuntimeError)) and not isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc}"
    reference = failure_reference()
    log_failure(exc, reference, "a training run")
    return failure_message(exc, reference, "this run")


class TrainingJob:
    """Adapt one backbone on one dataset in several modes, one after the other, in a worker thread.

    Args:
        configs: one :class:`~tinytl_core.adapt.AdaptConfig` per mode (same backbone and dataset); each is
            validated here, so a bad configuration raises ValueError before any thread starts.
        store: results store every run is written to (None: not stored).
        owner: who started it (the app passes its session id), to tell "your run" from another tab's.
        dataset_label: how to name the dataset to people (default: ``configs[0].dataset``).
        runner: the adaptation function (``adapt``; tests may pass a stand-in with its signature).
    """

    def __init__(
        self,
        configs: Sequence[AdaptConfig],
        *,
        store: ResultsStore | None = None,
        owner: str = "",
        dataset_label: str | None = None,
        runner: Runner = adapt,
    ):
        if not configs:
            raise ValueError("choose at least one mode to train")
        for config in configs:
            config.validate()
        if len({(c.backbone, c.dataset) for c in configs}) != 1:
            raise ValueError("all runs of one job use the same backbone and dataset")
        self.configs = list(configs)
        self.store = store
        self.owner = owner
        self.job_id = uuid.uuid4().hex[:12]
        self.dataset_label = dataset_label or configs[0].dataset
        self._runner = runner
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._modes = [ModeProgress(c.mode) for c in configs]
        self._error = ""
        self._started: float | None = None
        self._ended: float | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ control
    def start(self) -> None:
        """Start the worker thread (once)."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("this job was already started")
            self._started = time.monotonic()
            self._thread = threading.Thread(target=self._work, name=f"tinytl-job-{self.job_id}", daemon=True)
        self._thread.start()

    def may_stop(self, requester: str | None) -> bool:
        """Whether ``requester`` may stop this job: the session that started it (its ``owner``), or the
        process itself (``None``: shutdown, tests, an admin action)."""
        return requester is None or not self.owner or requester == self.owner

    def cancel(self, requester: str | None = None) -> None:
        """Ask the worker to stop at its next step; the current run is stored as cancelled.

        ``requester`` is who asks (the app passes its session id); only the job's ``owner`` may stop it
        (``None``: the process itself). Anyone else gets :class:`NotYourJobError` and the job goes on.
        """
        if not self.may_stop(requester):
            raise NotYourJobError("this run was started in another session; only that session can stop it")
        self._cancel.set()

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the worker has finished every mode."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the worker to end; True when it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def snapshot(self) -> JobSnapshot:
        """A consistent deep copy of the progress so far."""
        with self._lock:
            now = self._ended if self._ended is not None else time.monotonic()
            return JobSnapshot(
                job_id=self.job_id,
                owner=self.owner,
                backbone=self.configs[0].backbone,
                dataset_label=self.dataset_label,
                running=self.running,
                cancelling=self._cancel.is_set(),
                elapsed_s=0.0 if self._started is None else now - self._started,
                modes=tuple(copy.deepcopy(self._modes)),
                error=self._error,
            )

    # ------------------------------------------------------------------------------------------- worker
    def _progress(self, index: int) -> Callable[[ProgressEvent], None]:
        def on_event(event: ProgressEvent) -> None:
            with self._lock:
                m = self._modes[index]
                if isinstance(event, PhaseEvent):
                    m.phase = event.message
                    if event.phase != "eval":
                        m.training_phase = event.message
                elif isinstance(event, StepEvent):
                    m.total_steps = event.total_steps
                    m.step = event.step
                    m.phase = m.training_phase  # a step means no evaluation is going on
                    m.steps.append(asdict(event))
                elif isinstance(event, EvalEvent):
                    m.total_steps = event.total_steps
                    m.step = max(m.step, event.step)
                    m.phase = "" if event.final else m.training_phase  # the evaluation has ended
                    m.evals.append(asdict(event))

        return on_event

    def _set(self, index: int, **values: Any) -> None:
        with self._lock:
            for key, value in values.items():
                setattr(self._modes[index], key, value)

    def _work(self) -> None:
        try:
            for i, config in enumerate(self.configs):
                if self._cancel.is_set():
                    self._set(i, status=RunStatus.CANCELLED, message="not started: the job was stopped")
                    continue
                self._set(i, status=RunStatus.RUNNING, phase="starting")
                try:
                    result = self._runner(
                        config, progress=self._progress(i), cancel=self._cancel, store=self.store
                    )
                except DatasetUnavailable as exc:  # no mode can run without the data: stop here
                    self._fail_rest(i, str(exc))
                    return
                except Exception as exc:  # shown in the page, not as a traceback
                    log.exception("adaptation of %s in mode %s failed", config.backbone, config.mode)
                    self._set(i, status=RunStatus.FAILED, message=failed_message(exc), phase="")
                    continue
                self._set(
                    i,
                    status=result.status,
                    message=result.message,
                    result=result_summary(result),
                    total_steps=result.steps_planned,
                    step=result.steps_done,
                    phase="",
                )
        finally:
            with self._lock:
                self._ended = time.monotonic()

    def _fail_rest(self, index: int, message: str) -> None:
        with self._lock:
            self._error = message
            for m in self._modes[index:]:
                m.status, m.message, m.phase = RunStatus.FAILED, message, ""


class JobSlot:
    """The process-wide slot for the one running job, plus the last job (to show its results)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._job: TrainingJob | None = None

    def submit(self, job: TrainingJob) -> TrainingJob:
        """Start ``job`` unless another is running (then raise :class:`JobBusyError`)."""
        with self._lock:
            if self._job is not None and self._job.running:
                raise JobBusyError(self._job)
            self._job = job
            job.start()
        return job

    @property
    def job(self) -> TrainingJob | None:
        """The running job, or the last one that ran (None before the first)."""
        with self._lock:
            return self._job

    def busy(self) -> bool:
        """True while a job runs."""
        job = self.job
        return job is not None and job.running


JOBS = JobSlot()
"""The app's process-wide job slot."""
