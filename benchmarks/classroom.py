"""A classroom on one server (issue 13): ``python benchmarks/classroom.py``.

Starts ``streamlit run app.py`` headless (its own worker pool, ``TINYTL_WORKERS``) on a temporary
``TINYTL_HOME``, drives Debian's Chromium with Playwright, and prints two comparisons beside their targets:

- **(a) render under load**: a new browser session opening the Adapt page until its heading and the queue
  line are on screen, and Compare runs until its table is, with the server idle and then with its 2 workers
  training while 30 submitters (threads, through the library) queue a job each at the same moment. Median
  of ``--repeat`` visits each; target: under load within 2x of idle.
- **(b) training throughput with viewers**: a server with one worker trains 5 jobs (demo backbone, the
  Adapt page's defaults, mode bias, ``--steps`` steps); first with 5 real browser sessions that each
  submitted one of them through the Adapt page's form and watch it (live curves, progress, place in line),
  then the same 5 configurations again with no browser open. Throughput: training images per second of the
  runs (the mean of their ``images_per_s``) and images over the wall time from the first start to the last
  end. Target: with viewers at least 90% of without. Also the CPU the app's server process itself (its
  workers not counted) used per second in each phase: what the viewers take from the machine.

The browsers stand for the students' laptops: on a machine with 2 or more cores they run on the last core
and the server with its workers on the others (``--browser-cpus``; ``all`` to share every core), so that
what (b) measures is what the viewers cost the *server* (its page reruns and store reads), not what five
Chromium tabs drawing charts cost the machine they happen to share.

Timings vary with the machine (and with other work on it); README keeps the table measured on the dev
container.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _server import start_app, stop_app, wait_healthy
from app_speed import CHROMIUM_ARGS, TIMEOUT_MS, median, timed_visit

HEADING = '[data-testid="stMain"] h1, [data-testid="stMain"] h2'
TABLE = '[data-testid="stMain"] [data-testid="stDataFrame"]'
QUEUE_LINE = "text=Queue:"


def start_server(home: Path, workers: int) -> tuple[subprocess.Popen, str]:
    """``streamlit run app.py`` on a free port with ``workers`` worker processes; (process, url)."""
    log = home / f"streamlit-{time.monotonic_ns()}.log"
    proc, url = start_app(home, log, cpus=SERVER_CPUS, TINYTL_WORKERS=str(workers))
    wait_healthy(url, proc, log=log)
    return proc, url


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used itself, its children not counted (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def new_context(browser):
    """A browser context (a cookie jar: each of its pages is a new Streamlit session) with long time-outs."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)  # a busy machine: Playwright's 30 s are not enough
    return context


def visits(browser, url: str, ready: list[str], repeat: int, context) -> float:
    """Median seconds until the last of ``ready`` is on screen, over ``repeat`` new sessions."""
    return median([timed_visit(browser, url, ready, context)[-1] for _ in range(repeat)])


def wait_running(queue, count: int, timeout_s: float = 300) -> None:
    """Wait until ``count`` jobs are training (the workers are up and busy)."""
    from tinytl_core.jobs import JobState

    deadline = time.monotonic() + timeout_s
    while queue.counts()[JobState.RUNNING] < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"fewer than {count} jobs started training in {timeout_s:.0f} s")
        time.sleep(0.2)


def render_under_load(browser, home: Path, repeat: int, submitters: int, load_steps: int) -> dict[str, float]:
    """Part (a): new-session render times idle and under load."""
    from tinytl_core.adapt import AdaptConfig
    from tinytl_core.backbones import default_backbone
    from tinytl_core.jobs import JobQueue

    proc, url = start_server(home, workers=2)
    out: dict[str, float] = {}
    try:
        context = new_context(browser)
        timed_visit(browser, f"{url}/adapt", [HEADING, QUEUE_LINE], context)  # the server's first run
        out["Adapt page, idle"] = visits(browser, f"{url}/adapt", [HEADING, QUEUE_LINE], repeat, context)
        out["Compare runs, idle"] = visits(browser, f"{url}/compare_runs", [HEADING], repeat, context)

        queue = JobQueue(home / "results.sqlite")
        config = AdaptConfig(backbone=default_backbone(), mode="bias", dataset="shapes", steps=load_steps)
        start, took, ids = threading.Barrier(submitters), [], []

        def submit(n: int) -> None:
            start.wait()
            t0 = time.monotonic()
            ids.append(JobQueue(home / "results.sqlite").submit(config, owner=f"student-{n}"))
            took.append(time.monotonic() - t0)

        threads = [threading.Thread(target=submit, args=(n,)) for n in range(submitters)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out[f"slowest of {submitters} submits at once"] = max(took)
        wait_running(queue, 2)
        out["Adapt page, 2 workers busy, 30 queued"] = visits(
            browser, f"{url}/adapt", [HEADING, QUEUE_LINE], repeat, context
        )
        out["Compare runs, 2 workers busy, 30 queued"] = visits(
            browser, f"{url}/compare_runs", [HEADING], repeat, context
        )
        context.close()
        for job_id in ids:  # the load is done: let the workers go
            queue.cancel(job_id, None)
        queue.wait(ids, timeout=120)
        out["database integrity (1 = ok)"] = float(queue.integrity_check() == "ok")
    finally:
        stop_app(proc)
    return out


def submit_through_page(page, url: str, steps: int) -> None:
    """Fill the Adapt page's form (the defaults, one mode: bias, ``steps`` steps) and start."""
    page.goto(f"{url}/adapt")
    page.locator('[class*="st-key-ad_start"] button').wait_for(timeout=TIMEOUT_MS)
    for mode in ("Last layer", "TinyTL-L+B"):
        page.get_by_role("button", name=f"Remove {mode}").click()
        page.wait_for_timeout(500)
    for label, value in (("Steps per mode", str(steps)), ("Evaluate every N steps", "0")):
        field = page.locator('[data-testid="stNumberInput"]').filter(has_text=label).locator("input")
        field.fill(value)
        field.press("Enter")
        page.wait_for_timeout(500)
    page.get_by_role("button", name="Start training").click()
    page.locator('[class*="st-key-cancel_"] button').first.wait_for(timeout=TIMEOUT_MS)


def throughput(jobs) -> tuple[float, float]:
    """Mean training images/s of the runs, and images over the wall time from first start to last end."""
    rates = [j.result["images_per_s"] for j in jobs]
    seen = sum(j.step * j.config.batch_size for j in jobs)
    wall = max(j.ended_at for j in jobs) - min(j.started_at for j in jobs)
    return sum(rates) / len(rates), seen / wall


def throughput_with_viewers(browser, home: Path, viewers: int, steps: int) -> dict[str, float]:
    """Part (b): 5 jobs watched by the sessions that submitted them, then the same 5 unwatched."""
    from tinytl_core.jobs import JobQueue, JobState

    proc, url = start_server(home, workers=1)
    queue = JobQueue(home / "results.sqlite")
    out: dict[str, float] = {}
    try:
        contexts = [new_context(browser) for _ in range(viewers)]
        pages = [c.new_page() for c in contexts]
        submit_through_page(pages[0], url, steps)  # warm-up: the worker's first run, not measured
        (warm,) = queue.list_jobs()
        queue.wait([warm.id], timeout=600)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        for page in pages:  # each session submits its own job and keeps watching it
            submit_through_page(page, url, steps)
        watched = [j for j in queue.list_jobs() if j.id != warm.id]
        configs = [j.config for j in watched]
        curves = 0
        while not all(j.ended for j in queue.list_jobs(ids=[j.id for j in watched])):
            # the Adapt page's one Vega-Lite chart is its curves (a Vega chart gets no st-key class)
            curves = max(curves, sum(p.locator('[data-testid="stVegaLiteChart"]').count() for p in pages))
            time.sleep(1.0)
        watched = queue.wait([j.id for j in watched], timeout=60)
        out["app server CPU, cores busy, watched"] = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        for context in contexts:
            context.close()
        if {j.state for j in watched} != {JobState.FINISHED}:
            raise SystemExit(f"a watched job did not finish: {[(j.id, j.state, j.error) for j in watched]}")
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        alone = queue.wait(queue.submit_many(configs, owner="nobody-watching"), timeout=1200)
        out["app server CPU, cores busy, alone"] = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        with_rate, with_wall = throughput(watched)
        alone_rate, alone_wall = throughput(alone)
        out["images/s, no one watching"] = alone_rate
        out[f"images/s, {viewers} sessions watching"] = with_rate
        out["ratio (images/s)"] = with_rate / alone_rate
        out["images per wall second, no one watching"] = alone_wall
        out[f"images per wall second, {viewers} watching"] = with_wall
        out["ratio (wall)"] = with_wall / alone_wall
        out["pages that drew live curves"] = float(curves)
    finally:
        stop_app(proc)
    return out


SERVER_CPUS: set[int] | None = None
"""The cores the servers (and their workers) run on: those the browsers do not (None: any)."""


def browser_cores(spec: str) -> set[int] | None:
    """The cores ``--browser-cpus`` names (None: no pinning)."""
    cores = sorted(os.sched_getaffinity(0))
    if spec == "all" or (spec == "last" and len(cores) < 2):
        return None
    if spec == "last":
        return {cores[-1]}
    try:
        chosen = {int(c) for c in spec.split(",")}
    except ValueError:
        raise SystemExit(f"--browser-cpus: 'last', 'all' or core numbers like 1,2, got {spec!r}") from None
    if not chosen <= set(cores):
        raise SystemExit(f"--browser-cpus {spec}: this process may use cores {cores} only")
    return chosen


def launch_pinned(pw, chromium: str, spec: str):
    """Chromium pinned to the cores of ``spec``: its processes (and every tab's renderer, which the browser
    process starts) inherit the affinity this process has while launching it; afterwards this process gets
    every core back, and the servers it starts run on the cores left (:data:`SERVER_CPUS`)."""
    global SERVER_CPUS
    chosen, every = browser_cores(spec), os.sched_getaffinity(0)
    if chosen is not None:
        SERVER_CPUS = (every - chosen) or None  # every core is the browsers': the server shares them
        os.sched_setaffinity(0, chosen)
        shared = sorted(SERVER_CPUS or every)
        print(f"browsers pinned to core(s) {sorted(chosen)}; server and its workers on {shared}")
    try:
        return pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
    finally:
        os.sched_setaffinity(0, every)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="new-session visits per render timing")
    parser.add_argument("--submitters", type=int, default=30, help="concurrent submitters in (a)")
    parser.add_argument("--load-steps", type=int, default=400, help="steps of each load job in (a)")
    parser.add_argument("--viewers", type=int, default=5, help="browser sessions watching in (b)")
    parser.add_argument("--steps", type=int, default=60, help="steps of each measured job in (b)")
    parser.add_argument("--only", choices=("render", "throughput"), default=None, help="run one part")
    parser.add_argument(
        "--browser-cpus",
        default="last",
        help="cores the browsers run on: 'last' (default, with 2+ cores), 'all', or a list like 1,2",
    )
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no Chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    results: dict[str, float] = {}
    load = (args.repeat, args.submitters, args.load_steps)
    with sync_playwright() as pw:
        browser = launch_pinned(pw, chromium, args.browser_cpus)
        for part, run in (
            ("render", lambda h: render_under_load(browser, h, *load)),
            ("throughput", lambda h: throughput_with_viewers(browser, h, args.viewers, args.steps)),
        ):
            if args.only not in (None, part):
                continue
            home = Path(tempfile.mkdtemp(prefix=f"tinytl-classroom-{part}-"))
            try:
                results.update(run(home))
            finally:
                shutil.rmtree(home, ignore_errors=True)
        browser.close()
    print(f"{'measure':<48} {'value':>9}")
    for name, value in results.items():
        unit = "s" if any(word in name for word in ("Adapt page", "Compare", "submits")) else ""
        print(f"{name:<48} {value:>8.2f}{unit}")
    if "Adapt page, idle" in results:
        for page in ("Adapt page", "Compare runs"):
            ratio = results[f"{page}, 2 workers busy, 30 queued"] / results[f"{page}, idle"]
            print(f"{page} under load / idle: {ratio:.2f}x (target <= 2x) {'ok' if ratio <= 2 else 'SLOW'}")
    if "ratio (images/s)" in results:
        ratio = results["ratio (images/s)"]
        verdict = "ok" if ratio >= 0.9 else "LOW"
        print(f"throughput with viewers / without: {ratio:.0%} (target >= 90%) {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
