"""The sweep driver: skip what already finished, run the rest on an executor, store each run as it
comes back, report progress over the grid. The driver alone writes the results store."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tinytl_core.adapt import AdaptConfig, versions
from tinytl_core.quantities import RunStatus
from tinytl_core.reference import write_reference
from tinytl_core.results import ResultsStore
from tinytl_core.sweeps.executors import InlineExecutor, OutcomeKind, SweepExecutor, TaskOutcome
from tinytl_core.sweeps.grid import config_key, finished_keys


@dataclass
class SweepProgress:
    """Where a sweep stands over its grid. ``total`` configurations, of which ``already_finished`` were
    in the store before it started (skipped); ``done`` of the ``to_run`` others have come back, counted
    by what became of them."""

    total: int
    already_finished: int
    to_run: int
    done: int = 0
    finished: int = 0
    failed: int = 0  # failed or diverged runs, and configurations that could not start
    cancelled: int = 0
    not_applicable: int = 0
    last: str = ""
    elapsed_s: float = 0.0

    @property
    def fraction(self) -> float:
        """Share of the configurations to run that have come back (1.0 when none had to run)."""
        return self.done / self.to_run if self.to_run else 1.0

    def line(self) -> str:
        """One line: ``12 / 36 done (10 finished, 1 failed, 1 not applicable), 4 skipped as finished``."""
        parts = [f"{self.finished} finished"]
        for n, what in (
            (self.failed, "failed"),
            (self.cancelled, "cancelled"),
            (self.not_applicable, "not applicable"),
        ):
            if n:
                parts.append(f"{n} {what}")
        text = f"{self.done} / {self.to_run} done ({', '.join(parts)})"
        if self.already_finished:
            text += f", {self.already_finished} already finished (skipped)"
        return text


ProgressCallback = Callable[[SweepProgress], None]


@dataclass
class SweepReport:
    """What a sweep did. ``skipped``: key -> id of the run already finished before; ``run_ids``: key -> id
    of the run this sweep stored; ``interrupted`` when it stopped (cancel, Ctrl-C) before the end."""

    configs: list[AdaptConfig]
    progress: SweepProgress
    skipped: dict[str, int] = field(default_factory=dict)
    run_ids: dict[str, int] = field(default_factory=dict)
    outcomes: list[TaskOutcome] = field(default_factory=list)
    interrupted: bool = False

    @property
    def remaining(self) -> int:
        """Configurations that still have no finished run (a rerun of the sweep runs them)."""
        return len(self.configs) - len(self.skipped) - self.progress.finished

    def finished_run_ids(self, store: ResultsStore) -> list[int]:
        """Ids of the grid's finished runs, in grid order (those from before this sweep included)."""
        keys = finished_keys(store, (config_key(c) for c in self.configs))
        return [keys[k] for k in (config_key(c) for c in self.configs) if k in keys]


def run_sweep(
    configs: Sequence[AdaptConfig],
    *,
    store: ResultsStore,
    executor: SweepExecutor | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> SweepReport:
    """Run every configuration that has no finished run in ``store`` on ``executor`` (default: in this
    process), store each run as it comes back and call ``progress`` after each (and once at the start).

    ``cancel`` (set from any thread) stops the sweep; Ctrl-C does too. Either way the report says
    ``interrupted`` and what is stored stays: running the same sweep again skips the finished ones.
    """
    configs = list(configs)
    for config in configs:
        config.validate()
    cancel = cancel or threading.Event()
    executor = executor or InlineExecutor()
    t0 = time.perf_counter()
    keys = [config_key(c) for c in configs]
    skipped = finished_keys(store, keys)
    todo = [c for c, k in zip(configs, keys) if k not in skipped]
    state = SweepProgress(total=len(configs), already_finished=len(skipped), to_run=len(todo))
    report = SweepReport(configs=configs, progress=state, skipped=skipped)
    emit = progress or (lambda p: None)
    by_key = dict(zip(keys, configs))
    emit(state)

    def on_outcome(outcome: TaskOutcome) -> None:
        report.outcomes.append(outcome)
        config = by_key.get(outcome.key)
        name = (
            f"{config.backbone} {config.mode} {config.dataset} seed {config.seed}" if config else outcome.key
        )
        run = None
        if outcome.record is not None:
            run = outcome.record
            report.run_ids[outcome.key] = store.save_run(outcome.record)
        elif outcome.run_id is not None:  # a queue worker stored it
            run = store.get_run(outcome.run_id)
            report.run_ids[outcome.key] = outcome.run_id
        if run is not None:
            status = RunStatus(run["status"])
            if status is RunStatus.FINISHED:
                state.finished += 1
            elif status is RunStatus.CANCELLED:
                state.cancelled += 1
            else:
                state.failed += 1
            acc = run.get("final_val_acc")
            state.last = f"{name}: {status}" + (f", val acc {100 * acc:.1f}%" if acc is not None else "")
        elif outcome.kind is OutcomeKind.NOT_APPLICABLE:
            state.not_applicable += 1
            state.last = f"{name}: not applicable ({outcome.message})"
        elif outcome.kind is OutcomeKind.CANCELLED:
            state.cancelled += 1
            state.last = f"{name}: cancelled before it started"
        else:
            state.failed += 1
            state.last = f"{name}: could not run ({outcome.message})"
        state.done += 1
        state.elapsed_s = time.perf_counter() - t0
        emit(state)

    try:
        executor.run(todo, on_outcome, cancel)
    except KeyboardInterrupt:
        report.interrupted = True
    report.interrupted = report.interrupted or state.done < state.to_run
    state.elapsed_s = time.perf_counter() - t0
    return report


def export_reference(
    report: SweepReport,
    store: ResultsStore,
    path: str | Path,
    *,
    command: str,
    label: str = "Reference sweep",
    description: str = "",
) -> Path:
    """Write the grid's finished runs (one per configuration, the newest) as a reference set
    (:func:`tinytl_core.reference.write_reference`) at ``path``."""
    ids = report.finished_run_ids(store)
    return write_reference(
        [store.get_run(i) for i in ids],
        path,
        label=label,
        command=command,
        description=description,
        versions=versions(),
    )
