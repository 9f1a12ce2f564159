"""A pool of local worker processes (``python -m tinytl_core worker``), as the app starts by default.

The pool starts ``size`` workers, each training with ``threads`` PyTorch threads, and watches them from a
thread: a worker that exits on its own (killed, out of memory, crashed) has its job marked failed with the
reason (:func:`exit_reason`) and is replaced. Workers die with the process that started the pool: they
get SIGTERM when it stops (:meth:`WorkerPool.stop`, also at interpreter exit), Linux sends them SIGTERM if
it is killed outright (``PR_SET_PDEATHSIG``), and each one also watches its parent. A worker stopped that
way puts its job back in the queue, so the next pool picks it up; one that does not stop in time is
killed and the pool puts its job back itself: stopping a pool never fails a job (on a shared queue it may
be another user's). When it starts, the pool prunes old progress events
(:meth:`~tinytl_core.jobs.queue.JobQueue.prune_events_if_due`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tinytl_core.jobs.queue import JobQueue, worker_name

log = logging.getLogger(__name__)

ENV_WORKERS = "TINYTL_WORKERS"
"""Environment variable: how many workers the app's pool starts (0: none, run ``worker`` by hand)."""
ENV_THREADS = "TINYTL_WORKER_THREADS"
"""Environment variable: PyTorch threads per worker (default: the cores shared out among the workers)."""
MONITOR_S = 0.5
"""How often the pool checks its workers."""
RECOVER_EVERY_S = 5.0
"""How often the pool fails the jobs of dead workers it did not start (:meth:`JobQueue.recover`)."""
STOP_TIMEOUT_S = 15.0
"""How long :meth:`WorkerPool.stop` waits for its workers to finish their current step and put their jobs
back in the queue before killing them."""
FAST_CRASH_S = 5.0
"""A worker that dies this soon after starting is restarted after a growing pause (up to a minute), not at
once, so a worker that cannot start does not spin."""


def cpu_count() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_pool_size(cores: int | None = None) -> int:
    """``$TINYTL_WORKERS`` when set, else half the cores (at least one): each worker trains with the
    cores' share, and the app's own process keeps some room for the pages."""
    env = os.environ.get(ENV_WORKERS, "").strip()
    if env:
        try:
            size = int(env)
        except ValueError:
            raise ValueError(f"{ENV_WORKERS} must be a whole number (0 or more), got {env!r}") from None
        if size < 0:
            raise ValueError(f"{ENV_WORKERS} must be 0 or more, got {size}")
        return size
    return max(1, (cores or cpu_count()) // 2)


def default_threads(size: int, cores: int | None = None) -> int:
    """``$TINYTL_WORKER_THREADS`` when set, else the cores but one shared out among ``size`` workers (at
    least one each): the one left keeps the app's pages responsive, and PyTorch threads that find their
    core busy spin and slow a step down many times over."""
    env = os.environ.get(ENV_THREADS, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"{ENV_THREADS} must be a whole number of threads (1 or more), got {env!r}")
        return int(env)
    return max(1, ((cores or cpu_count()) - 1) // max(1, size))


def exit_reason(returncode: int) -> str:
    """Why a worker process ended, in words, from its exit status (negative: the signal that killed it)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if -returncode == signal.SIGKILL:
            return (
                "the worker process was killed (SIGKILL) while training: the machine may have run out of "
                "memory (try a smaller batch or resolution), or someone stopped the process"
            )
        return f"the worker process was stopped by {name} while training"
    return f"the worker process exited (status {returncode}) while training"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM this process when the one that started it dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class _Slot:
    process: subprocess.Popen | None = None
    started: float = 0.0
    crashes: int = 0
    log_file: IO[bytes] | None = None


class WorkerPool:
    """``size`` local worker processes on the queue in ``db_path`` (see :func:`default_pool_size`).

    Use :meth:`start` / :meth:`stop` or ``with WorkerPool(2) as pool:``. Worker output goes to
    ``<database folder>/worker-logs/worker-<n>.log``.
    """

    def __init__(
        self,
        size: int | None = None,
        db_path: str | Path | None = None,
        *,
        threads: int | None = None,
        log_dir: str | Path | None = None,
        sweep: str | None = None,
    ):
        self.size = default_pool_size() if size is None else int(size)
        if self.size < 0:
            raise ValueError(f"a pool has 0 or more workers, got {self.size}")
        self.threads = threads or default_threads(self.size)
        self.sweep = sweep  # its workers train this sweep's jobs only (a sweep command's pool)
        self.queue = JobQueue(db_path)
        self.db_path = self.queue.path
        self.log_dir = Path(log_dir) if log_dir is not None else self.db_path.parent / "worker-logs"
        self._slots = [_Slot() for _ in range(self.size)]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self.restarts = 0
        """Workers that ended on their own and were replaced."""

    # ------------------------------------------------------------------------------------------ control
    def start(self) -> WorkerPool:
        """Start the workers and the thread that watches them (once)."""
        with self._lock:
            if self._monitor is not None:
                return self
            self.log_dir.mkdir(parents=True, exist_ok=True)
            # The watching thread starts the workers: Linux sends the parent-death signal when the *thread*
            # that started a child ends, and the caller's may be short-lived (a Streamlit script run).
            self._monitor = threading.Thread(target=self._watch, name="tinytl-worker-pool", daemon=True)
            self._monitor.start()
        atexit.register(self.stop)
        log.info("started %d worker(s) with %d thread(s) each on %s", self.size, self.threads, self.db_path)
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop every worker: SIGTERM asks each to stop after its current step and put its job back in the
        queue; a worker still running after ``timeout`` seconds is killed (SIGKILL) and its job is put back
        in the queue here, not failed (a job whose owner asked to cancel it ends cancelled)."""
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.join()
        with self._lock:
            processes = [s.process for s in self._slots if s.process is not None]
            for process in processes:
                if process.poll() is None:
                    process.terminate()
            deadline = time.monotonic() + timeout
            for process in processes:
                try:
                    process.wait(max(0.01, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                    log.warning("worker %s did not stop within %.0f s: killed", process.pid, timeout)
                # Whatever it still held (killed, or ended before it could requeue): back in the queue.
                requeued = self.queue.requeue_worker_jobs(worker_name(process.pid))
                if requeued:
                    log.info("job(s) %s of stopped worker %s are queued again", requeued, process.pid)
            for slot in self._slots:
                if slot.log_file is not None:
                    slot.log_file.close()
                    slot.log_file = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers alive now."""
        with self._lock:
            return [s.process.pid for s in self._slots if s.process is not None and s.process.poll() is None]

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._monitor is not None and not self._stopping.is_set()

    # ------------------------------------------------------------------------------------------ workers
    def _spawn(self, index: int) -> None:
        slot = self._slots[index]
        if slot.log_file is None:
            slot.log_file = open(self.log_dir / f"worker-{index}.log", "ab")  # noqa: SIM115 - kept open
        command = [
            sys.executable,
            "-m",
            "tinytl_core",
            "worker",
            "--db",
            str(self.db_path),
            "--threads",
            str(self.threads),
            "--parent-pid",
            str(os.getpid()),
            *(["--sweep", self.sweep] if self.sweep is not None else []),
        ]
        slot.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=slot.log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        slot.started = time.monotonic()

    def _watch(self) -> None:
        last_recover = 0.0
        with contextlib.suppress(Exception):  # a pool start is a natural, rare point to drop old events
            self.queue.prune_events_if_due()
        while True:
            try:
                with self._lock:
                    if self._stopping.is_set():
                        return
                    for index, slot in enumerate(self._slots):
                        self._check(index, slot)
                if time.monotonic() - last_recover > RECOVER_EVERY_S:
                    last_recover = time.monotonic()
                    self.queue.recover()
            except Exception:  # the watcher must outlive a locked database or a failed start
                log.exception("worker pool check failed; trying again")
            if self._stopping.wait(MONITOR_S):
                return

    def _check(self, index: int, slot: _Slot) -> None:
        process = slot.process
        if process is None or process.poll() is None:
            if process is None and time.monotonic() >= slot.started:
                self._spawn(index)  # a pause after fast crashes has passed
            return
        reason = exit_reason(process.returncode)
        failed = self.queue.fail_worker_jobs(worker_name(process.pid), reason)
        log.warning("worker %s ended (%s); job(s) failed: %s", process.pid, reason, failed or "none")
        lived = time.monotonic() - slot.started
        slot.crashes = slot.crashes + 1 if lived < FAST_CRASH_S else 0
        slot.process = None
        self.restarts += 1
        slot.started = time.monotonic() + (min(60.0, 2.0**slot.crashes) if slot.crashes else 0.0)
