"""The job queue and its workers (issue 13): the queue's rules in one process, workers in threads and in
processes under 30 concurrent submitters (library threads and Adapt pages in AppTest sessions), SIGKILL
mid-job, cancel, owner-only cancel, restart, the app's pool with real ``worker`` processes training real
(tiny) runs and stopping without failing anyone's job, pruning of old progress events, and uploads that a
queued job needs kept out of the uploads quota's eviction."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time

import pytest
from app_helpers import app_test, visit
from streamlit.testing.v1 import AppTest

from tinytl_core.adapt import AdaptConfig, AdaptResult, PhaseEvent, StepEvent
from tinytl_core.cli import main as cli_main
from tinytl_core.jobs import JobQueue, JobState, NotYourJobError, WorkerPool, exit_reason, run_worker
from tinytl_core.jobs.pool import default_pool_size, default_threads
from tinytl_core.jobs.queue import ENV_EVENTS_DAYS, worker_name
from tinytl_core.quantities import RunStatus
from tinytl_core.results import ResultsStore

STEP_S = 0.02
"""Seconds one step of :func:`cheap_runner` takes."""


def config(steps: int = 3, **kw) -> AdaptConfig:
    values = dict(backbone="mobilenetv2_050", mode="bias", dataset="shapes", pretrained=False)
    return AdaptConfig(steps=steps, **{**values, **kw})


def cheap_runner(config, *, progress, cancel, store, data=None) -> AdaptResult:
    """adapt()'s signature and contract without a model: ``steps`` steps of :data:`STEP_S` seconds with
    their events, cancel honoured before each, the run stored -- what the queue sees of a real run."""
    result = AdaptResult(config, device="cpu", steps_planned=config.steps, started_at="now")
    progress(PhaseEvent("train", "training", 0.0))
    result.status = RunStatus.FINISHED
    for step in range(1, config.steps + 1):
        if cancel is not None and cancel.is_set():
            result.status, result.message = RunStatus.CANCELLED, f"cancelled after {result.steps_done} steps"
            break
        time.sleep(STEP_S)
        result.steps_done = step
        progress(StepEvent(step, config.steps, step / 10, 1.0 / step, 0.5, 1e-3, 100.0, step * STEP_S))
    result.final_val_acc = 0.5
    if store is not None:
        result.run_id = store.save_run(result.to_record())
    return result


def _worker_process(db: str, worker_id: str | None = None) -> None:
    run_worker(db, worker_id=worker_id, runner=cheap_runner, poll_s=0.05, interval=0.05)


@pytest.fixture
def spawn(monkeypatch):
    """Start worker processes (spawned: no torch state forked); every one is killed at the end."""
    # Spawned children re-run the parent's __main__ by its path (after an AppTest, app.py): import by name.
    main = sys.modules["__main__"]
    monkeypatch.delattr(main, "__file__", raising=False)
    monkeypatch.setattr(main, "__spec__", None, raising=False)
    ctx = mp.get_context("spawn")
    started = []

    def start(db: str) -> mp.Process:
        process = ctx.Process(target=_worker_process, args=(db,), daemon=True)
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(10)


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------------------------------ the queue alone
def test_queue_order_claims_progress_and_owner_only_cancel(tmp_path):
    queue = JobQueue(tmp_path / "r.sqlite")
    with pytest.raises(ValueError, match="steps must be 1 to"):
        queue.submit(config(steps=0))
    assert queue.list_jobs() == []  # nothing queued by a bad configuration
    a, b = queue.submit_many([config(), config(mode="last")], owner="alice", label="Shapes")
    c = queue.submit(config(), owner="bob", sweep="grid-1")
    assert [queue.position(i) for i in (a, b, c)] == [1, 2, 3]
    assert [j.id for j in queue.list_jobs(owner="alice")] == [a, b]
    assert [j.id for j in queue.list_jobs(sweep="grid-1")] == [c]
    assert queue.get(b).config.mode == "last" and queue.get(a).label == "Shapes"

    first, second = queue.claim("w1"), queue.claim("w2")
    assert (first.id, second.id) == (a, b) and first.state is JobState.RUNNING and first.worker == "w1"
    assert queue.position(a) is None and queue.position(c) == 1
    assert not queue.report(a, "w1", [(1.0, "step", {"step": 1})], step=1, total_steps=3, phase="training")
    assert queue.report(a, "w2") is True  # not w2's job: it must stop
    job = queue.get(a)
    assert (job.step, job.total_steps, job.phase) == (1, 3, "training") and job.fraction == pytest.approx(
        1 / 3
    )
    (event,) = queue.events(a)
    assert event.kind == "step" and event.data == {"step": 1} and queue.events(a, after=event.id) == []

    with pytest.raises(NotYourJobError, match="another session"):
        queue.cancel(a, "bob")
    assert not queue.get(a).cancel_requested  # bob's request changed nothing
    assert queue.cancel(a, "alice").cancel_requested and queue.report(a, "w1") is True  # running: asked
    assert queue.cancel(c, "bob").state is JobState.CANCELLED  # queued: at once
    assert queue.claim("w3") is None  # nothing left in line

    assert queue.finish(a, "w1", JobState.CANCELLED, run_status=RunStatus.CANCELLED, result={"id": None})
    assert not queue.finish(a, "w1", JobState.FINISHED)  # ended once, never twice
    assert queue.requeue(b, "w2") and queue.get(b).state is JobState.QUEUED and queue.events(b) == []
    with pytest.raises(ValueError, match="ends finished"):
        queue.finish(b, "w2", JobState.RUNNING)
    with pytest.raises(KeyError, match="no job with id 99"):
        queue.get(99)
    with pytest.raises(TimeoutError, match="1 of 1 job"):
        queue.wait([b], timeout=0.1)


def test_a_job_another_sweep_waits_for_is_handed_over_not_stopped(tmp_path):
    """The class behind "any tab can stop another user's run", for shared jobs: a sweep that adopted a job
    (the same configuration, trained once) lost it when the job's owner cancelled. The owner's cancel now
    hands it over to the one waiting longest; a watcher's cancel only withdraws; others still may not."""
    queue = JobQueue(tmp_path / "r.sqlite")
    configs = [config(), config(mode="last"), config(mode="bn+last")]
    running, queued, alone = queue.submit_many(configs, owner="a")
    queue.claim("w1")  # `running` runs
    for job in (running, queued):
        queue.watch(job, "b")
        queue.watch(job, "c")
    queue.watch(alone, "a")  # its owner watching it changes nothing
    assert queue.watchers(running) == ["b", "c"] and queue.watchers(alone) == []

    with pytest.raises(NotYourJobError):
        queue.cancel(alone, "b")  # not b's, and b does not wait for it
    assert queue.cancel(running, "a").owner == "b"  # handed over, still running, not asked to stop
    job = queue.get(running)
    assert job.state is JobState.RUNNING and not job.cancel_requested and queue.watchers(running) == ["c"]
    assert queue.report(running, "w1") is False  # the worker goes on
    assert queue.cancel(queued, "c").state is JobState.QUEUED and queue.watchers(queued) == ["b"]  # withdrawn
    assert queue.cancel(queued, "a").owner == "b"
    assert queue.cancel(queued, "b").state is JobState.CANCELLED  # nobody else waits: cancelled
    assert queue.cancel(alone, "a").state is JobState.CANCELLED
    assert queue.cancel(running, None).cancel_requested  # the server's own cancel stops it whoever waits
    assert queue.watchers(running) == []


def test_a_sweep_adopts_the_jobs_of_a_sweep_process_that_is_gone(tmp_path):
    """A command-line sweep owns its jobs as its process (`label (host:pid)`): started again after its
    process was killed, it takes over the jobs left queued, so its own Ctrl-C can stop them."""
    from tinytl_core.jobs import process_owner

    queue = JobQueue(tmp_path / "r.sqlite")
    gone = mp.get_context("spawn").Process(target=time.sleep, args=(0,))
    gone.start()
    gone.join()
    left, live = queue.submit_many([config(), config(mode="last")], owner=process_owner("sweep s", gone.pid))
    queue.store.execute(
        lambda con: con.execute("UPDATE jobs SET owner = ? WHERE id = ?", (process_owner("sweep s"), live)),
        write=True,
    )
    me = "sweep s (started again)"
    assert queue.adopt(left, me) and queue.get(left).owner == me  # its process is gone: ours now
    assert not queue.adopt(live, me) and queue.watchers(live) == [me]  # alive (this process): watched
    assert queue.cancel(left, me).state is JobState.CANCELLED


def test_a_killed_sweep_neither_inherits_nor_keeps_jobs_nobody_can_stop(tmp_path):
    """Members of the handover class a probe found: Ctrl-C handed jobs to a watcher whose process had
    been killed (no one left to cancel them), and a watcher's Ctrl-C left jobs owned by a killed sweep
    queued. Dead processes are skipped as heirs, and a dead owner's job is taken over and stopped."""
    from tinytl_core.jobs import process_owner

    queue = JobQueue(tmp_path / "r.sqlite")
    gone = mp.get_context("spawn").Process(target=time.sleep, args=(0,))
    gone.start()
    gone.join()
    dead, alive = process_owner("sweep s", gone.pid), process_owner("sweep s")
    first, second = queue.submit_many([config(), config(mode="last")], owner="a")
    queue.watch(first, dead)
    assert queue.cancel(first, "a").state is JobState.CANCELLED  # the only heir is dead: cancelled
    set_owner = "UPDATE jobs SET owner = ? WHERE id = ?"
    queue.store.execute(lambda con: con.execute(set_owner, (dead, second)), write=True)
    with pytest.raises(NotYourJobError):
        queue.cancel(second, "a session that does not wait for it")  # a dead owner's job is not anyone's
    queue.watch(second, alive)
    job = queue.cancel(second, alive)  # the owner was killed: the watcher's Ctrl-C stops it
    assert job.state is JobState.CANCELLED and job.owner == alive


def test_a_sweeps_own_workers_train_its_jobs_only(tmp_path):
    """A sweep's single worker claimed another user's long job queued before it, so the sweep waited
    behind it (and requeued it, losing its progress, when the sweep stopped)."""
    queue = JobQueue(tmp_path / "r.sqlite")
    other = queue.submit(config(), owner="alice")
    mine = queue.submit(config(mode="last"), owner="sweep s", sweep="s")
    assert queue.claim("w", sweep="s").id == mine and queue.claim("w", sweep="s") is None
    assert queue.claim("w").id == other  # a worker serving the whole queue takes the rest


def test_a_worker_keeps_an_inherited_ignored_sigint_ignored(tmp_path):
    """A sweep started in the background ignores SIGINT; its workers installed their own handler, so a
    Ctrl-C to the group stopped the worker and the pool started another: the Ctrl-C did nothing useful."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run_worker(tmp_path / "r.sqlite", max_jobs=0, idle_exit_s=0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_recover_fails_jobs_of_dead_or_silent_workers(tmp_path):
    queue = JobQueue(tmp_path / "r.sqlite")
    gone, silent, alive = queue.submit_many([config(), config(), config()])
    dead_pid = mp.get_context("spawn").Process(target=time.sleep, args=(0,))
    dead_pid.start()
    dead_pid.join()  # a process that existed on this host and is gone
    queue.claim(worker_name(dead_pid.pid))
    queue.claim("another-host:1")
    queue.claim(worker_name())  # this process: alive
    past = time.time() - 1000
    queue.store.execute(lambda con: con.execute("UPDATE jobs SET heartbeat_at = ?", (past,)), write=True)
    queue.report(alive, worker_name())  # a fresh heartbeat
    assert sorted(queue.recover(stale_after_s=60)) == [gone, silent]
    assert "ended without finishing" in queue.get(gone).error
    assert "stopped responding" in queue.get(silent).error and queue.get(alive).state is JobState.RUNNING
    assert queue.counts()[JobState.FAILED] == 2


def test_worker_trains_honours_cancel_and_requeues_on_shutdown(tmp_path):
    db = tmp_path / "r.sqlite"
    queue, shutdown = JobQueue(db), threading.Event()
    quick, long = queue.submit(config(steps=2), owner="me"), queue.submit(config(steps=2000), owner="me")
    thread = threading.Thread(
        target=run_worker,
        args=(db,),
        kwargs=dict(shutdown=shutdown, runner=cheap_runner, poll_s=0.05, interval=0.05),
    )
    thread.start()
    try:
        wait_for(lambda: queue.get(long).step >= 2, what="the long job to train")
        done = queue.get(quick)
        assert done.state is JobState.FINISHED and done.run_status is RunStatus.FINISHED
        assert (
            ResultsStore(db).get_run(done.run_id)["steps_done"] == 2 and done.result["final_val_acc"] == 0.5
        )
        assert [e.kind for e in queue.events(quick)] == ["phase", "step", "step"]
        queue.cancel(long, "me")
        job = queue.wait([long], timeout=30)[0]
        assert job.state is JobState.CANCELLED and job.step < 2000  # honoured within a report or two
        assert ResultsStore(db).get_run(job.run_id)["status"] == "cancelled"

        again = queue.submit(config(steps=2000))
        wait_for(lambda: queue.get(again).step >= 1, what="the next job to start")
        shutdown.set()  # the worker stops (SIGTERM, the app going away): its job goes back in line
        thread.join(30)
        requeued = queue.get(again)
        assert requeued.state is JobState.QUEUED and queue.position(again) == 1 and requeued.run_id is None
        assert ResultsStore(db).count() == 2  # no run stored for the interrupted job
    finally:
        shutdown.set()
        thread.join(30)


def test_a_job_cancelled_as_its_worker_shuts_down_ends_cancelled(tmp_path):
    """A Ctrl-C on a sweep asks its jobs to cancel and stops the worker at once: the worker finds the
    requeue refused (cancel asked) before its reporter read the request. The job must end cancelled, not
    stay running for the pool to mark failed ('exited while training')."""
    db = tmp_path / "r.sqlite"
    queue, shutdown = JobQueue(db), threading.Event()
    job = queue.submit(config(steps=2000), owner="me")
    thread = threading.Thread(
        target=run_worker,
        args=(db,),
        kwargs=dict(shutdown=shutdown, runner=cheap_runner, poll_s=0.05, interval=4),  # no report read yet
    )
    thread.start()
    try:
        wait_for(lambda: queue.get(job).state is JobState.RUNNING, what="the job to start")
        queue.cancel(job, "me")
        shutdown.set()
        thread.join(30)
        ended = queue.get(job)
        assert ended.state is JobState.CANCELLED, ended
    finally:
        shutdown.set()
        thread.join(30)


# -------------------------------------------------------------------------------- worker processes
def _adapt_session() -> AppTest:
    """An Adapt page in an AppTest session, ready to queue one tiny run (one mode, 2 steps)."""
    at = visit(app_test(timeout=120).run(), "adapt")
    at.multiselect(key="ad_modes").set_value(["bias"])
    at.number_input(key="ad_steps").set_value(2)
    return at


def test_thirty_submitters_two_workers_sigkill_and_restart(tinytl_home, spawn):
    """27 library threads and 3 Adapt pages (AppTest sessions) submit at once against 2 worker processes."""
    db = str(ResultsStore().path)  # the app's default database in this test's data folder
    queue = JobQueue(db)
    workers = [spawn(db), spawn(db)]
    pages = [_adapt_session() for _ in range(3)]
    start, ids, errors = threading.Barrier(30), [], []

    def submit(n: int) -> None:
        try:
            start.wait(30)
            ids.append(JobQueue(db).submit(config(steps=2, seed=n), owner=f"student-{n}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    page_run = (
        threading.Lock()
    )  # AppTest keeps one global runtime per run: pages take turns, amid the threads

    def click(at: AppTest) -> None:
        try:
            start.wait(30)
            with page_run:
                at.button(key="ad_start").click().run()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(27)]
    threads += [threading.Thread(target=click, args=(at,)) for at in pages]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(set(ids)) == 27
    assert all(not at.exception and not at.error for at in pages), [at.error for at in pages]
    sessions = [at.session_state["session_id"] for at in pages]
    for owner in sessions:  # each page queued its one run, under its own session
        (job,) = queue.list_jobs(owner=owner)
        ids.append(job.id)
    jobs = queue.wait(ids, timeout=150)
    assert {j.state for j in jobs} == {JobState.FINISHED}, [(j.id, j.state, j.error) for j in jobs]
    runs = ResultsStore(db).list_runs()
    assert len(runs) == 30 and sorted(j.run_id for j in jobs) == sorted(r["id"] for r in runs)  # once each
    by_id = {r["id"]: r for r in runs}
    library = [j for j in jobs if j.owner.startswith("student-")]
    assert sorted(by_id[j.run_id]["seed"] for j in library) == list(range(27))  # none lost, none twice
    assert queue.counts()[JobState.FINISHED] == 30 and queue.integrity_check() == "ok"
    for at in pages:  # each page shows its own finished run
        at.run()
        assert not at.exception and list(at.dataframe[0].value["status"]) == ["finished"]

    # A worker killed mid-job: its job fails with the reason, the next job runs on the other worker.
    doomed, after = queue.submit(config(steps=5000)), queue.submit(config(steps=2))
    job = wait_for(lambda: (j := queue.get(doomed)).step >= 1 and j, what="the long job to start")
    victim = next(w for w in workers if worker_name(w.pid) == job.worker)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    failed, finished = queue.wait([doomed, after], timeout=60)
    assert failed.state is JobState.FAILED and "ended without finishing" in failed.error
    assert finished.state is JobState.FINISHED and finished.run_id is not None

    # Restart: with no worker the queue keeps its jobs; a new worker picks them up.
    survivor = next(w for w in workers if w is not victim)
    survivor.terminate()
    survivor.join(30)
    later = queue.submit_many([config(steps=2), config(steps=2)])
    time.sleep(0.3)
    assert [queue.position(i) for i in later] == [1, 2]
    shutdown = threading.Event()  # the restarted worker (a thread here: the same loop, no new process)
    restarted = threading.Thread(
        target=run_worker, args=(db,), kwargs=dict(shutdown=shutdown, runner=cheap_runner, poll_s=0.05)
    )
    restarted.start()
    try:
        assert {j.state for j in queue.wait(later, timeout=90)} == {JobState.FINISHED}
    finally:
        shutdown.set()
        restarted.join(30)
    assert queue.integrity_check() == "ok"


def test_pool_of_real_workers_survives_sigkill_and_stops_with_its_owner(tmp_path):
    db = tmp_path / "r.sqlite"
    queue = JobQueue(db)
    tiny = dict(batch_size=2, resolution=32, record_memory=False, val_cap=1, shots=2, augment=False)
    long, short = queue.submit(config(steps=100_000, **tiny)), queue.submit(config(steps=1, **tiny))
    pool = WorkerPool(1, db, threads=1)
    starter = threading.Thread(target=pool.start)  # as the app does: from a script run's short-lived thread
    starter.start()
    starter.join()
    with pool:
        wait_for(lambda: queue.get(long).step >= 1, timeout=120, what="a real worker to train")
        (pid,) = pool.pids
        assert pool.restarts == 0 and queue.get(long).worker == worker_name(pid)  # outlived its starter
        os.kill(pid, signal.SIGKILL)  # what the kernel's out-of-memory killer does
        failed = queue.wait([long], timeout=30)[0]
        assert failed.state is JobState.FAILED and "SIGKILL" in failed.error and "memory" in failed.error
        done = queue.wait([short], timeout=120)[0]  # the pool replaced the worker
        assert (
            done.state is JobState.FINISHED and ResultsStore(db).get_run(done.run_id)["status"] == "finished"
        )
        replacement = pool.pids
        assert replacement and replacement != [pid] and pool.restarts == 1
        # Stopping the pool fails no one's job: a worker that does not stop in time is killed and its job
        # goes back in line, at its place, without a stored run (only the OOM kill above failed its job).
        held = queue.submit(config(steps=100_000, **tiny))
        wait_for(lambda: queue.get(held).step >= 1, timeout=120, what="the replacement to train")
        pool.stop(timeout=0)  # no time to finish its step: killed
        job = queue.get(held)
        assert job.state is JobState.QUEUED and queue.position(held) == 1
        assert job.error == "" and job.run_id is None and job.worker is None
    assert pool.pids == [] and all(not os.path.exists(f"/proc/{p}") for p in replacement)
    assert (tmp_path / "worker-logs" / "worker-0.log").exists()


def test_pool_size_and_threads_from_the_cores_or_the_environment(monkeypatch):
    monkeypatch.delenv("TINYTL_WORKERS", raising=False)
    monkeypatch.delenv("TINYTL_WORKER_THREADS", raising=False)
    assert [default_pool_size(c) for c in (1, 2, 16)] == [1, 1, 8]
    assert [default_threads(1, 2), default_threads(8, 16), default_threads(1, 16)] == [1, 1, 15]
    monkeypatch.setenv("TINYTL_WORKERS", "3")
    monkeypatch.setenv("TINYTL_WORKER_THREADS", "2")
    assert default_pool_size(16) == 3 and default_threads(3, 16) == 2
    for bad in ("lots", "-1"):
        monkeypatch.setenv("TINYTL_WORKERS", bad)
        with pytest.raises(ValueError, match="TINYTL_WORKERS must be"):
            default_pool_size()
    monkeypatch.setenv("TINYTL_WORKER_THREADS", "0")
    with pytest.raises(ValueError, match="TINYTL_WORKER_THREADS must be"):
        default_threads(1)


def test_exit_reasons_and_worker_command_errors(capsys):
    assert "SIGKILL" in exit_reason(-signal.SIGKILL) and "out of memory" in exit_reason(-signal.SIGKILL)
    assert "SIGSEGV" in exit_reason(-signal.SIGSEGV) and "status 3" in exit_reason(3)
    assert cli_main(["worker", "--max-jobs", "0"]) == 2
    assert "argument --max-jobs: must be 1 to" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ housekeeping
def _ended(queue: JobQueue, job_id: int, *, days_ago: float, run: bool, steps: int = 3) -> None:
    """Claim ``job_id``, report ``steps`` step events and end it ``days_ago`` days ago (with a run or not)."""
    assert queue.claim("w").id == job_id
    queue.report(job_id, "w", [(0.0, "step", {"step": i}) for i in range(1, steps + 1)], step=steps)
    state = JobState.FINISHED if run else JobState.FAILED
    assert queue.finish(job_id, "w", state, run_id=job_id if run else None, error="" if run else "killed")
    ended = time.time() - days_ago * 86400
    sql = "UPDATE jobs SET ended_at = ? WHERE id = ?"
    queue.store.execute(lambda con: con.execute(sql, (ended, job_id)), write=True)


def test_old_progress_events_are_pruned_only_where_a_stored_run_holds_them(tmp_path, monkeypatch, capsys):
    db = tmp_path / "r.sqlite"
    queue = JobQueue(db)
    old, old_unstored, recent, running = queue.submit_many([config() for _ in range(4)])
    _ended(queue, old, days_ago=10, run=True)
    _ended(queue, old_unstored, days_ago=10, run=False)  # its events are the only record of its curves
    _ended(queue, recent, days_ago=0.01, run=True)
    queue.claim("w")
    queue.report(running, "w", [(0.0, "step", {"step": 1})], step=1)
    assert queue.event_count() == 10

    monkeypatch.delenv(ENV_EVENTS_DAYS, raising=False)
    pruned = queue.prune_events()  # default: 7 days
    assert (pruned.events, pruned.jobs, pruned.kept_days) == (3, 1, 7.0) and queue.events(old) == []
    assert [len(queue.events(j)) for j in (old_unstored, recent, running)] == [3, 3, 1]
    assert queue.prune_events().events == 0  # nothing left to prune: a read, no write

    monkeypatch.setenv(ENV_EVENTS_DAYS, "0")  # every ended job with a stored run
    assert queue.prune_events_if_due().events == 3 and queue.events(recent) == []
    assert queue.prune_events_if_due() is None  # once an hour per process at most
    assert [len(queue.events(j)) for j in (old_unstored, running)] == [3, 1]  # never those
    monkeypatch.setenv(ENV_EVENTS_DAYS, "soon")
    with pytest.raises(ValueError, match="TINYTL_JOB_EVENTS_DAYS must be a number of days"):
        queue.prune_events()

    monkeypatch.delenv(ENV_EVENTS_DAYS)
    _ended(JobQueue(db), queue.submit(config()), days_ago=3, run=True)
    assert cli_main(["jobs", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "1 running" in out and "7 progress event(s) stored; 0 of 0 job(s)" in out
    assert cli_main(["jobs", "--db", str(db), "--prune-events", "--keep-days", "2"]) == 0
    assert "pruned 3 progress event(s) of 1 job(s) ended over 2 day(s) ago" in capsys.readouterr().out
    assert cli_main(["jobs", "--db", str(db), "--keep-days", "-1", "--prune-events"]) == 2
    assert "argument --keep-days: must be" in capsys.readouterr().err


def test_a_long_running_job_keeps_a_bounded_thinned_curve(tmp_path):
    queue = JobQueue(tmp_path / "r.sqlite")
    job = queue.submit(config(steps=5000))
    queue.claim("w")
    queue.report(job, "w", [(0.0, "phase", {"phase": "train"})])
    for start in range(1, 5001, 200):  # what a worker reports every 0.5 s of a fast run
        batch = [(0.0, "step", {"step": i}) for i in range(start, start + 200)]
        if start % 1000 == 1:
            batch.append((0.0, "eval", {"step": start}))
        queue.report(job, "w", batch, step=start + 199, max_step_events=100)
    steps = [e.data["step"] for e in queue.events(job, kinds=["step"])]
    assert len(steps) <= 100 and steps[-1] == 5000 and steps == sorted(steps)
    assert steps[0] <= 128 and max(b - a for a, b in zip(steps, steps[1:])) <= 128  # evenly thinned
    assert len(queue.events(job, kinds=["eval", "phase"])) == 6  # evaluations and phases all kept


def test_requeue_worker_jobs_puts_them_back_or_ends_a_cancelled_one(tmp_path):
    queue = JobQueue(tmp_path / "r.sqlite")
    a, b, c = queue.submit_many([config(), config(), config()], owner="me")
    for job in (a, b):
        queue.claim("w")
        queue.report(job, "w", [(0.0, "step", {"step": 1})], step=1)
    queue.cancel(b, "me")
    assert queue.requeue_worker_jobs("w") == [a]
    assert queue.get(a).state is JobState.QUEUED and queue.position(a) == 1 and queue.events(a) == []
    assert queue.get(b).state is JobState.CANCELLED and "worker was stopped" in queue.get(b).error
    assert queue.get(c).state is JobState.QUEUED and queue.requeue_worker_jobs("w") == []


def test_an_upload_a_queued_job_needs_is_never_evicted(tinytl_home, tmp_path, monkeypatch):
    from tinytl_core.data import UploadQuotaError
    from tinytl_core.data import uploads as U

    def archive() -> bytes:  # incompressible: the archive's size is what counts
        import io
        import zipfile

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
            for c in ("a", "b"):
                zf.writestr(f"{c}/0.bin", os.urandom(20_000))
        return buf.getvalue()

    first, second = archive(), archive()
    # room for one upload (its archive and its extracted files, in disk blocks), not two
    one = U._blocks(len(first)) + U._extraction_bytes(first)
    monkeypatch.setenv(U.ENV_QUOTA, str(1.1 * one / 1e6))
    path = U.save_archive("first.zip", first)
    queue = JobQueue(tmp_path / "elsewhere.sqlite")  # not the default database: pinned all the same
    job = queue.submit(config(dataset=str(path)), label="first.zip")
    old = time.time() - 600
    os.utime(path, (old, old))  # the least recently used: the one eviction would pick
    with pytest.raises(UploadQuotaError, match="running or queued trainings"):
        U.save_archive("second.zip", second)
    assert path.exists()  # the queued job's dataset is still there
    queue.claim("w")
    with pytest.raises(UploadQuotaError):  # running: still pinned
        U.save_archive("second.zip", second)
    assert path.exists()
    queue.finish(job, "w", JobState.FINISHED)
    kept = U.save_archive("second.zip", second)  # the job ended: the old upload may go now
    assert kept.exists() and not path.exists()


def _workers_on(db: str) -> list[int]:
    """Process ids of `worker` processes on ``db``."""
    import subprocess

    found = subprocess.run(["pgrep", "-f", f"worker --db {db}"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_a_worker_process_stops_on_repeated_signals_and_when_its_parent_dies(tmp_path):
    """The class: a worker must never outlive its pool. Its signal handler used to call Event.set(), whose
    lock a second SIGTERM (the pool stopping, then the server's process group) interrupted: the worker
    deadlocked for good and its parent watcher with it. Now several signals in a row stop it, and so does
    its parent's death."""
    import signal
    import subprocess
    import sys

    db = str(tmp_path / "r.sqlite")
    JobQueue(db)  # the queue's tables
    command = [sys.executable, "-m", "tinytl_core", "worker", "--db", db, "--threads", "1"]
    worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in worker.stderr:  # its first log line comes once the signal handlers are in place
            if "jobs.worker: worker" in line:
                break
        for _ in range(20):
            worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    finally:
        worker.kill()
    # a parent that dies without a word (as a killed app server): its worker stops on its own
    spawn = "import os, subprocess, sys; subprocess.Popen(sys.argv[1:] + ['--parent-pid', str(os.getpid())])"
    subprocess.run([sys.executable, "-c", spawn, *command], timeout=30, check=True)
    try:
        deadline = time.monotonic() + 40
        while _workers_on(db) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _workers_on(db), "an orphaned worker kept running"
    finally:
        for pid in _workers_on(db):
            os.kill(pid, signal.SIGKILL)


def test_the_workers_signal_handler_takes_no_lock(tmp_path):
    """Deterministically, what a second signal inside the first handler did: the handler is called while
    the shutdown event's lock is held (the old handler's Event.set() waited on it forever)."""
    import signal

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    shutdown = threading.Event()
    try:
        run_worker(tmp_path / "r.sqlite", max_jobs=0, shutdown=shutdown)  # installs its handlers, returns
        handler = signal.getsignal(signal.SIGTERM)
        returned = threading.Event()

        def interrupted() -> None:
            with shutdown._cond:  # as if a signal arrived inside Event.set, which holds this lock
                handler(signal.SIGTERM, None)
            returned.set()

        threading.Thread(target=interrupted, daemon=True).start()
        assert returned.wait(5), "the signal handler blocked on the shutdown event's lock"
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
