"""Issue 14, the app's logic without Streamlit: one step count and an honest phase in the job snapshot,
only the owner stops a job, exact run ids for deleting and an undo, formatted run columns, whole-step
axes, uploads checked once per content, and failure messages without server paths."""

from __future__ import annotations

import threading
import time

import pytest
from app_helpers import image_zip

from tinytl_core.adapt import AdaptConfig, AdaptResult, EvalEvent, PhaseEvent, StepEvent
from tinytl_core.jobs import JobQueue, JobState, run_worker
from tinytl_core.results import ResultsStore
from tinytl_core.ui import checks, vega
from tinytl_core.ui.errors import failure_message
from tinytl_core.ui.jobs import NotYourJobError, cancel_job, failed_message, result_summary, session_jobs
from tinytl_core.ui.runs import column_formats, parse_run_ids, restore_runs, runs_frame

CONFIG = AdaptConfig(backbone="mobilenetv2_050", mode="bias", dataset="digits", steps=16, record_memory=False)


class Scripted:
    """A runner that plays ``events`` then waits for ``release`` (or cancel) before returning ``result``."""

    def __init__(self, events, steps_done):
        self.events, self.steps_done = events, steps_done
        self.played, self.release = threading.Event(), threading.Event()

    def __call__(self, config, *, progress, cancel, store):
        for event in self.events:
            progress(event)
        self.played.set()
        while not (self.release.is_set() or cancel.is_set()):
            self.release.wait(0.01)
        status = "cancelled" if cancel.is_set() else "finished"
        return AdaptResult(config, status=status, steps_done=self.steps_done, steps_planned=16)


def _step(n):
    return StepEvent(n, 16, 0.1, 1.0, 0.5, 1e-3, 10.0, 0.1)


def _worker(db, runner):
    """One worker (thread) that trains the next job with ``runner`` and stops."""
    thread = threading.Thread(
        target=run_worker, args=(db,), kwargs=dict(runner=runner, max_jobs=1, poll_s=0.02, interval=0.02)
    )
    thread.start()
    return thread


def _until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_phase_text_ends_with_the_evaluation_and_one_step_count_is_shown(tmp_path):
    events = [
        PhaseEvent("train", "training 10 of 100 parameters", 0.0),
        *(_step(n) for n in range(1, 16)),
        PhaseEvent("eval", "evaluating on 200 images", 0.5),
        EvalEvent(15, 16, 0.5, 1.0, 0.6),
    ]
    runner, queue = Scripted(events, steps_done=15), JobQueue(tmp_path / "r.sqlite")
    job_id = queue.submit(CONFIG, owner="me")
    thread = _worker(queue.path, runner)
    try:
        assert runner.played.wait(10)
        _until(lambda: queue.get(job_id).step == 15)
        view = session_jobs(queue, "me").views[0]
        assert "evaluating" not in view.job.phase  # the evaluation ended: back to the training text
        assert view.job.phase == "training 10 of 100 parameters" and "step 15 of 16" in view.line()
        assert session_jobs(queue, "me").results_frame()["steps"].iloc[0] == 15
    finally:
        runner.release.set()
        thread.join(10)
    job = queue.get(job_id)
    assert job.phase == "" and job.step == 15 and job.state is JobState.FINISHED


def test_a_final_evaluation_clears_the_phase_and_the_result_is_the_one_step_source(tmp_path):
    events = [_step(n) for n in range(1, 17)] + [
        PhaseEvent("eval", "evaluating on 200 images", 0.5),
        EvalEvent(16, 16, 0.5, 1.0, 0.6, final=True),
    ]
    runner, queue = Scripted(events, steps_done=15), JobQueue(tmp_path / "r.sqlite")
    job_id = queue.submit(CONFIG, owner="me")
    thread = _worker(queue.path, runner)  # the run records 15 steps although 16 were announced
    try:
        assert runner.played.wait(10)
        _until(lambda: queue.get(job_id).step == 16)
        assert queue.get(job_id).phase == ""
    finally:
        runner.release.set()
        thread.join(10)
    assert queue.get(job_id).step == 15 and session_jobs(queue, "me").results_frame()["steps"].iloc[0] == 15


def test_only_the_owner_stops_a_job(tmp_path):
    runner, queue = Scripted([_step(1)], steps_done=1), JobQueue(tmp_path / "r.sqlite")
    job_id = queue.submit(CONFIG, owner="session-a")
    thread = _worker(queue.path, runner)
    try:
        assert runner.played.wait(10)
        with pytest.raises(NotYourJobError, match="another session"):
            cancel_job(queue, job_id, "session-b")
        with pytest.raises(NotYourJobError, match="without an id"):
            cancel_job(queue, job_id, "")
        assert not queue.get(job_id).cancel_requested and queue.get(job_id).state is JobState.RUNNING
        cancel_job(queue, job_id, "session-a")
        thread.join(10)
    finally:
        runner.release.set()
        thread.join(10)
    job = queue.get(job_id)
    assert job.state is JobState.CANCELLED and job.run_status == "cancelled"


def test_run_ids_are_exact():
    known = range(1, 14)
    assert parse_run_ids("#3", known) == ([3], [])  # never #13 too
    assert parse_run_ids("3, #13  # 7 3", known) == ([3, 13, 7], [])
    ids, problems = parse_run_ids("3 x 99", known)
    assert ids == [3] and len(problems) == 2 and "no run #99" in problems[1]
    assert parse_run_ids("", known) == ([], [])
    assert parse_run_ids("1-3", known)[0] == []  # no ranges: only what is named


def _record(i):
    return {
        "status": "finished",
        "backbone": "resnet18",
        "mode": "bias",
        "dataset": "digits",
        "final_val_acc": i / 100,
        "best_val_acc": i / 100,
        "steps_done": i,
        "history": [{"kind": "step", "step": 1, "loss": 1.0}],
    }


def test_deleted_runs_come_back_with_their_ids(tmp_path):
    store = ResultsStore(tmp_path / "runs.db")
    for i in range(1, 14):
        store.save_run(_record(i))
    doomed = [store.get_run(3), store.get_run(13)]
    for record in doomed:
        store.delete_run(record["id"])
    store.save_run(_record(14))  # a run stored meanwhile takes a new id, not 3 or 13
    assert restore_runs(store, doomed) == [3, 13]
    assert store.get_run(3) == doomed[0] and store.get_run(13) == doomed[1]
    assert store.count() == 14


def test_every_run_figure_has_a_format():
    formats = column_formats()
    assert formats["best_val_acc_pct"] == ("best val acc %", "%.1f")
    frame = runs_frame([{**_record(3), "id": 1}])
    numeric = [c for c in frame.columns if frame[c].dtype.kind in "fi"]
    assert numeric and all(formats[c][1] for c in numeric), {c: formats[c] for c in numeric}


@pytest.mark.parametrize("last", [1, 3, 999])
def test_step_axes_have_whole_steps(last):
    steps = [{"step": s, "loss": 1.0, "train_acc": 0.5} for s in range(1, last + 1)]
    data, spec = vega.curves_chart([("bias", steps, [])])
    assert data["step"].dtype.kind == "i" and data["step"].max() == last
    for panel in spec["hconcat"]:  # ticks at least one step apart, labelled as whole numbers (never 1.5)
        axis = panel["encoding"]["x"]["axis"]
        assert axis["tickMinStep"] == 1 and axis["format"] == "d"


def test_a_refused_upload_is_checked_once_per_content(tinytl_home, monkeypatch):
    loads = []
    real = checks.load_dataset
    monkeypatch.setattr(checks, "load_dataset", lambda *a, **k: loads.append(a) or real(*a, **k))
    data = image_zip(1)  # one class: refused
    first = checks.check_upload("one.zip", data)
    again = checks.check_upload("one.zip", data)
    assert first.path is None and "one" in first.error and again.error == first.error
    assert len(loads) == 1  # the rerun did not extract it again
    assert "kept on the server" in first.kept
    good = checks.check_upload("pets.zip", image_zip(2))
    assert good.path is not None and "2 classes" in good.summary and "pets" in good.kept


def test_failure_messages_hide_paths_and_say_what_to_do():
    exc = OSError(36, "File name too long", "/srv/tinytl/uploads/" + "a" * 300)
    text = failure_message(exc, "abc12345")
    assert "/srv" not in text and "a" * 20 not in text and "abc12345" in text and "Try" in text
    assert "/srv" not in failed_message(exc)
    assert failed_message(RuntimeError("boom")) == "boom"  # the library's own message, no class name
    assert failed_message(ValueError()).startswith("ValueError while training")


def test_adjusted_settings_reach_the_adapt_page():
    result = AdaptResult(
        AdaptConfig(dataset="digits"),
        status="finished",
        notes=["batch 100000 is more than the 960 training images: trained with 960"],
    )
    summary = result_summary(result)
    assert summary["notes"] == result.notes  # shown under the run on the Adapt page
