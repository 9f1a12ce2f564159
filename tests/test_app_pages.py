"""The Streamlit app under AppTest: every page renders, the Memory Explorer follows its controls, bad input
gets an error and the app stays usable, and a tiny adaptation started on Adapt lands on Compare runs."""

from __future__ import annotations

import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tinytl_core.adapt import AdaptConfig, AdaptResult, StepEvent, adapt
from tinytl_core.results import ResultsStore
from tinytl_core.ui import jobs
from tinytl_core.ui.jobs import JOBS, TrainingJob

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGES = ("home", "memory_explorer", "modes", "adapt", "compare_runs", "about")
TINY = {"backbone": "mobilenetv2_050", "resolution": 32, "batch_size": 2, "pretrained": False}


@pytest.fixture
def app(tinytl_home):
    """An AppTest of the whole app with a tiny configuration in the sidebar and its own data folder."""
    leftover = JOBS.job
    if leftover is not None and leftover.running:  # the slot is process-wide: free it of earlier tests' jobs
        leftover.cancel()
        assert leftover.wait(60)
    at = AppTest.from_file(APP, default_timeout=180)
    for key, value in TINY.items():
        at.session_state[key] = value
    yield at
    job = JOBS.job
    if job is not None:  # never leave a training behind for the next test
        job.cancel()
        job.wait(60)


def visit(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


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


def _zip(classes: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for c in range(classes):
            for i in range(3):
                image = io.BytesIO()
                Image.fromarray(np.full((8, 8, 3), 50 * c + i, dtype=np.uint8)).save(image, format="PNG")
                zf.writestr(f"class{c}/{i}.png", image.getvalue())
    return buffer.getvalue()


def test_adapt_checks_uploads(app):
    app.run()
    visit(app, "adapt")
    app.selectbox(key="ad_dataset").set_value("upload").run()
    app.button(key="ad_start").click().run()
    assert any("Upload a valid .zip" in e.value for e in app.error)
    app.file_uploader(key="ad_upload").upload("bad.zip", b"not an archive", "application/zip").run()
    assert any("not a valid .zip" in e.value for e in app.error)
    app.file_uploader(key="ad_upload").upload("one.zip", _zip(1), "application/zip").run()
    assert any("cannot use one" in e.value for e in app.error)
    app.file_uploader(key="ad_upload").upload("pets.zip", _zip(2), "application/zip").run()
    assert not app.error and any("2 classes" in s.value for s in app.success)


def test_tiny_adaptation_appears_on_compare_runs(app, monkeypatch):
    first_step, release = threading.Event(), threading.Event()

    def held(config, *, progress, cancel, store):  # the real adapt(), held after its first step
        def on_event(event):
            progress(event)
            if isinstance(event, StepEvent) and event.step == 1:
                first_step.set()
                while not (release.is_set() or cancel.is_set()):
                    release.wait(0.05)

        return adapt(config, progress=on_event, cancel=cancel, store=store)

    class HeldJob(TrainingJob):  # the job the page submits, trained by `held`
        def __init__(self, configs, **kwargs):
            super().__init__(configs, runner=held, **kwargs)

    monkeypatch.setattr(jobs, "TrainingJob", HeldJob)
    before = JOBS.job
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
    job = JOBS.job
    assert isinstance(job, HeldJob) and job is not before, "the page did not start this test's job"
    assert job.owner == app.session_state["session_id"]
    assert job.running  # held at its first step until released below
    # The live panel: this session's training, a progress bar and the job's Stop button.
    training = [s.value for s in app.subheader if s.value.startswith("Training")]
    assert training == ["Training mobilenetv2_050 on Digits (scikit-learn)"]  # not "started in another tab"
    assert app.get("progress") and app.button(key=f"stop_{job.job_id}")
    assert first_step.wait(120), "the run did not reach its first step"
    app.run()
    assert "step 1 of 3" in app.get("progress")[0].proto.text  # the panel follows the run
    release.set()
    assert job.wait(150), "the tiny run did not finish in time"
    app.run()
    result = app.dataframe[0].value
    assert list(result["status"]) == ["finished"], result.to_dict("records")
    assert result["total modelled MB"].iloc[0] > 0  # headers from the quantities' metadata
    run_id = int(result["id"].iloc[0])
    assert ResultsStore().get_run(run_id)["status"] == "finished"

    visit(app, "compare_runs")
    table = app.dataframe[0].value
    assert run_id in list(table["id"]) and table.set_index("id").loc[run_id, "mode"] == "bias"
    assert app.get("plotly_chart")  # the memory-accuracy scatter and the curves


def test_an_unavailable_dataset_fails_with_a_message(app):
    app.run()
    visit(app, "adapt")
    app.selectbox(key="ad_dataset").set_value("cifar10")
    app.multiselect(key="ad_modes").set_value(["bias", "full"])
    app.button(key="ad_start").click().run()
    assert JOBS.job.wait(60)
    app.run()
    assert not app.exception
    errors = [e.value for e in app.error]
    assert any("failed" in e and "offline" in e and "built-in dataset" in e for e in errors), errors
    assert list(app.dataframe[0].value["status"]) == ["failed", "failed"]


def test_a_second_training_gets_a_clear_message_and_stop_works(app):
    def blocked(config, *, progress, cancel, store):  # another tab's training, until someone stops it
        cancel.wait(60)
        return AdaptResult(config, status="cancelled" if cancel.is_set() else "finished")

    config = AdaptConfig(backbone="resnet18", mode="full", dataset="shapes", steps=5)
    job = JOBS.submit(TrainingJob([config], owner="another-session", runner=blocked))
    try:
        app.run()
        visit(app, "adapt")
        assert any("another tab" in s.value for s in app.subheader)
        app.button(key="ad_start").click().run()
        assert any("already going" in e.value and "wait for it to finish" in e.value for e in app.error)
        assert not [b for b in app.button if b.key == f"stop_{job.job_id}"]  # not this session's run
        job.cancel("another-session")  # its own session stops it
        assert job.wait(30)
    finally:
        job.cancel()
    app.run()
    assert not app.exception and any(s.value.startswith("Last run") for s in app.subheader)
    assert job.snapshot().modes[0].status == "cancelled"
