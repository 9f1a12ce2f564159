"""``python -m tinytl_core worker``: train queued jobs (from the app, or sweeps) in this process."""

from __future__ import annotations

import argparse
import logging

from tinytl_core import limits as L
from tinytl_core.cli.args import add_db_option, bounded
from tinytl_core.jobs import JobQueue, JobState, run_worker


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``worker`` command."""
    p = sub.add_parser(
        "worker",
        help="run a worker: train the jobs queued in the results database, one at a time",
        description="Claims queued jobs (submitted by the app's Adapt page or a sweep), trains each and "
        "stores its run. Ctrl-C puts the job it is training back in the queue and stops. The app starts "
        "its own pool of these (TINYTL_WORKERS); run more by hand, on this machine, against the same "
        "database.",
    )
    add_db_option(p)
    p.add_argument(
        "--threads", type=bounded(L.THREADS), default=None, help="PyTorch threads for training (default: all)"
    )
    p.add_argument("--max-jobs", type=bounded(L.JOBS), default=None, help="stop after this many jobs")
    p.add_argument(
        "--idle-exit",
        type=bounded(L.SECONDS),
        default=None,
        metavar="SECONDS",
        help="stop after this long with nothing queued (default: wait for jobs until stopped)",
    )
    p.add_argument("--worker-id", default=None, help="name in the queue (default: host:pid)")
    p.add_argument(
        "--parent-pid", type=bounded(L.PROCESS_ID), default=None, help=argparse.SUPPRESS
    )  # the app's pool
    p.add_argument(
        "--sweep", default=None, help="train only this sweep's jobs (a sweep command's own workers)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Work until stopped (or ``--max-jobs`` / ``--idle-exit``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    queue = JobQueue(args.db)
    waiting = queue.counts()[JobState.QUEUED]
    print(f"worker on {queue.path}: {waiting} job(s) queued; Ctrl-C to stop", flush=True)
    done = run_worker(
        args.db,
        worker_id=args.worker_id,
        max_jobs=args.max_jobs,
        idle_exit_s=args.idle_exit,
        threads=args.threads,
        parent_pid=args.parent_pid,
        sweep=args.sweep,
    )
    print(f"worker stopped after {done} job(s)", flush=True)
    return 0
