"""The app's library side (tinytl_core.ui): checks, explorer data, figures, background jobs, runs."""

from __future__ import annotations

import io
import threading
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from tinytl_core.adapt import AdaptConfig, AdaptResult, EvalEvent, PhaseEvent, StepEvent
from tinytl_core.backbones import LOCAL_BACKBONES
from tinytl_core.comparisons import mode_reports, table_from_reports
from tinytl_core.data import DatasetUnavailable
from tinytl_core.jobs import JobQueue, JobState, run_worker
from tinytl_core.memory import MB
from tinytl_core.memory.report import MEMORY, TOTALS
from tinytl_core.quantities import RunMemory, bytes_unit, format_bytes
from tinytl_core.results import ResultsStore
from tinytl_core.ui import checks, explorer, figures, runs, vega
from tinytl_core.ui.jobs import session_jobs, submit_modes
from tinytl_core.ui.text import docstring_markdown

TINY = {"resolution": 32, "batch_size": 2}


# ------------------------------------------------------------------------------------------- checks
def test_resolution_problem_explains_and_suggests():
    assert checks.resolution_problem("resnet18", 32) is None
    message = checks.resolution_problem("vit_tiny_patch16_224", 8)
    assert "too small" in message and "vit_tiny_patch16_224" in message
    assert "16 px" in message  # the smallest multiple of 16 that works: one patch
    assert checks.smallest_resolution("vit_tiny_patch16_224") == 16
    # said in plain words, not PyTorch's padded-input-size text
    assert "16x16 kernel (or patch) is larger than the 8x8 feature map" in message
    assert "Calculated padded" not in message and "Kernel size" not in message
    assert "2x2 kernel" in checks.resolution_problem("convnext_atto", 8)
    with pytest.raises(ValueError, match="unknown backbone"):
        checks.resolution_problem("not_a_model", 32)


def test_shape_errors_in_plain_words():
    from tinytl_core.backbones import plain_shape_error

    assert plain_shape_error("Output size is too small") == "a pooling layer's output would be empty"
    built = plain_shape_error("Input height (96) doesn't match model (224).")
    assert built == "it is built for 224 px inputs"
    assert plain_shape_error("odd") == "its forward pass fails (odd)"  # anything else is quoted, framed


def test_memory_problem_compares_with_free_memory():
    assert checks.memory_problem(1, "cpu") is None
    message = checks.memory_problem(10**18, "cpu", what="Training full")
    assert message.startswith("Training full needs about") and "Lower the batch size" in message


def test_pretrained_availability_offline():
    # conftest sets TINYTL_OFFLINE: uncached weights cannot be had, and nothing is downloaded.
    state = checks.pretrained_availability("mobilenetv2_050")
    assert state.state in ("cached", "unavailable")
    assert state.usable == (state.state == "cached")
    assert checks.pretrained_availability("coatnet_0_224").state == "none"  # timm has no weights
    for name, spec in LOCAL_BACKBONES.items():
        shipped = checks.pretrained_availability(name)
        assert shipped.state == ("cached" if spec.weights_path.is_file() else "unavailable")


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_uploads_are_checked(tinytl_home):
    with pytest.raises(ValueError, match="is empty"):
        checks.save_upload("a.zip", b"")
    with pytest.raises(ValueError, match="not a .zip file"):
        checks.save_upload("a.tar", b"data")
    with pytest.raises(ValueError, match="not a valid .zip"):
        checks.save_upload("a.zip", b"this is no archive")
    one_class = checks.save_upload("one.zip", _zip({"cats/a.png": _png(10), "cats/b.png": _png(20)}))
    with pytest.raises(ValueError, match=r"cannot use one\.zip: .*class"):
        checks.load_upload(one_class)
    data = _zip({f"{c}/{i}.png": _png(40 * k + i) for k, c in enumerate(("cats", "dogs")) for i in range(3)})
    path = checks.save_upload("../my pets!.zip", data)
    assert path.parent == tinytl_home / "uploads" and path.name.startswith("my_pets-")
    assert checks.save_upload("my pets!.zip", data) == path  # same content, same file
    assert "2 classes" in checks.load_upload(path).summary()


# ------------------------------------------------------------------------------------------ explorer
@pytest.fixture(scope="module")
def tiny_reports():
    return mode_reports("mobilenetv2_050", **TINY)


def test_components_add_up_to_the_totals(tiny_reports):
    table = table_from_reports(tiny_reports)
    long = explorer.components_frame(table)
    sums = long.groupby("mode")["MB"].sum()
    for _, row in table[table["applicable"]].iterrows():
        assert sums[row["mode"]] == pytest.approx(row[TOTALS.total_modelled_bytes] / MB)
    assert list(long["component"].unique()) == list(explorer.COMPONENT_LABELS)
    assert explorer.COMPONENT_LABELS[2] == explorer.label(TOTALS.activations_necessary_bytes)  # metadata
    fig = figures.mode_memory_bars(table, title="t", selected="bias")
    assert [t.type for t in fig.data].count("bar") == len(explorer.COMPONENTS)
    unit = bytes_unit(table[TOTALS.total_modelled_bytes].max())  # one unit for every bar label
    assert fig.data[-1].text[0] == format_bytes(table.loc[0, TOTALS.total_modelled_bytes], unit=unit)
    shown = explorer.totals_in_mb(table)
    assert "total_modelled_MB" in shown and TOTALS.total_modelled_bytes not in shown


def test_measured_step_stock_vs_engine(tiny_reports):
    report = tiny_reports["bias"]
    step = explorer.measure_mode("mobilenetv2_050", "bias", modelled=report, **TINY)
    assert step.stock_bytes > 0 and step.engine is not None, step.engine_error
    assert step.engine_bytes < step.stock_bytes / 5  # the engine drops what frozen layers keep
    table = explorer.layer_table(report, step)
    assert len(table) == len(report.layers)
    stock, engine = MEMORY.activations_measured_stock_bytes, MEMORY.activations_measured_engine_bytes
    assert table[stock].sum() <= step.stock_bytes
    assert table[engine].sum() <= step.engine_bytes
    assert table[stock].sum() > 0.9 * step.stock_bytes  # rows matched
    bias_table = table_from_reports({"bias": report})
    long = explorer.activation_frame(bias_table, {"bias": step})
    assert list(long["figure"]) == list(explorer.ACTIVATION_LABELS)
    assert long["MB"].iloc[2] == pytest.approx(step.stock_bytes / MB)
    fig = figures.layer_depth_chart(table, title="layers", log_y=True)
    assert len(fig.data) == len(figures.LAYER_SERIES) and fig.layout.yaxis.type == "log"
    assert len(figures.activation_bars(bias_table, {"bias": step}, title="a").data) == 4


def test_layer_table_without_measurement_is_a_copy_of_the_report(tiny_reports):
    report = tiny_reports["full"]
    before = report.layers.copy()
    table = explorer.layer_table(report)
    assert table.equals(report.layers)  # the modelled table as it is: no measured columns added
    assert not [c for c in table.columns if "measured" in c]
    table[TOTALS.activations_stock_bytes] = 0  # the page may change its table: the report stays as it was
    table["extra"] = 1
    assert report.layers.equals(before) and "extra" not in report.layers.columns


# ---------------------------------------------------------------------------------------------- jobs
class FakeRunner:
    """Stands in for adapt(): emits events, honours cancel, can block until released or fail."""

    def __init__(self, steps=3, fail_mode=None, error=None, gate=None, delay=0.0):
        self.steps, self.fail_mode, self.error, self.gate, self.delay = steps, fail_mode, error, gate, delay
        self.calls = []

    def __call__(self, config, *, progress, cancel, store):
        self.calls.append(config.mode)
        if self.error is not None:
            raise self.error
        if config.mode == self.fail_mode:
            raise RuntimeError("boom")
        progress(PhaseEvent("train", "training", 0.0))
        done = 0
        for step in range(1, self.steps + 1):
            if self.gate is not None:
                self.gate.wait(5)
            time.sleep(self.delay)
            if cancel.is_set():
                return AdaptResult(
                    config,
                    status="cancelled",
                    message=f"cancelled after {done} steps",
                    steps_done=done,
                    steps_planned=self.steps,
                )
            progress(StepEvent(step, self.steps, 0.1, 2.0 / step, 0.5, 1e-3, 10.0, 0.1))
            done = step
        progress(EvalEvent(self.steps, self.steps, 0.75, 0.9, 0.2, final=True))
        return AdaptResult(
            config,
            status="finished",
            steps_done=done,
            steps_planned=self.steps,
            final_val_acc=0.75,
            best_val_acc=0.75,
            memory=RunMemory(total_modelled_bytes=2e6),
            total_time_s=0.3,
            run_id=7,
        )


def configs(*modes):
    return [
        AdaptConfig(backbone="mobilenetv2_050", mode=m, dataset="digits", steps=3, record_memory=False)
        for m in modes
    ]


def work(queue, runner, jobs):
    """Train ``jobs`` queued jobs with ``runner`` in a worker (a thread here, the same loop as a process)."""
    thread = threading.Thread(
        target=run_worker,
        args=(queue.path,),
        kwargs=dict(runner=runner, max_jobs=jobs, poll_s=0.02, interval=0.02),
    )
    thread.start()
    return thread


def test_each_mode_is_a_job_and_the_session_sees_its_results(tmp_path):
    queue = JobQueue(tmp_path / "r.sqlite")
    ids = submit_modes(queue, configs("bias", "lite_residual+bias"), owner="me", label="Digits")
    queue.submit(configs("full")[0], owner="someone-else")
    work(queue, FakeRunner(), 3).join(20)
    mine = session_jobs(queue, "me")
    assert [v.job.id for v in mine.views] == ids and not mine.active and (mine.running, mine.queued) == (0, 0)
    assert [v.status for v in mine.views] == ["finished", "finished"] and mine.views[0].job.label == "Digits"
    assert [len(steps) for _, steps, _ in mine.series()] == [3, 3] and mine.views[0].evals[0][
        "val_acc"
    ] == 0.75
    frame = mine.results_frame()
    assert list(frame.columns) == [
        "mode",
        "status",
        "val acc %",
        "best val acc %",
        "steps",
        "total modelled MB",
        "total measured MB",
        "time s",
        "images/s",
        "id",
        "message",
    ]
    assert list(frame["mode"]) == ["bias", "lite_residual+bias"]
    assert list(frame["val acc %"]) == [75.0, 75.0] and list(frame["total modelled MB"]) == [2.0, 2.0]
    assert list(frame["id"]) == [7, 7] and list(frame["status"]) == ["finished", "finished"]
    assert frame["total measured MB"].isna().all()  # not measured: blank, not "None"


def test_a_failed_job_is_a_message_and_the_next_job_runs(tmp_path):
    queue = JobQueue(tmp_path / "r.sqlite")
    submit_modes(queue, configs("full", "bias"), owner="me", label="Digits")
    work(queue, FakeRunner(fail_mode="full"), 2).join(20)
    first, second = session_jobs(queue, "me").views
    assert first.status == "failed" and first.job.error == "boom" and first.unsuccessful
    assert second.status == "finished" and not second.unsuccessful


def test_a_missing_dataset_fails_each_job_with_what_to_do(tmp_path):
    queue = JobQueue(tmp_path / "r.sqlite")
    runner = FakeRunner(error=DatasetUnavailable("cifar10 is not downloaded and you are offline"))
    submit_modes(queue, configs("full", "bias"), owner="me", label="CIFAR-10")
    work(queue, runner, 2).join(20)
    views = session_jobs(queue, "me").views
    assert [v.status for v in views] == ["failed", "failed"]
    assert all(v.job.error == "cifar10 is not downloaded and you are offline" for v in views)


def test_cancel_stops_a_running_job_and_a_queued_one_at_once(tmp_path):
    queue = JobQueue(tmp_path / "r.sqlite")
    running, waiting = submit_modes(queue, configs("bias", "full"), owner="me", label="Digits")
    thread = work(queue, FakeRunner(steps=500, delay=0.01), 1)
    deadline = time.monotonic() + 20
    while queue.get(running).step < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    view = session_jobs(queue, "me").views[1]
    assert view.position == 1 and "next in line" in view.line()
    assert queue.cancel(waiting, "me").state is JobState.CANCELLED  # queued: at once
    queue.cancel(running, "me")
    thread.join(20)
    first, second = session_jobs(queue, "me").views
    assert first.status == "cancelled" and first.job.step < 500
    assert second.status == "cancelled" and "before it started" in second.job.error


def test_no_busy_refusal_a_second_submission_queues(tmp_path):
    queue = JobQueue(tmp_path / "r.sqlite")
    gate = threading.Event()
    (first,) = submit_modes(queue, configs("bias"), owner="a", label="Digits")
    thread = work(queue, FakeRunner(gate=gate), 2)
    try:
        deadline = time.monotonic() + 20
        while queue.get(first).state is JobState.QUEUED and time.monotonic() < deadline:
            time.sleep(0.01)
        (second,) = submit_modes(queue, configs("full"), owner="b", label="Digits")
        mine = session_jobs(queue, "b")
        assert mine.active and (mine.running, mine.queued) == (1, 1) and mine.views[0].position == 1
        assert "1 training, 1 waiting" in mine.queue_text(2) and "worker" in mine.queue_text(None)
    finally:
        gate.set()
        thread.join(20)
    assert [j.state for j in queue.list_jobs()] == [JobState.FINISHED, JobState.FINISHED]


def test_bad_submissions_are_refused_before_queueing(tmp_path):
    queue = JobQueue(tmp_path / "r.sqlite")
    with pytest.raises(ValueError, match="at least one mode"):
        submit_modes(queue, [], owner="me", label="x")
    with pytest.raises(ValueError, match="unknown mode"):
        submit_modes(queue, configs("everything"), owner="me", label="x")
    mixed = configs("bias") + [AdaptConfig(backbone="resnet18", mode="bias", dataset="digits", steps=3)]
    with pytest.raises(ValueError, match="same backbone and dataset"):
        submit_modes(queue, mixed, owner="me", label="x")
    assert queue.list_jobs() == []


def test_curves_chart_draws_steps_and_evals(tmp_path):
    queue = JobQueue(tmp_path / "r.sqlite")
    submit_modes(queue, configs("bias"), owner="me", label="Digits")
    work(queue, FakeRunner(), 1).join(20)
    data, spec = vega.curves_chart(session_jobs(queue, "me").series(), title="c")
    counts = data["curve"].value_counts().to_dict()
    assert counts == {vega.CURVE_LOSS: 3, vega.CURVE_TRAIN: 3, vega.CURVE_VAL: 1} and spec["title"] == "c"
    assert list(data.loc[data["curve"] == vega.CURVE_VAL, "value"]) == [75.0]  # a fraction drawn in %


# ---------------------------------------------------------------------------------------------- runs
def _record(**overrides):
    base = {
        "status": "finished",
        "backbone": "mobilenetv2_050",
        "mode": "bias",
        "dataset": "digits",
        "resolution": 32,
        "batch_size": 4,
        "steps_done": 3,
        "final_val_acc": 0.5,
        "memory": {MEMORY.total_modelled_bytes: 3_000_000},
        "history": [{"kind": "step", "step": 1, "loss": 2.0}],
    }
    base.update(overrides)
    return base


def test_runs_frame_filter_label_and_export(tmp_path):
    store = ResultsStore(tmp_path / "runs.sqlite")
    a = store.save_run(_record())
    b = store.save_run(
        _record(
            mode="full",
            dataset=str(tmp_path / "uploads" / "pets-1234.zip"),
            final_val_acc=None,
            memory=None,
            status="cancelled",
        )
    )
    frame = runs.runs_frame(store.list_runs())
    assert list(frame["id"]) == [b, a]
    x, title = runs.memory_axis(MEMORY.total_modelled_bytes)
    assert (x, title) == ("total_modelled_MB", "training memory (step peak), modelled (MB)")
    assert frame.set_index("id").loc[a, runs.ACCURACY.key] == 50.0
    assert frame.set_index("id").loc[a, x] == 3.0
    assert list(frame.columns) == list(runs.RUN_HEADERS) and runs.RUN_HEADERS[x] == "total modelled MB"
    assert frame.set_index("id").loc[b, "dataset"] == "pets-1234.zip"
    assert list(runs.filter_runs(frame, mode=["bias"], status=None)["id"]) == [a]
    assert len(runs.filter_runs(frame, mode=[])) == 2
    assert runs.run_label(frame.iloc[1]) == f"#{a} bias · mobilenetv2_050 · digits · 50.0%"
    text = runs.export_csv_text(store, [a])
    assert text.count("\n") == 2 and "digits" in text
    data, _ = vega.memory_accuracy_chart(frame, x=x, x_label=title, title="s")
    assert list(data["id"]) == [a]  # the run without memory or accuracy is left out


def test_lite_residual_diagram():
    dot = figures.lite_residual_dot()
    assert dot.startswith("digraph") and "group conv" in dot and "avg pool" in dot


def test_docstrings_become_markdown():
    doc = """Title line.

Rules (exact)
-------------
1. see :func:`tinytl_core.memory.analyze` and :class:`~tinytl_core.memory.MemoryReport`

Usage::

    convert(model)
"""
    text = docstring_markdown(doc)
    assert "##### Rules (exact)" in text and "-----" not in text
    assert "see `analyze` and `MemoryReport`" in text
    assert "Usage:\n" in text and "    convert(model)" in text


def test_trainable_bars_highlight_the_selected_mode():
    from tinytl_core.modes import compare_trainable
    from tinytl_core.reports import trainable_table

    table = trainable_table(compare_trainable("vit_tiny_patch16_224", resolution=32))
    fig = figures.trainable_bars(table, "bias", title="t")
    shown = [x for trace in fig.data for x in trace.x]
    assert "lite_residual" not in shown and "bias" in shown  # not applicable on a ViT: left out
    highlighted = [t for t in fig.data if t.marker.line.width]  # a neutral outline, the mode's own colour
    assert len(highlighted) == 1 and list(highlighted[0].x) == ["bias"]


def test_no_view_of_stored_runs_shows_an_uploads_server_path(tinytl_home):
    """The class: every way the app shows stored runs -- the runs table and its records (seed groups,
    curves, labels), the planner's accuracy, the CSV export, the sweep table -- names an upload by the
    user's own file name, never the server path it is kept at."""
    import csv
    import io as _io

    from tinytl_core.data import save_archive
    from tinytl_core.jobs import JobQueue
    from tinytl_core.planner.accuracy import accuracy_table, datasets_measured
    from tinytl_core.results import ResultsStore
    from tinytl_core.seeds import group_seeds
    from tinytl_core.ui.planner_view import stored_runs
    from tinytl_core.ui.runs import export_csv_text, load_runs
    from tinytl_core.ui.sweep import SweepStatus

    buffer = _io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("a/1.png", b"x")
    path = str(save_archive("my pets.zip", buffer.getvalue()))
    assert "/uploads/" in path
    config = AdaptConfig(dataset=path, mode="bias")
    store = ResultsStore()
    store.save_run(
        {
            "status": "finished",
            "backbone": "demo_mobilenetv2_050",
            "mode": "bias",
            "dataset": path,
            "resolution": 64,
            "batch_size": 8,
            "final_val_acc": 0.5,
            "message": f"loaded {path}",
            "config": config.to_dict(),
        }
    )
    loaded = load_runs(store)
    (record,) = loaded.records.values()
    assert list(loaded.frame["dataset"]) == ["my pets.zip"]
    assert record["dataset"] == record["config"]["dataset"] == "my pets.zip"
    assert list(group_seeds(loaded.records.values())["dataset"]) == ["my pets.zip"]
    assert datasets_measured(accuracy_table(stored_runs())) == ["my pets.zip"]
    text = export_csv_text(store)
    assert "uploads" not in text and "my pets.zip" in text
    (row,) = list(csv.DictReader(_io.StringIO(text)))
    assert row["dataset"] == "my pets.zip" and '"dataset": "my pets.zip"' in row["config"]
    queue = JobQueue()
    queue.submit(config, owner="me")
    frame = SweepStatus("s", queue.list_jobs(), "me").frame()
    assert "uploads" not in frame.to_string()


def test_a_measurement_that_cannot_run_says_why_in_words():
    """Measure a real step at batch 1 with BatchNorm where a map is 1x1: the message Adapt gives, not
    PyTorch's 'Expected more than 1 value per channel ... torch.Size([1, 96, 1, 1])'."""
    with pytest.raises(ValueError) as info:
        explorer.measure_mode("demo_mobilenetv2_050", "full", resolution=8, batch_size=1, device="cpu")
    text = str(info.value)
    assert text.startswith("batch size 1 is too small for BatchNorm") and "torch.Size" not in text


def test_the_scatter_scales_sizes_that_were_not_rounded_first():
    """runs_frame keeps sizes unrounded: 5,172 bytes is drawn at 5.17 KB (rounded to 0.01 MB first, it was
    drawn at 10 KB; under 5 KB, at 0)."""
    from tinytl_core.ui import vega
    from tinytl_core.ui.runs import runs_frame

    base = {"status": "finished", "backbone": "b", "mode": "bias", "dataset": "d", "final_val_acc": 0.5}
    frame = runs_frame([{**base, "id": 1, "activations_measured_bytes": 5172}])
    data, spec = vega.memory_accuracy_chart(
        frame, x="activations_measured_MB", x_label="activations", title="t"
    )
    assert data["memory"].iloc[0] == pytest.approx(5.172) and spec["encoding"]["x"]["title"].endswith("(KB)")


def test_the_runs_table_takes_the_unit_each_size_column_calls_for():
    """No size reads 0.00 (a 1 KB figure in MB) or 110,150.00 (110 GB in MB): each size column of the
    runs table in its own unit, named in its header; the frame's MB columns stay for the chart."""
    from tinytl_core.ui.runs import runs_frame, table_display

    base = {"status": "finished", "backbone": "b", "mode": "bias", "dataset": "d"}
    runs = [{**base, "id": 1, "total_modelled_bytes": 1000, "activations_measured_bytes": 110e9}]
    frame = runs_frame(runs)
    shown, formats = table_display(frame)
    assert formats["total_modelled_MB"] == ("total modelled KB", "%.2f")
    assert shown["total_modelled_MB"][0] == 1
    assert formats["activations_measured_MB"][0] == "act. measured GB"
    assert shown["activations_measured_MB"][0] == pytest.approx(110)
    assert frame["total_modelled_MB"][0] == pytest.approx(0.001)  # the chart's column untouched
