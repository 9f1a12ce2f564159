"""Issue 14, speed a user feels, without timing anything: Compare runs reads the runs table once per data
version (not on every rerun or new session), and its first view sends no Plotly figure (the browser's
loading of Plotly's bundle held the run table back); the Plotly sections run once opened."""

from __future__ import annotations

import pandas as pd
import pytest
from app_helpers import app_test
from streamlit.testing.v1 import AppTest

from tinytl_core.memory import MB
from tinytl_core.results import ResultsStore
from tinytl_core.ui.figures import MODE_COLORS
from tinytl_core.ui.runs import load_runs, restore_runs, runs_version
from tinytl_core.ui.vega import memory_accuracy_chart


def _save(store: ResultsStore, mode: str = "bias", total: float = 3e6, acc: float = 0.5) -> int:
    history = [
        {"kind": "step", "step": 1, "loss": 1.0, "train_acc": 0.5},
        {"kind": "eval", "step": 1, "val_acc": acc},
    ]
    return store.save_run(
        {
            "status": "finished",
            "backbone": "resnet18",
            "mode": mode,
            "dataset": "digits",
            "final_val_acc": acc,
            "best_val_acc": acc,
            "steps_done": 1,
            "history": history,
            "memory": {"total_modelled_bytes": total},
        }
    )


@pytest.fixture
def session(tinytl_home):
    return app_test


def _compare_runs(at: AppTest) -> AppTest:
    at.switch_page("app_pages/compare_runs.py").run()
    assert not at.exception, at.exception
    return at


def test_runs_version_follows_saves_deletes_and_restores(tinytl_home):
    store = ResultsStore()
    empty = runs_version(store)
    first = _save(store)
    one = runs_version(store)
    assert one != empty
    record = store.get_run(first)
    store.delete_run(first)
    assert runs_version(store) == empty  # the same runs: the same version
    restore_runs(store, [record])
    assert runs_version(store) == one  # back under its own id, with its own record
    _save(store)
    assert runs_version(store) not in (empty, one)
    loaded = load_runs(store)
    assert sorted(loaded.records) == sorted(loaded.frame["id"]) and len(loaded.records) == 2


def test_compare_runs_reads_the_runs_once_per_data_version(session, monkeypatch):
    store = ResultsStore()
    for mode in ("bias", "full"):
        _save(store, mode)
    reads = []
    real = ResultsStore.list_runs
    monkeypatch.setattr(ResultsStore, "list_runs", lambda self, **kw: reads.append(1) or real(self, **kw))
    at = _compare_runs(session())
    at.run()  # a rerun of the same session
    _compare_runs(session())  # a new session
    assert len(reads) == 1
    new_id = _save(store, "last")
    at.run()
    assert len(reads) == 2 and new_id in list(at.dataframe[0].value["id"])


def test_first_view_sends_no_plotly_figure_and_opened_sections_do(session):
    store = ResultsStore()
    for mode, total in (("bias", 3e6), ("full", 2e9), ("last", 5e8)):
        _save(store, mode, total)
    at = _compare_runs(session())
    assert not at.get("plotly_chart")  # no Plotly bundle for the browser to load on the first view
    # nor Vega's: the first view sends the table alone, the scatter follows in a second pass
    assert not at.get("vega_lite_chart") and len(at.dataframe) == 1
    assert "Drawing the memory" in " ".join(c.value for c in at.caption)
    at.run()  # the second pass (in the browser: the fragment's tick reruns the page)
    (chart,) = at.get("vega_lite_chart")  # the memory-accuracy scatter, drawn with Vega-Lite
    assert "Validation accuracy vs training memory" in chart.proto.spec
    at.session_state["cr_curves_open"] = True
    at.run()
    assert not at.exception and not at.get("plotly_chart")  # the curves, once opened: Vega-Lite too
    assert ["hconcat" in c.proto.spec for c in at.get("vega_lite_chart")] == [False, True]
    at.session_state["cr_groups_open"] = True
    at.run()
    assert not at.exception and len(at.get("plotly_chart")) == 1  # and the seed-grouped chart (Plotly)


def test_memory_accuracy_chart_colours_modes_and_scales_the_axis():
    frame = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "mode": ["full", "bias", "bias"],
            "backbone": ["resnet18", "resnet18", "mobilenetv2_050"],
            "total_modelled_MB": [2500.0, 300.0, None],
            "final_val_acc_pct": [90.0, 80.0, 70.0],
        }
    )
    data, spec = memory_accuracy_chart(frame, x="total_modelled_MB", x_label="training memory", title="t")
    assert list(data["id"]) == [1, 2]  # run 3 has no memory figure
    assert list(data["memory"]) == pytest.approx([2.5, 0.3])  # GB: the largest value reads best in it
    assert spec["encoding"]["x"]["title"] == "training memory (GB)"
    color = spec["encoding"]["color"]["scale"]
    assert color["domain"] == ["full", "bias"] and color["range"] == [
        MODE_COLORS["full"],
        MODE_COLORS["bias"],
    ]
    assert 2500 * MB / 1e9 == pytest.approx(data["memory"][0])
