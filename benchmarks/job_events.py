"""What the job queue's event housekeeping costs: pruning old progress events, and thinning a long run's.

    python benchmarks/job_events.py [--jobs 500] [--events 200] [--steps 20000]

Fills a fresh queue database with ``--jobs`` ended jobs (half ended 10 days ago, half yesterday, all with a
stored run) of ``--events`` step events each, then times the read that decides whether a prune is due, the
prune itself (7-day retention) and the same read once nothing is left to prune (what a worker pays after
every job). Then reports a run of ``--steps`` steps as a worker does (50 steps per report) with the
per-job cap, and prints how many step events it keeps and the slowest report.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tinytl_core.adapt import AdaptConfig
from tinytl_core.jobs import JobQueue
from tinytl_core.jobs.queue import MAX_STEP_EVENTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20_000)
    args = parser.parse_args()
    queue = JobQueue(Path(tempfile.mkdtemp()) / "results.sqlite")
    config = AdaptConfig(mode="bias", dataset="shapes", steps=3)
    ids = queue.submit_many([config] * args.jobs)
    now = time.time()

    def fill(con) -> None:
        ended = [(i, now - (10 if i % 2 else 1) * 86400, i) for i in ids]
        con.executemany("UPDATE jobs SET state = 'finished', run_id = ?, ended_at = ? WHERE id = ?", ended)
        rows = [(i, now, json.dumps({"step": s, "loss": 0.1})) for i in ids for s in range(args.events)]
        con.executemany("INSERT INTO job_events (job_id, at, kind, data_json) VALUES (?, ?, 'step', ?)", rows)

    queue.store.execute(fill, write=True)
    print(f"{queue.event_count()} events of {args.jobs} ended jobs")
    t = time.perf_counter()
    due = queue.prunable_events(7)
    print(f"is a prune due? {due[0]} events of {due[1]} jobs: {1000 * (time.perf_counter() - t):.1f} ms")
    t = time.perf_counter()
    pruned = queue.prune_events(7)
    print(f"prune: {pruned.events} events of {pruned.jobs} jobs in {1000 * (time.perf_counter() - t):.1f} ms")
    t = time.perf_counter()
    queue.prune_events(7)
    print(f"prune with nothing due (a read): {1000 * (time.perf_counter() - t):.1f} ms")

    job = queue.submit(AdaptConfig(mode="bias", dataset="shapes", steps=args.steps))
    queue.claim("bench")
    slowest = 0.0
    for start in range(1, args.steps + 1, 50):
        batch = [
            (now, "step", {"step": s, "loss": 0.1}) for s in range(start, min(start + 50, args.steps + 1))
        ]
        t = time.perf_counter()
        queue.report(job, "bench", batch, step=batch[-1][2]["step"])
        slowest = max(slowest, time.perf_counter() - t)
    kept = len(queue.events(job, kinds=["step"]))
    print(
        f"a {args.steps}-step run keeps {kept} step events (cap {MAX_STEP_EVENTS}); "
        f"slowest report {1000 * slowest:.1f} ms"
    )


if __name__ == "__main__":
    main()
