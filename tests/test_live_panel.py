"""Issue 13, watching a run: the Adapt page's live panel reads only new job events (a :class:`JobWatch` per
session) and draws the curves with Vega-Lite (``vega.curves_chart``), rebuilt only when an event arrived."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tinytl_core.adapt import AdaptConfig
from tinytl_core.jobs import JobQueue, JobState
from tinytl_core.ui import figures, vega
from tinytl_core.ui.jobs import JobWatch, session_jobs

WORKER = "host:1"


def _config(mode: str) -> AdaptConfig:
    return AdaptConfig(backbone="mobilenetv2_050", mode=mode, dataset="digits", steps=6, record_memory=False)


def _report(queue: JobQueue, job_id: int, first: int, last: int) -> None:
    """Steps ``first..last`` of a job (an evaluation every third step), as a worker reports them."""
    for s in range(first, last + 1):
        events = [
            (0.0, "phase", {"phase": "train"}),
            (0.0, "step", {"step": s, "loss": 1 / s, "train_acc": 0.1}),
        ]
        if s % 3 == 0:
            events.append((0.0, "eval", {"step": s, "val_acc": s / 10}))
        queue.report(job_id, WORKER, events, step=s, total_steps=6)


def _snapshot(mine):
    return (
        [(v.job, v.position, v.steps, v.evals, v.last_event) for v in mine.views],
        mine.running,
        mine.queued,
    )


def test_reading_only_new_events_gives_what_a_full_read_gives(tmp_path, monkeypatch):
    queue = JobQueue(tmp_path / "r.sqlite")
    first, second, third = queue.submit_many([_config(m) for m in ("bias", "full", "last")], owner="me")
    queue.submit(_config("bias"), owner="someone-else")
    asked = []
    since = queue.events_since
    monkeypatch.setattr(
        queue, "events_since", lambda seen, **kw: asked.append(dict(seen)) or since(seen, **kw)
    )
    watch = JobWatch()

    def poll():
        asked.clear()
        mine = watch.read(queue, "me")
        incremental = list(asked)
        full = session_jobs(queue, "me")
        assert _snapshot(mine) == _snapshot(full)
        for view in mine.views:  # and what the store holds, in order
            stored = queue.events(view.job.id, kinds=("step", "eval")) if view.job.started_at else []
            assert view.steps == tuple(e.data for e in stored if e.kind == "step")
            assert view.evals == tuple(e.data for e in stored if e.kind == "eval")
        return mine, incremental

    mine, asked_for = poll()  # all queued: nothing to read
    assert [v.position for v in mine.views] == [1, 2, 3] and asked_for == [{}]
    queue.claim(WORKER)
    _report(queue, first, 1, 2)
    mine, asked_for = poll()
    assert asked_for == [{first: 0}] and len(mine.views[0].steps) == 2 and mine.views[1].position == 1
    seen = mine.views[0].last_event
    _report(queue, first, 3, 4)
    mine, asked_for = poll()
    assert asked_for == [{first: seen}] and len(mine.views[0].steps) == 4  # only those after the last seen
    _report(queue, first, 5, 6)
    queue.finish(first, WORKER, JobState.FINISHED, run_id=1, result={"final_val_acc": 0.6})
    mine, _ = poll()  # the job ended: its last events are read
    assert mine.views[0].job.ended and len(mine.views[0].steps) == 6 and len(mine.views[0].evals) == 2
    queue.claim(WORKER)
    _report(queue, second, 1, 1)
    mine, asked_for = poll()
    assert asked_for == [{first: mine.views[0].last_event, second: 0}]
    # A worker shutting down requeues its job (its events dropped); claimed again, it starts over.
    assert queue.requeue(second, WORKER)
    mine, _ = poll()
    assert mine.views[1].steps == () and mine.views[1].position == 1
    queue.claim(WORKER)
    _report(queue, second, 1, 3)
    mine, _ = poll()
    assert [s["step"] for s in mine.views[1].steps] == [1, 2, 3]
    assert queue.requeue(second, WORKER) and queue.claim(WORKER).id == second  # both between two polls
    _report(queue, second, 1, 2)
    mine, _ = poll()
    assert [s["step"] for s in mine.views[1].steps] == [1, 2]
    queue.cancel(second, "me")
    _report(queue, second, 4, 4)
    queue.finish(second, WORKER, JobState.CANCELLED, error="stopped")
    queue.claim(WORKER)
    _report(queue, third, 1, 6)
    queue.finish(third, WORKER, JobState.FINISHED, run_id=2, result={"final_val_acc": 0.5})
    mine, _ = poll()
    assert [v.status for v in mine.views] == ["finished", "cancelled", "finished"]
    assert not mine.active and [len(v.steps) for v in mine.views] == [6, 3, 6]
    # Housekeeping deletes events: pruned once the runs are stored (their history keeps the curves).
    queue.prune_events(keep_days=0)
    mine, asked_for = poll()
    assert len(asked_for) == 2 and [len(v.steps) for v in mine.views] == [0, 3, 0]


def test_a_long_runs_thinned_steps_are_read_again(tmp_path):
    queue = JobQueue(tmp_path / "r.sqlite")
    (job,) = queue.submit_many([_config("bias")], owner="me")
    queue.claim(WORKER)
    watch = JobWatch()
    for s in range(1, 13):
        queue.report(
            job, WORKER, [(0.0, "step", {"step": s, "loss": 1.0, "train_acc": 0.5})], max_step_events=8
        )
        mine = watch.read(queue, "me")
        assert mine.views[0].steps == session_jobs(queue, "me").views[0].steps
    kept = [e["step"] for e in mine.views[0].steps]
    assert len(kept) < 12 and kept[-1] == 12  # steps this session had read were deleted meanwhile


def test_chart_and_results_are_rebuilt_only_when_something_changed(tmp_path):
    queue = JobQueue(tmp_path / "r.sqlite")
    (job,) = queue.submit_many([_config("bias")], owner="me")
    watch = JobWatch()
    assert watch.curves(watch.read(queue, "me")) is None  # queued: no curve yet
    queue.claim(WORKER)
    _report(queue, job, 1, 2)
    mine = watch.read(queue, "me")
    chart, results = watch.curves(mine), watch.results(mine)
    again = watch.read(queue, "me")  # nothing new: the very same objects go to the page
    assert watch.curves(again) is chart and watch.results(again) is results
    _report(queue, job, 3, 3)
    newer = watch.read(queue, "me")
    data, _ = watch.curves(newer)
    assert data is not chart[0] and data["step"].max() == 3
    assert list(watch.results(newer)["steps"]) == [3]


def test_curves_chart_two_panels_mode_colours_whole_steps_and_markers():
    steps = [{"step": s, "loss": 2.0 / s, "train_acc": s / 10} for s in range(1, 6)]
    evals = [{"step": 5, "val_acc": 0.5}]
    data, spec = vega.curves_chart(
        [("#1 bias", steps, evals), ("#2 lite_residual+bias", steps[:2], []), ("#3 full", [], [])], title="t"
    )
    assert set(data["run"]) == {"#1 bias", "#2 lite_residual+bias"}  # a series without a point is left out
    loss, accuracy = spec["hconcat"]
    scale = loss["encoding"]["color"]["scale"]
    assert scale["domain"] == ["#1 bias", "#2 lite_residual+bias"]
    assert scale["range"] == [figures.MODE_COLORS["bias"], figures.MODE_COLORS["lite_residual+bias"]]
    assert accuracy["encoding"]["color"] == loss["encoding"]["color"]  # one legend of runs
    assert loss["transform"] == [{"filter": {"field": "curve", "equal": vega.CURVE_LOSS}}]
    assert accuracy["encoding"]["y"]["scale"]["domain"] == [0, 100]
    marks = {
        layer["transform"][0]["filter"]["equal"] + " " + layer["mark"]["type"] for layer in accuracy["layer"]
    }
    assert marks == {f"{vega.CURVE_TRAIN} line", f"{vega.CURVE_VAL} line", f"{vega.CURVE_VAL} point"}
    train = next(
        layer for layer in accuracy["layer"] if layer["transform"][0]["filter"]["equal"] == vega.CURVE_TRAIN
    )
    assert train["mark"]["strokeDash"]  # dotted
    for panel in (loss, accuracy):
        assert panel["encoding"]["x"]["axis"] == {"tickMinStep": 1, "format": "d"}
    rows = data[data["run"] == "#1 bias"]
    assert list(rows.loc[rows["curve"] == vega.CURVE_TRAIN, "value"]) == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert list(rows.loc[rows["curve"] == vega.CURVE_VAL, "value"]) == [50.0]
    assert list(rows.loc[rows["curve"] == vega.CURVE_LOSS, "step"]) == [1, 2, 3, 4, 5]


def test_inline_spec_is_self_contained_json():
    steps = [{"step": 1, "loss": math.nan, "train_acc": 0.5}]  # a diverged run's loss: left out
    data, spec = vega.curves_chart([("#1 bias", steps, [])])
    assert list(data["curve"]) == [vega.CURVE_TRAIN]
    data.loc[len(data)] = ["#1 bias", 2, vega.CURVE_LOSS, math.nan]  # a NaN that reaches the spec anyway
    full = json.loads(json.dumps(vega.inline_spec(data, spec), allow_nan=False))  # valid JSON, no NaN
    assert full["$schema"].endswith("v5.json") and full["hconcat"] == spec["hconcat"]
    assert full["data"]["values"][1] == {"run": "#1 bias", "step": 2, "curve": vega.CURVE_LOSS, "value": None}
    assert "data" not in spec  # the builder's spec is left as it was


def test_the_server_skips_streamlits_full_collection_after_each_rerun():
    # Every poll of a watching session is a fragment rerun; a full gc pass over the ~480k objects of
    # PyTorch, timm and pandas after each was most of what watching cost the server (README, Job queue).
    import tomllib

    config = tomllib.loads((Path(__file__).resolve().parents[1] / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["postScriptGC"] is False
