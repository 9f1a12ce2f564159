"""Sweeps in the app (the Sweep page) and the seed-grouped view of Compare runs, without Streamlit.

A sweep started from the app is a set of jobs of the persistent queue, tagged with the sweep's id and
owned by the session: the app's worker processes train them (never the app's own process), the page polls
the queue, and the sweep goes on when the tab closes or the app restarts. Configurations already finished
in the results store are skipped, as on the command line (:mod:`tinytl_core.sweeps`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from tinytl_core.adapt import AdaptConfig
from tinytl_core.jobs import Job, JobQueue, JobState, NotYourJobError
from tinytl_core.reference import (
    PAPER_BACKBONE,
    PAPER_MEMORY_NOTE,
    PAPER_SOURCE,
    PAPER_TABLE2,
    ReferenceSet,
    load_reference_set,
)
from tinytl_core.results import ResultsStore
from tinytl_core.sweeps import QueueExecutor, SweepGrid, config_key, finished_keys, parse_list, sweep_id

MAX_SWEEP = 200
"""Most configurations one sweep from the app may queue (a classroom server is shared)."""


def parse_resolutions(text: str) -> list[int | None]:
    """``"own, 32, 64"`` -> ``[None, 32, 64]`` (``own`` or 0: the backbone's own); ``ValueError`` says which
    item is not a size."""
    out: list[int | None] = []
    for item in parse_list(text, "resolutions"):
        if item.lower() in ("own", "0"):
            value = None
        elif item.isdigit():
            value = int(item)
        else:
            raise ValueError(f"resolutions: {item!r} is not a size in px (or 'own')")
        if value not in out:
            out.append(value)
    return out


def build_grid(
    *,
    backbones: Sequence[str],
    modes: Sequence[str],
    datasets: Sequence[str],
    resolutions: str,
    seeds: str,
    steps: int,
    base: AdaptConfig,
) -> SweepGrid:
    """The grid of the Sweep page's form (text fields parsed; ``ValueError`` with the field's name)."""
    return SweepGrid(
        backbones=list(backbones),
        modes=list(modes),
        datasets=list(datasets),
        resolutions=parse_resolutions(resolutions),
        seeds=parse_list(seeds, "seeds", int),
        steps=[int(steps)],
        base=base,
    )


@dataclass(frozen=True)
class SweepStart:
    """What starting a sweep did: ``queued`` new jobs, ``adopted`` jobs of the same sweep still waiting or
    running, ``skipped`` configurations already finished in the store."""

    sweep: str
    total: int
    queued: int
    adopted: int
    skipped: int

    def message(self) -> str:
        text = f"{self.total} configuration(s): {self.queued} queued"
        if self.adopted:
            text += f", {self.adopted} already queued or running"
        if self.skipped:
            text += f", {self.skipped} already finished (skipped)"
        return text + "."


def start_sweep(grid: SweepGrid, queue: JobQueue, store: ResultsStore, *, owner: str) -> SweepStart:
    """Expand ``grid`` (every configuration checked first), skip what already finished in ``store`` and
    queue the rest as one sweep owned by ``owner``. ``ValueError`` for a bad grid or one over
    :data:`MAX_SWEEP`."""
    configs = grid.expand()
    if len(configs) > MAX_SWEEP:
        raise ValueError(f"{len(configs)} configurations is more than {MAX_SWEEP}: make the grid smaller")
    done = finished_keys(store, (config_key(c) for c in configs))
    todo = [c for c in configs if config_key(c) not in done]
    name = sweep_id(configs)
    if not todo:
        return SweepStart(name, len(configs), 0, 0, len(done))
    before = {j.id for j in queue.list_jobs(sweep=name, states=[JobState.QUEUED, JobState.RUNNING])}
    _, jobs, _ = QueueExecutor(queue.path, 0, sweep=name, owner=owner).submit(todo)
    adopted = len(set(jobs) & before)
    return SweepStart(name, len(configs), len(jobs) - adopted, adopted, len(done))


@dataclass
class SweepStatus:
    """A sweep's jobs as they stand: counts by state, the fraction ended, one row per job."""

    sweep: str
    jobs: list[Job] = field(default_factory=list)

    def count(self, *states: JobState) -> int:
        return sum(1 for j in self.jobs if j.state in states)

    @property
    def active(self) -> bool:
        """True while a job is queued or running."""
        return self.count(JobState.QUEUED, JobState.RUNNING) > 0

    @property
    def fraction(self) -> float:
        """Share of the jobs that ended, running ones counted by their steps."""
        if not self.jobs:
            return 1.0
        return sum(j.fraction for j in self.jobs) / len(self.jobs)

    def line(self) -> str:
        """``12 / 36 ended: 10 finished, 1 failed, 1 cancelled; 2 running, 22 waiting``."""
        ended = self.count(JobState.FINISHED, JobState.FAILED, JobState.CANCELLED)
        parts = [
            f"{n} {what}"
            for n, what in (
                (self.count(JobState.FINISHED), "finished"),
                (self.count(JobState.FAILED), "failed"),
                (self.count(JobState.CANCELLED), "cancelled"),
            )
            if n
        ]
        text = f"{ended} / {len(self.jobs)} ended" + (f": {', '.join(parts)}" if parts else "")
        return text + f"; {self.count(JobState.RUNNING)} running, {self.count(JobState.QUEUED)} waiting"

    def frame(self) -> pd.DataFrame:
        """One row per job: mode, dataset, backbone, px, seed, state, step, val acc %, run id, message."""
        rows = []
        for job in self.jobs:
            c, result = job.config, job.result or {}
            acc = result.get("final_val_acc")
            rows.append(
                {
                    "job": job.id,
                    "backbone": c.backbone,
                    "mode": c.mode,
                    "dataset": job.label or c.dataset,
                    "px": c.resolution,
                    "seed": c.seed,
                    "state": str(job.run_status or job.state) if job.ended else str(job.state),
                    "step": f"{job.step} / {job.total_steps or c.steps}",
                    "val acc %": None if acc is None else round(100 * acc, 1),
                    "run": job.run_id,
                    "message": job.error,
                }
            )
        return pd.DataFrame(rows)


def sweep_status(queue: JobQueue, sweep: str) -> SweepStatus:
    """The jobs of ``sweep``, in queue order."""
    return SweepStatus(sweep, queue.list_jobs(sweep=sweep))


def cancel_sweep(queue: JobQueue, sweep: str, owner: str) -> int:
    """Cancel ``owner``'s jobs of ``sweep`` that have not ended; return how many were asked to stop (a
    running one stops within a step or two). Jobs of other owners are left alone."""
    n = 0
    for job in queue.list_jobs(sweep=sweep, owner=owner, states=[JobState.QUEUED, JobState.RUNNING]):
        try:
            queue.cancel(job.id, owner)
            n += 1
        except (KeyError, NotYourJobError):
            continue
    return n


# ------------------------------------------------------------- Compare runs: reference layers
def reference_set() -> ReferenceSet | None:
    """The bundled reference sweep (read once per process); None when the install lacks it or it does not
    read (a page then shows your runs only)."""
    try:
        return load_reference_set()
    except (OSError, ValueError):
        return None


def paper_frame(datasets: Iterable[str] | None = None) -> pd.DataFrame:
    """TinyTL's Table 2 points (all, or those of ``datasets``): method, mode, dataset (this project's
    name and the paper's title), resolution, memory MB (the paper's analytic figure), top-1 %."""
    wanted = None if datasets is None else set(datasets)
    rows = [
        {
            "method": p.method,
            "mode": p.mode,
            "backbone": PAPER_BACKBONE,
            "dataset": p.dataset,
            "dataset_title": p.dataset_title,
            "resolution": p.resolution,
            "memory_MB": p.memory_mb,
            "top1_pct": p.top1,
        }
        for p in PAPER_TABLE2
        if wanted is None or p.dataset in wanted
    ]
    return pd.DataFrame(rows)


PAPER_CAPTION = f"{PAPER_SOURCE}; {PAPER_MEMORY_NOTE}."
"""How the paper's layer is labelled."""
