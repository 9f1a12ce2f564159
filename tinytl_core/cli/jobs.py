"""``python -m tinytl_core jobs``: the job queue at a glance; prune the progress events of old jobs."""

from __future__ import annotations

import argparse

from tinytl_core import limits as L
from tinytl_core.cli.args import add_db_option, bounded
from tinytl_core.jobs import JobQueue, JobState
from tinytl_core.jobs.queue import DEFAULT_EVENTS_DAYS, ENV_EVENTS_DAYS, events_keep_days


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``jobs`` command."""
    p = sub.add_parser(
        "jobs",
        help="show the job queue (jobs by state, stored progress events); prune old progress events",
        description="Counts the queue's jobs by state and the progress events stored for them. Events of a "
        "job that ended and stored its run (whose history holds the same curves) are deleted after "
        f"{ENV_EVENTS_DAYS} days (default {DEFAULT_EVENTS_DAYS:g}); workers do it at most hourly, "
        "--prune-events does it now. Events of queued or running jobs, and of jobs without a stored run, "
        "are kept.",
    )
    add_db_option(p)
    p.add_argument("--prune-events", action="store_true", help="delete the events of old ended jobs now")
    p.add_argument(
        "--keep-days",
        type=bounded(L.DAYS),
        default=None,
        metavar="DAYS",
        help=f"with --prune-events: keep the events of jobs ended within DAYS (default: ${ENV_EVENTS_DAYS} "
        f"or {DEFAULT_EVENTS_DAYS:g}; 0 prunes every ended job with a stored run)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the queue's counts; with ``--prune-events``, prune first."""
    if args.keep_days is not None and not args.prune_events:
        raise ValueError("--keep-days goes with --prune-events")
    days = events_keep_days() if args.keep_days is None else args.keep_days
    queue = JobQueue(args.db)
    if args.prune_events:
        pruned = queue.prune_events(days)
        print(
            f"pruned {pruned.events} progress event(s) of {pruned.jobs} job(s) ended over {days:g} day(s) ago"
        )
    counts = queue.counts()
    print(f"job queue in {queue.path}: " + ", ".join(f"{counts[s]} {s.value}" for s in JobState))
    events, jobs = queue.prunable_events(days)
    print(
        f"{queue.event_count()} progress event(s) stored; {events} of {jobs} job(s) ended over {days:g} "
        "day(s) ago with a stored run can be pruned (--prune-events)"
    )
    return 0
