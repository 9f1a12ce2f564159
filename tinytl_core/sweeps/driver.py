"""A sweep's driver as a process of its own, followed through a status file.

``python -m tinytl_core sweep ... --status-file PATH`` (the app's Sweep page starts it that way for a
sweep on Ray) writes a :class:`DriverStatus` to ``PATH`` as it goes: when it starts, after every
configuration that comes back, and when it ends -- finished, interrupted (Ctrl-C, or SIGINT from the page's
Cancel) or failed with the reason (Ray not reachable, ...). Each write replaces the file atomically, so a
reader never sees half of one. :func:`read_status` also notices a driver that died without saying so.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path

from tinytl_core.sweeps.runner import SweepProgress


class DriverState(str, Enum):
    """Where a sweep's driver process stands."""

    STARTING = "starting"  # started; connecting to Ray, checking the grid
    RUNNING = "running"
    FINISHED = "finished"  # every configuration came back (some may have failed)
    INTERRUPTED = "interrupted"  # stopped early: run the same sweep again to resume
    FAILED = "failed"  # could not run: ``message`` says why

    @property
    def active(self) -> bool:
        """True while the driver is starting or running."""
        return self in (DriverState.STARTING, DriverState.RUNNING)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class DriverStatus:
    """A sweep driver's last word: its ``state``, its ``pid``, where it runs (``where``), the session or
    user that started it (``owner``), its progress over the grid and a ``message`` (why it failed or
    stopped). Times are Unix seconds."""

    sweep: str
    state: DriverState
    pid: int
    where: str = ""
    owner: str | None = None
    progress: SweepProgress = field(default_factory=lambda: SweepProgress(0, 0, 0))
    message: str = ""
    started_at: float = 0.0
    updated_at: float = 0.0
    stop_requested: bool = False  # someone asked it to stop (SIGINT); if it then ends silently, that is why

    @property
    def active(self) -> bool:
        """True while the driver is starting or running."""
        return self.state.active

    @property
    def fraction(self) -> float:
        """Share of the configurations to run that came back (0 until the driver has started)."""
        if self.state is DriverState.STARTING:
            return 0.0
        return min(1.0, self.progress.fraction)

    def line(self) -> str:
        """One line for people: the state, then the progress over the grid."""
        if self.state is DriverState.STARTING:
            return f"starting on {self.where}" if self.where else "starting"
        return f"{self.state}: {self.progress.line()}"

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DriverStatus:
        """The inverse of :meth:`to_dict` (``ValueError`` / ``TypeError`` for something else)."""
        values = dict(data)
        values["state"] = DriverState(values["state"])
        values["progress"] = SweepProgress(
            **values.get("progress") or {"total": 0, "already_finished": 0, "to_run": 0}
        )
        return cls(**values)


def write_status(path: str | Path, status: DriverStatus) -> None:
    """Replace the status file at ``path`` with ``status`` (atomically; ``updated_at`` set to now)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(replace(status, updated_at=time.time()).to_dict()), encoding="utf-8")
    tmp.replace(path)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (ended, not yet reaped by its parent) is gone for our purposes
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


DIED = "the sweep's driver process ended without a word (killed, or the server stopped)"
"""What :func:`read_status` says of an active driver whose process is gone."""
STOPPED = "stopped on request: start the same sweep again to resume (finished configurations are skipped)"
"""What :func:`read_status` says of a driver asked to stop that ended before it could say so (e.g. still
starting up)."""


def read_status(path: str | Path) -> DriverStatus | None:
    """The status at ``path``; None when there is none (or it does not read). An active status whose
    process is gone reads as failed with :data:`DIED` (interrupted with :data:`STOPPED` when it was asked
    to stop): what is stored stays, rerunning resumes."""
    try:
        status = DriverStatus.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if status.active and not _alive(status.pid):
        if status.stop_requested:
            return replace(status, state=DriverState.INTERRUPTED, message=STOPPED)
        return replace(status, state=DriverState.FAILED, message=DIED)
    return status


class StatusWriter:
    """A :func:`~tinytl_core.sweeps.runner.run_sweep` progress callback that keeps the status file at
    ``path`` up to date; :meth:`end` writes the last word."""

    def __init__(self, path: str | Path, *, sweep: str = "", where: str = "", owner: str | None = None):
        self.path = Path(path)
        self.status = DriverStatus(
            sweep, DriverState.STARTING, os.getpid(), where=where, owner=owner, started_at=time.time()
        )
        write_status(self.path, self.status)

    def describe(self, sweep: str, where: str) -> None:
        """Name the sweep and where it runs, once the grid is known."""
        self.status = replace(self.status, sweep=sweep, where=where)
        write_status(self.path, self.status)

    def __call__(self, progress: SweepProgress) -> None:
        self.status = replace(self.status, state=DriverState.RUNNING, progress=replace(progress))
        write_status(self.path, self.status)

    def end(self, state: DriverState, message: str = "", progress: SweepProgress | None = None) -> None:
        """Write the final ``state`` (finished, interrupted, failed) with ``message``."""
        progress = replace(progress) if progress is not None else self.status.progress
        self.status = replace(self.status, state=state, message=message, progress=progress)
        write_status(self.path, self.status)
