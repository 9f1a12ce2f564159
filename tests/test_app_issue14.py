"""Issue 14 in the app (AppTest): an exception from a page's work is a short message, never a traceback
or a server path; deleting runs names exactly the runs it deletes and can be undone; another session's
run is not shown and has no Cancel button; an upload says what the server keeps."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_helpers import app_test, image_zip

import tinytl_core.modes
from tinytl_core.adapt import AdaptConfig
from tinytl_core.jobs import JobQueue
from tinytl_core.results import ResultsStore

ROOT = Path(__file__).resolve().parents[1]
SERVER_PATH = "/srv/tinytl/uploads/" + "x" * 300


@pytest.fixture
def app(tinytl_home):
    return app_test(resolution=48)


def visit(at, page):
    at.switch_page(f"app_pages/{page}.py").run()
    return at


def _no_traceback(at):
    assert not at.exception, at.exception
    shown = " ".join(str(e.value) for e in [*at.error, *at.markdown, *at.caption])
    assert "/srv" not in shown and "Traceback" not in shown and "xxxxxxxxxx" not in shown


def _raise(*args, **kwargs):
    raise OSError(36, "File name too long", SERVER_PATH)


@pytest.mark.parametrize(
    "page, target, name",
    [("modes", tinytl_core.modes, "compare_trainable"), ("compare_runs", ResultsStore, "list_runs")],
)
def test_an_exception_in_a_page_is_a_short_message(app, monkeypatch, caplog, page, target, name):
    monkeypatch.setattr(target, name, _raise)
    app.run()
    with caplog.at_level("ERROR", logger="tinytl_core.ui.pages"):
        visit(app, page)
    _no_traceback(app)
    (message,) = [e.value for e in app.error if "Something went wrong" in e.value]
    assert "file could not be read or written" in message and "reference" in message
    assert any("File name too long" in r.getMessage() or r.exc_info for r in caplog.records)  # in the log
    assert app.sidebar.selectbox(key="backbone").value == "mobilenetv2_050"  # the app stays usable


def test_streamlit_control_flow_passes_through_the_guard(app):
    app.run()
    visit(app, "compare_runs")  # empty store: the page calls st.stop() after its message
    assert not app.exception and not app.error
    assert any("No stored runs yet" in i.value for i in app.info)


def test_client_error_details_are_off():
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none"


def _store_runs(n):
    store = ResultsStore()
    for _ in range(n):
        store.save_run(
            {
                "status": "finished",
                "backbone": "resnet18",
                "mode": "bias",
                "dataset": "digits",
                "final_val_acc": 0.5,
                "best_val_acc": 0.5,
                "steps_done": 3,
            }
        )
    return store


def test_delete_names_exactly_its_runs_and_undo_brings_them_back(app):
    store = _store_runs(13)
    app.run()
    visit(app, "compare_runs")
    app.text_input(key="cr_delete_ids").input("#3").run()
    listed = [m.value for m in app.markdown if "will be deleted" in m.value]
    assert len(listed) == 1 and "#3 bias" in listed[0] and "#13" not in listed[0], listed
    sure = app.checkbox(key="cr_sure_3")
    assert sure.label == "Yes, delete #3"
    sure.check().run()
    app.button(key="cr_delete_button").click().run()
    assert not app.exception
    ids = {r["id"] for r in store.list_runs()}
    assert 3 not in ids and 13 in ids and len(ids) == 12
    assert any("Deleted 1 run(s): #3" in i.value for i in app.info)
    app.button(key="cr_undo").click().run()
    assert not app.exception and store.get_run(3)["id"] == 3 and store.count() == 13


def test_a_changed_selection_needs_a_new_confirmation(app):
    store = _store_runs(13)
    app.run()
    visit(app, "compare_runs")
    app.text_input(key="cr_delete_ids").input("3").run()
    app.checkbox(key="cr_sure_3").check().run()
    app.text_input(key="cr_delete_ids").input("3 13").run()
    assert not app.checkbox(key="cr_sure_3_13").value
    assert app.button(key="cr_delete_button").disabled
    assert store.count() == 13


def test_another_sessions_run_is_not_shown_and_has_no_cancel_button(app):
    queue = JobQueue()
    config = AdaptConfig(backbone="resnet18", mode="full", dataset="shapes", steps=5)
    job_id = queue.submit(config, owner="another-session")
    queue.claim("some-worker")  # training in a worker, for another session
    app.run()
    visit(app, "adapt")
    assert not app.exception and not app.get("progress")  # only this session's runs are listed
    assert not [b for b in app.button if b.key == f"cancel_{job_id}"]
    assert not queue.get(job_id).cancel_requested


def test_an_upload_says_what_is_kept(app):
    app.run()
    visit(app, "adapt")
    app.selectbox(key="ad_dataset").set_value("upload").run()
    app.file_uploader(key="ad_upload").upload("pets.zip", image_zip(2), "application/zip").run()
    assert not app.exception and any("2 classes" in s.value for s in app.success)
    assert any("kept on the server" in c.value and "pets" in c.value for c in app.caption)


def test_a_new_backbone_clears_the_rejected_resolutions_message(app):
    """The rejection says "Kept 48"; a backbone picked next sets its own resolution: the message goes."""
    at = visit(app.run(), "about")
    at.sidebar.number_input[0].set_value(5000).run()
    assert any("5,000" in e.value for e in at.sidebar.error)
    at.sidebar.selectbox[0].set_value("demo_mobilenetv2_050").run()
    assert at.session_state["resolution"] == 64
    assert not [e.value for e in at.sidebar.error if "resolution" in e.value.lower() or "5,000" in e.value]


def test_compare_runs_takes_damaged_and_foreign_records(app):
    """Hostile stored runs -- a history point with None/NaN values, an accuracy of inf or 1e300, a mode of
    another version -- neither break the page (curves, delete section) nor show as figures."""
    store = ResultsStore()
    base = {"status": "finished", "backbone": "resnet18", "dataset": "digits", "steps_done": 2}
    history = [
        {"kind": "step", "step": 1, "loss": float("nan"), "train_acc": None},
        {"kind": "step", "step": 2, "loss": 1.5, "train_acc": 0.5},
        {"kind": "eval", "step": 2, "val_acc": "x"},
    ]
    damaged = store.save_run({**base, "mode": "bias", "final_val_acc": float("inf"), "history": history})
    huge = store.save_run({**base, "mode": "bias", "final_val_acc": 1e300, "best_val_acc": -2.0})
    store.save_run({**base, "mode": "weird_mode", "final_val_acc": 0.5})
    app.run()
    visit(app, "compare_runs")
    _no_traceback(app)
    table = app.dataframe[0].value.set_index("id")
    assert table.loc[[damaged, huge], "final_val_acc_pct"].isna().all()  # shown as missing, not inf
    assert table.loc[huge, "best_val_acc_pct"] != table.loc[huge, "best_val_acc_pct"]  # NaN
    assert "weird_mode" in app.multiselect(key="cr_mode").options  # every stored run can be filtered to
    app.session_state["cr_curves_open"] = True
    app.run()
    app.multiselect(key="cr_runs").set_value([damaged]).run()
    _no_traceback(app)
    assert app.get("vega_lite_chart") and app.text_input(key="cr_delete_ids")  # the rest of the page too
    labels = app.multiselect(key="cr_runs").options
    assert not any("inf" in label or "e+" in label for label in labels), labels


def test_undo_puts_back_the_run_as_stored_not_as_shown(app):
    """The page shows runs through public_run (an upload by name, implausible figures as missing); Undo of
    a delete must restore the stored run itself, its server-side dataset and every figure included."""
    store = ResultsStore()
    path = "/srv/tinytl/uploads/pets-0123456789abcdef.zip"
    run_id = store.save_run(
        {"status": "finished", "backbone": "resnet18", "mode": "bias", "dataset": path, "best_val_acc": 2.0}
    )
    before = store.get_run(run_id)
    app.run()
    visit(app, "compare_runs")
    app.text_input(key="cr_delete_ids").input(str(run_id)).run()
    app.checkbox(key=f"cr_sure_{run_id}").check().run()
    app.button(key="cr_delete_button").click().run()
    _no_traceback(app)
    app.button(key="cr_undo").click().run()
    after = store.get_run(run_id)
    assert after["dataset"] == path and after["best_val_acc"] == 2.0
    assert {k: v for k, v in after.items() if k != "started_at"} == {
        k: v for k, v in before.items() if k != "started_at"
    }
