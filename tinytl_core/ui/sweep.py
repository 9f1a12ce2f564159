"""Sweeps in the app (the Sweep page) and the seed-grouped view of Compare runs, without Streamlit.

A sweep started from the app is a set of jobs of the persistent queue, tagged with the sweep's id and
owned by the session: the app's worker processes train them (never the app's own process), the page polls
the queue, and the sweep goes on when the tab closes or the app restarts. Configurations already finished
in the results store are skipped, as on the command line (:mod:`tinytl_core.sweeps`).

With a Ray address the page starts instead the command line's sweep driver (``python -m tinytl_core sweep
--ray ADDRESS --status-file ...``) as a detached process: it runs each configuration as a Ray task, stores
the runs, and keeps a status file (:mod:`tinytl_core.sweeps.driver`) that the page follows
(:func:`start_ray_sweep`, :func:`ray_sweep_status`, :func:`cancel_ray_sweep`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

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
from tinytl_core.sweeps.driver import DriverState, DriverStatus, read_status, write_status
from tinytl_core.sweeps.executors import RAY_ADDRESS
from tinytl_core.sweeps.grid import not_applicable, parse_resolutions, setting_args
from tinytl_core.ui.errors import public_text
from tinytl_core.ui.runs import dataset_label

MAX_SWEEP = 200
"""Most configurations one sweep from the app may queue (a classroom server is shared)."""


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
        resolutions=parse_resolutions(resolutions, "resolutions"),
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
    not_applicable: int = 0

    def message(self) -> str:
        text = f"{self.total} configuration(s): {self.queued} queued"
        if self.adopted:
            text += f", {self.adopted} already queued or running"
        if self.skipped:
            text += f", {self.skipped} already finished (skipped)"
        if self.not_applicable:
            text += f", {self.not_applicable} not applicable to their backbone (not queued)"
        return text + "."


def start_sweep(grid: SweepGrid, queue: JobQueue, store: ResultsStore, *, owner: str) -> SweepStart:
    """Expand ``grid`` (every configuration checked first), skip what already finished in ``store`` and
    queue the rest as one sweep owned by ``owner``. ``ValueError`` for a bad grid or one over
    :data:`MAX_SWEEP`."""
    configs = grid.expand()
    if len(configs) > MAX_SWEEP:
        raise ValueError(f"{len(configs)} configurations is more than {MAX_SWEEP}: make the grid smaller")
    done = finished_keys(store, (config_key(c) for c in configs))
    skip = not_applicable(configs)  # a job for them would only fail in a worker
    todo = [c for c in configs if config_key(c) not in done and config_key(c) not in skip]
    name = sweep_id(configs)
    if not todo:
        return SweepStart(name, len(configs), 0, 0, len(done), len(skip))
    before = {j.id for j in queue.list_jobs(sweep=name, states=[JobState.QUEUED, JobState.RUNNING])}
    _, jobs, _ = QueueExecutor(queue.path, 0, sweep=name, owner=owner).submit(todo)
    adopted = len(set(jobs) & before)
    return SweepStart(name, len(configs), len(jobs) - adopted, adopted, len(done), len(skip))


@dataclass
class SweepStatus:
    """A sweep's jobs as they stand: counts by state, the fraction ended, one row per job."""

    sweep: str
    jobs: list[Job] = field(default_factory=list)
    owner: str | None = None  # the session looking: whose jobs it may cancel
    watched: frozenset[int] = frozenset()  # ids of another session's jobs the looking session waits for

    def count(self, *states: JobState) -> int:
        return sum(1 for j in self.jobs if j.state in states)

    @property
    def cancellable(self) -> int:
        """Jobs not ended that :attr:`owner` queued (the only ones its Cancel stops)."""
        return sum(1 for j in self.jobs if not j.ended and j.owner == self.owner)

    @property
    def others_active(self) -> int:
        """Jobs not ended that another session queued and the looking one waits for too (the same
        configurations, trained once for both: they become its own if that session cancels them)."""
        return sum(1 for j in self.jobs if not j.ended and j.id in self.watched)

    @property
    def handed_over(self) -> int:
        """Jobs not ended that the looking session no longer owns nor waits for: it cancelled them while
        another session waited for them, so they go on for that one."""
        return sum(1 for j in self.jobs if not j.ended and j.owner != self.owner and j.id not in self.watched)

    def _queued_by(self, job: Job) -> str:
        if job.owner == self.owner:
            return "you"
        if job.id in self.watched or job.ended:
            return "another session"
        return "another session (handed over)"

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
                    "dataset": dataset_label(job.label or c.dataset),  # jobs queued before labels were names
                    "px": c.resolution or "own",  # the backbone's own size, not a blank
                    "seed": c.seed,
                    "state": str(job.run_status or job.state) if job.ended else str(job.state),
                    "step": f"{job.step} / {job.total_steps or c.steps}",
                    "val acc %": None if acc is None else round(100 * acc, 1),
                    "run": job.run_id,
                    "queued by": self._queued_by(job),
                    "message": public_text(job.error) or None,
                }
            )
        return pd.DataFrame(rows)


def sweep_status(queue: JobQueue, sweep: str, owner: str | None = None) -> SweepStatus:
    """The jobs of ``sweep``, in queue order, seen by ``owner`` (which of them it may cancel, and which of
    another session's it waits for)."""
    jobs = queue.list_jobs(sweep=sweep)
    watched = frozenset(queue.watched_by(owner)) if owner is not None else frozenset()
    return SweepStatus(sweep, jobs, owner, watched)


@dataclass(frozen=True)
class SweepCancel:
    """What cancelling a sweep did: ``stopped`` jobs asked to stop, ``handed_over`` jobs another session
    waits for too (they go on, now that session's), ``withdrawn`` jobs of another session this one no
    longer waits for."""

    stopped: int
    handed_over: int = 0
    withdrawn: int = 0

    def message(self) -> str:
        """One line for the page."""
        text = f"Cancelled {self.stopped} job(s); a running one stops within a step or two."
        if self.handed_over:
            text += f" {self.handed_over} go(es) on: another session waits for the same run."
        if self.withdrawn:
            text += f" {self.withdrawn} queued by another session go(es) on for it."
        return text


def cancel_sweep(queue: JobQueue, sweep: str, owner: str) -> SweepCancel:
    """Cancel ``owner``'s jobs of ``sweep`` that have not ended (a running one stops within a step or
    two). A job another session also waits for is handed over to it instead; a job of another session that
    ``owner`` waited for goes on without it. Jobs nobody here asked for are left alone."""
    stopped = handed = withdrawn = 0
    watched = queue.watched_by(owner)  # one query, not one per job
    for job in queue.list_jobs(sweep=sweep, states=[JobState.QUEUED, JobState.RUNNING]):
        mine = job.owner == owner
        if not mine and job.id not in watched:
            continue
        try:
            after = queue.cancel(job.id, owner)
        except (KeyError, NotYourJobError):
            continue
        if not mine:
            withdrawn += 1
        elif after.owner != owner:
            handed += 1
        else:
            stopped += 1
    return SweepCancel(stopped, handed, withdrawn)


# ------------------------------------------------------------------------------- sweeps on Ray
RAY_NOT_INSTALLED = (
    "Ray is not installed on this server: whoever runs the app can `pip install 'tinytl-lab[ray]'`. Leave "
    "the Ray address empty to train the sweep on this server's worker processes."
)
LOCAL_RAY = "local"
"""The Ray address that starts a Ray instance on this server for the sweep (``sweep --ray`` alone)."""
_HOST_PORT = RAY_ADDRESS  # one definition: the CLI's --ray takes the same
REACH_TIMEOUT_S = 3.0
RAY_ADDRESSES_ENV = "TINYTL_RAY_ADDRESSES"
"""Environment variable: the other Ray clusters (``host:port`` or ``ray://host:port``, comma-separated)
the Sweep page may join, set by whoever runs the server. Unset: ``local`` and ``auto`` only -- a page
must not make the server connect to any address a visitor types (it would probe the server's network)."""
"""How long the page tries to open a connection to a Ray address before saying it cannot reach it."""
_DRIVERS: dict[int, subprocess.Popen] = {}  # drivers this process started: reaped when they end


def allowed_ray_addresses(env: str | None = None) -> tuple[str, ...]:
    """The other clusters the Sweep page may join (:data:`RAY_ADDRESSES_ENV`; ``env`` None reads it), each
    as :func:`parse_ray_address` writes it; an entry that is not an address is left out."""
    text = os.environ.get(RAY_ADDRESSES_ENV, "") if env is None else env
    return tuple(a.strip() for a in text.split(",") if _HOST_PORT.match(a.strip()))


def parse_ray_address(text: str | None, allowed: Sequence[str] | None = None) -> str | None:
    """The Sweep page's Ray address: empty -> None (this server's worker processes); ``local`` starts a Ray
    instance on this server for the sweep; ``auto`` joins the Ray cluster running on this machine (or
    starts one); ``host:port`` or ``ray://host:port`` joins that cluster if it is one of ``allowed``
    (None: :func:`allowed_ray_addresses`). ``ValueError`` otherwise."""
    value = (text or "").strip()
    if not value:
        return None
    if value.lower() in ("auto", LOCAL_RAY):
        return value.lower()
    match = _HOST_PORT.match(value)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ValueError(
            f"Ray address {value!r}: give 'auto', 'local', host:port or ray://host:port (e.g. "
            "10.0.0.5:6379), or leave it empty for this server's workers"
        )
    allowed = allowed_ray_addresses() if allowed is None else tuple(allowed)
    if value not in allowed:
        others = f"it may join {', '.join(allowed)}" if allowed else "it allows no other cluster"
        raise ValueError(
            f"Ray address {value!r}: this server's pages start Ray here ('local', 'auto'); {others}. "
            f"Whoever runs the server can allow a cluster in {RAY_ADDRESSES_ENV}."
        )
    return value


def ray_installed() -> bool:
    """True when the ``ray`` package can be imported here (checked without importing it: that is slow)."""
    return importlib.util.find_spec("ray") is not None


def check_reachable(address: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """Open (and close) a TCP connection to a ``host:port`` Ray address; ``ValueError`` saying so when it
    cannot, at once instead of after Ray's own minute of retries. ``auto`` / ``local`` are not checked."""
    match = _HOST_PORT.match(address)
    if match is None:
        return
    try:
        with socket.create_connection((match["host"], int(match["port"])), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or ("timed out" if isinstance(exc, TimeoutError) else type(exc).__name__)
        raise ValueError(
            f"cannot reach the Ray cluster at {address} ({reason.lower()}): check the address and that the "
            "cluster is running, or leave the Ray address empty for this server's workers"
        ) from None


def driver_status_path(db_path: str | Path, sweep: str) -> Path:
    """Where the driver of ``sweep`` keeps its status (next to the results database)."""
    return Path(db_path).parent / "sweep-drivers" / f"{sweep}.json"


def sweep_command(
    grid: SweepGrid, address: str, *, db_path: str | Path, status_path: str | Path, owner: str
) -> list[str]:
    """The ``python -m tinytl_core sweep`` command line that runs ``grid`` on Ray at ``address`` (its
    base configuration's settings that differ from the defaults included), storing into ``db_path``."""
    command = [sys.executable, "-m", "tinytl_core", "sweep"]
    for flag, values in (
        ("--backbones", grid.backbones),
        ("--modes", grid.modes),
        ("--datasets", grid.datasets),
        ("--resolutions", ["own" if r is None else r for r in grid.resolutions]),
        ("--seeds", grid.seeds),
        ("--steps", grid.steps),
    ):
        command += [flag, ",".join(str(v) for v in values)]
    command += setting_args(grid.base)
    return command + [
        "--ray",
        address,
        "--db",
        str(db_path),
        "--status-file",
        str(status_path),
        "--owner",
        owner,
    ]


@dataclass(frozen=True)
class RaySweepStart:
    """What starting a sweep on Ray did: ``started`` a driver (False: every configuration had finished
    already, or this sweep's driver was still running and is followed instead)."""

    sweep: str
    total: int
    skipped: int
    started: bool
    where: str

    def message(self) -> str:
        if self.total == self.skipped:
            return f"All {self.total} configuration(s) already finished: nothing to run."
        text = f"{self.total} configuration(s)"
        if self.skipped:
            text += f", {self.skipped} already finished (skipped)"
        if not self.started:
            return text + f": this sweep is already running on {self.where}; following it."
        return text + f": started on {self.where}."


def start_ray_sweep(
    grid: SweepGrid, address: str, store: ResultsStore, *, owner: str, check: bool = True
) -> RaySweepStart:
    """Start ``grid`` on Ray at ``address`` (see :func:`parse_ray_address`) as a detached driver process
    storing into ``store``; follow it with :func:`ray_sweep_status`. ``ValueError`` with a sentence for
    people when the grid is bad or over :data:`MAX_SWEEP`, Ray is not installed, or (``check``) the
    address does not answer. A driver already running this sweep is followed, not started twice."""
    configs = grid.expand()
    if len(configs) > MAX_SWEEP:
        raise ValueError(f"{len(configs)} configurations is more than {MAX_SWEEP}: make the grid smaller")
    if not ray_installed():
        raise ValueError(RAY_NOT_INSTALLED)
    if check:
        check_reachable(address)
    name = sweep_id(configs)
    where = f"Ray ({'a local instance' if address == LOCAL_RAY else address})"
    done = finished_keys(store, (config_key(c) for c in configs))
    if len(done) == len(configs):
        return RaySweepStart(name, len(configs), len(done), False, where)
    path = driver_status_path(store.path, name)
    current = ray_sweep_status(path)
    if current is not None and current.active:
        return RaySweepStart(name, len(configs), len(done), False, current.where or where)
    command = sweep_command(grid, address, db_path=store.path, status_path=path, owner=owner)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".log"), "ab") as log:  # the driver's output, for whoever runs the server
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: it outlives the script run and Ctrl-C of the app
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        )
    _DRIVERS[process.pid] = process
    status = read_status(path)
    if status is None or status.pid != process.pid:  # the driver has not written yet: say it is starting
        write_status(
            path, DriverStatus(name, DriverState.STARTING, process.pid, where, owner, started_at=time.time())
        )
    return RaySweepStart(name, len(configs), len(done), True, where)


def ray_sweep_status(path: str | Path) -> DriverStatus | None:
    """The status of the sweep driver keeping ``path`` (None when there is none); a driver that died
    without a word reads as failed."""
    for pid, process in list(_DRIVERS.items()):
        if process.poll() is not None:  # ended: reap it, so it does not linger as a zombie
            del _DRIVERS[pid]
    status = read_status(path)
    # The driver's reason may quote any library's error: shown without server paths.
    return None if status is None else replace(status, message=public_text(status.message))


def cancel_ray_sweep(path: str | Path, owner: str) -> bool:
    """Stop the sweep driver keeping ``path`` as Ctrl-C would (its Ray tasks are cancelled, the runs
    stored so far stay; starting the same sweep again resumes). Only ``owner``, the session that started
    it, may; :class:`~tinytl_core.jobs.NotYourJobError` for anyone else. False when it is not running."""
    status = ray_sweep_status(path)
    if status is None or not status.active:
        return False
    if status.owner is not None and status.owner != owner:
        raise NotYourJobError("this sweep was started by another session; only that session can cancel it")
    # Noted first: a driver still starting up may end at once, before it can say why.
    write_status(path, replace(status, stop_requested=True))
    with contextlib.suppress(ProcessLookupError):
        os.kill(status.pid, signal.SIGINT)
    return True


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
