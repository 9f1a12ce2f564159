"""The Streamlit app under AppTest: every page renders, the Memory Explorer follows its controls, bad input
gets an error and the app stays usable, and a tiny adaptation started on Adapt lands on Compare runs."""

from __future__ import annotations

import threading
import time

import pytest
from app_helpers import app_test, image_zip, visit
from streamlit.testing.v1 import AppTest

from tinytl_core.adapt import AdaptConfig, StepEvent, adapt
from tinytl_core.jobs import JobQueue, JobState, run_worker
from tinytl_core.results import ResultsStore

PAGES = ("home", "memory_explorer", "modes", "adapt", "compare_runs", "about")


@pytest.fixture
def app(tinytl_home):
    return app_test()


@pytest.fixture
def worker(tinytl_home):
    """A worker on the test's queue, in a thread (the same loop as a worker process); set
    ``worker["runner"]`` to train with a stand-in for adapt()."""
    shutdown, holder = threading.Event(), {"runner": adapt}

    def runner(config, **kwargs):
        return holder["runner"](config, **kwargs)

    thread = threading.Thread(
        target=run_worker, kwargs=dict(shutdown=shutdown, runner=runner, poll_s=0.05, interval=0.1)
    )
    thread.start()
    yield holder
    shutdown.set()  # a job still training goes back to the queue
    thread.join(120)


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def megabytes(value: str) -> float:  # cards scale their unit to the value (format_bytes)
    number, unit = value.split()[:2]
    return float(number.replace(",", "")) * {"B": 1e-6, "KB": 1e-3, "MB": 1, "GB": 1e3, "TB": 1e6}[unit]


def test_every_page_renders(app):
    app.run()
    assert not app.exception
    assert app.sidebar.selectbox(key="backbone").value == "mobilenetv2_050"
    for page in PAGES:
        visit(app, page)
        assert app.sidebar.number_input(key="resolution").value == 32  # the sidebar follows every page
        if page in ("home", "memory_explorer"):
            assert app.get("plotly_chart"), page
        if page == "compare_runs":  # an empty results store
            assert any("No stored runs yet" in i.value for i in app.info)


def test_memory_explorer_follows_mode_accounting_and_measures(app):
    app.run()
    visit(app, "memory_explorer")
    full = metrics(app.segmented_control(key="mx_mode").set_value("full").run())
    bias = metrics(app.segmented_control(key="mx_mode").set_value("bias").run())
    assert megabytes(bias["Total"]) < megabytes(full["Total"])
    assert bias["Trainable params"] != full["Trainable params"]
    paper = metrics(app.segmented_control(key="mx_accounting").set_value("paper").run())
    assert paper["Total"] != bias["Total"]
    assert megabytes(paper["Grads + optimizer"]) == 0  # the paper does not count them
    app.button(key="mx_measure").click().run()
    assert not app.exception and not app.error
    measured = metrics(app)
    stock, engine = megabytes(measured["Stock PyTorch (measured)"]), megabytes(measured["Engine (measured)"])
    assert 0 < engine < stock
    peak_stock = megabytes(measured["Step peak, stock PyTorch (measured)"])
    assert 0 < megabytes(measured["Step peak, engine (measured)"]) < peak_stock  # the number a user checks
    assert len(app.get("plotly_chart")) == 4  # with memory over the step
    assert app.get("download_button")


def test_bad_input_gets_an_error_and_the_app_stays_usable(app):
    app.session_state["backbone"] = "vit_tiny_patch16_224"
    app.session_state["resolution"] = 8
    app.run()
    for page in ("home", "memory_explorer"):
        visit(app, page)
        assert any("too small" in e.value and "16 px" in e.value for e in app.error), page
    app.sidebar.selectbox(key="backbone").set_value("mobilenetv2_050").run()  # resets to its own 224 px
    assert app.sidebar.number_input(key="resolution").value == 224
    app.sidebar.number_input(key="resolution").set_value(1024).run()
    app.sidebar.number_input(key="batch_size").set_value(512).run()
    assert not app.exception
    assert any("needs about" in e.value and "Lower the batch size" in e.value for e in app.error)
    app.sidebar.number_input(key="batch_size").set_value(2).run()
    app.sidebar.number_input(key="resolution").set_value(32).run()
    assert not app.exception and not app.error and metrics(app)


def test_adapt_checks_uploads(app):
    app.run()
    visit(app, "adapt")
    app.selectbox(key="ad_dataset").set_value("upload").run()
    app.button(key="ad_start").click().run()
    assert any("Upload a valid .zip" in e.value for e in app.error)
    app.file_uploader(key="ad_upload").upload("bad.zip", b"not an archive", "application/zip").run()
    assert any("not a valid .zip" in e.value for e in app.error)
    app.file_uploader(key="ad_upload").upload("one.zip", image_zip(1), "application/zip").run()
    assert any("cannot use one" in e.value for e in app.error)
    app.file_uploader(key="ad_upload").upload("pets.zip", image_zip(2), "application/zip").run()
    assert not app.error and any("2 classes" in s.value for s in app.success)


def test_tiny_adaptation_appears_on_compare_runs(app, worker):
    first_step, release = threading.Event(), threading.Event()

    def held(config, *, progress, cancel, store):  # the real adapt(), held after its first step
        def on_event(event):
            progress(event)
            if isinstance(event, StepEvent) and event.step == 1:
                first_step.set()
                while not (release.is_set() or cancel.is_set()):
                    release.wait(0.05)

        return adapt(config, progress=on_event, cancel=cancel, store=store)

    worker["runner"] = held
    app.run()
    visit(app, "adapt")
    app.selectbox(key="ad_dataset").set_value("digits")
    app.multiselect(key="ad_modes").set_value(["bias"])
    app.number_input(key="ad_steps").set_value(3)
    app.number_input(key="ad_eval_every").set_value(0)
    app.number_input(key="ad_val_cap").set_value(2)
    app.toggle(key="ad_measure").set_value(False)
    app.button(key="ad_start").click().run()
    assert not app.exception and not app.error
    queue = JobQueue()
    (job,) = queue.list_jobs()  # the page queued this session's one run
    assert job.owner == app.session_state["session_id"] and job.label == "Digits (scikit-learn)"
    assert job.config.mode == "bias" and job.config.steps == 3
    # The live panel: this session's runs, a progress bar and the job's Cancel button.
    assert [s.value for s in app.subheader][:1] == ["Your runs"]
    assert app.get("progress") and app.button(key=f"cancel_{job.id}")
    assert first_step.wait(120), "the run did not reach its first step"
    deadline = time.monotonic() + 30
    while queue.get(job.id).step < 1 and time.monotonic() < deadline:  # the worker's next report
        time.sleep(0.05)
    app.run()
    assert any("step 1 of 3" in p.proto.text for p in app.get("progress"))  # the panel follows the run
    release.set()
    (done,) = queue.wait([job.id], timeout=150)
    assert done.state is JobState.FINISHED
    app.run()
    result = app.dataframe[0].value
    assert list(result["status"]) == ["finished"], result.to_dict("records")
    assert result["total modelled MB"].iloc[0] > 0  # headers from the quantities' metadata
    run_id = int(result["id"].iloc[0])
    assert run_id == done.run_id and ResultsStore().get_run(run_id)["status"] == "finished"
    (curves,) = app.get("vega_lite_chart")  # the run's curves: 3 steps, coloured as its mode
    assert "hconcat" in curves.proto.spec and f"job {job.id} bias" in curves.proto.spec

    visit(app, "compare_runs")
    table = app.dataframe[0].value
    assert run_id in list(table["id"]) and table.set_index("id").loc[run_id, "mode"] == "bias"
    app.run()  # the scatter comes in the page's second pass, after the table
    assert app.get("vega_lite_chart")  # the memory-accuracy scatter (the Plotly sections run once opened)


def test_an_unavailable_dataset_fails_with_a_message(app, worker):
    app.run()
    visit(app, "adapt")
    app.selectbox(key="ad_dataset").set_value("cifar10")
    app.multiselect(key="ad_modes").set_value(["bias", "full"])
    app.button(key="ad_start").click().run()
    queue = JobQueue()
    queue.wait([j.id for j in queue.list_jobs()], timeout=60)
    app.run()
    assert not app.exception
    errors = [e.value for e in app.error]
    assert any("failed" in e and "offline" in e and "built-in dataset" in e for e in errors), errors
    assert list(app.dataframe[0].value["status"]) == ["failed", "failed"]


def test_runs_queue_behind_another_sessions_and_cancel_is_own_only(app):
    queue = JobQueue()  # no worker: every job stays in line
    config = AdaptConfig(backbone="mobilenetv2_050", mode="full", dataset="shapes", steps=5)
    other = queue.submit(config, owner="another-session")
    app.run()
    visit(app, "adapt")
    assert not app.get("progress")  # another session's job is not this session's to see
    app.multiselect(key="ad_modes").set_value(["bias"])
    app.button(key="ad_start").click().run()
    assert not app.exception and not app.error  # no "busy" refusal: it queues
    (mine,) = queue.list_jobs(owner=app.session_state["session_id"])
    assert queue.position(mine.id) == 2
    (bar,) = app.get("progress")
    assert "1 job(s) ahead of it" in bar.proto.text
    assert any("0 training, 2 waiting" in c.value for c in app.caption)
    assert [b.key for b in app.button if b.key.startswith("cancel_")] == [f"cancel_{mine.id}"]
    app.button(key=f"cancel_{mine.id}").click().run()
    assert not app.exception
    assert queue.get(mine.id).state is JobState.CANCELLED and queue.get(other).state is JobState.QUEUED
    assert list(app.dataframe[0].value["status"]) == ["cancelled"]


def test_a_run_that_would_fail_once_built_is_refused_before_it_queues(app):
    """Batch 1 with BatchNorm at 32 px fails in the first training step: the page says so at Start (the
    model checked on `meta`), names the mode, and queues nothing -- a frozen-backbone mode alone queues."""
    app.run()
    app.sidebar.number_input(key="resolution").set_value(32).run()
    app.sidebar.number_input(key="batch_size").set_value(1).run()
    visit(app, "adapt")
    app.multiselect(key="ad_modes").set_value(["bias", "full"])
    app.button(key="ad_start").click().run()
    assert not app.exception
    errors = [e.value for e in app.error]
    assert any(e.startswith("Full fine-tuning: batch size 1 is too small") for e in errors), errors
    assert JobQueue().list_jobs() == []
    app.multiselect(key="ad_modes").set_value(["bias"])
    app.button(key="ad_start").click().run()
    assert not app.error and [j.config.mode for j in JobQueue().list_jobs()] == ["bias"]
