"""The adaptation loop: learning, progress events, cancel, non-finite guard, determinism, recording."""

import json
import math
import threading

import pytest

from tinytl_core.adapt import AdaptConfig, EvalEvent, PhaseEvent, StepEvent, adapt
from tinytl_core.data import load_dataset
from tinytl_core.quantities import RunMemory, RunStatus
from tinytl_core.results import MEMORY, ResultsStore


def tiny(**overrides) -> AdaptConfig:
    """resnet10t from random init at 32 px on the digits: learns within a few dozen steps on a CPU."""
    base = {
        "backbone": "resnet10t",
        "mode": "full",
        "dataset": "digits",
        "steps": 6,
        "batch_size": 8,
        "lr": 3e-3,
        "resolution": 32,
        "pretrained": False,
        "record_memory": False,
        "device": "cpu",
        "val_cap": 10,
    }
    base.update(overrides)
    return AdaptConfig(**base)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits, loaded once for the module (10 validation images per class)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TINYTL_HOME", str(tmp_path_factory.mktemp("home")))
    try:
        yield load_dataset("digits", val_cap=10)
    finally:
        mp.undo()


def test_tiny_backbone_learns_well_above_chance(digits):
    events = []
    result = adapt(tiny(steps=40, batch_size=16, eval_every=20), data=digits, progress=events.append)
    assert result.status == "finished" and result.steps_done == 40
    assert result.final_val_acc > 0.5  # chance is 0.1 (10 classes); typically ~0.9 here
    steps = [e for e in events if isinstance(e, StepEvent)]
    evals = [e for e in events if isinstance(e, EvalEvent)]
    assert isinstance(events[0], PhaseEvent) and events[0].phase == "data"
    assert [e.step for e in steps] == list(range(1, 41)) and all(e.total_steps == 40 for e in steps)
    assert [(e.step, e.final) for e in evals] == [(20, False), (40, True)]
    assert steps[-1].loss < steps[0].loss and steps[-1].images_per_s > 0 and 0 <= steps[-1].train_acc <= 1
    assert steps[-1].lr < steps[0].lr  # cosine schedule
    assert len(result.steps) == 40 and len(result.evals) == 2 and result.best_val_acc >= result.final_val_acc
    assert result.n_train == len(digits.train) and result.num_classes == 10 and result.resolution == 32
    assert "val acc" in result.summary() and result.memory is None


def test_same_seed_same_result_on_cpu(digits):
    a = adapt(tiny(seed=5), data=digits)
    b = adapt(tiny(seed=5), data=digits)
    c = adapt(tiny(seed=6), data=digits)
    assert [s["loss"] for s in a.steps] == [s["loss"] for s in b.steps]
    assert a.final_val_acc == b.final_val_acc and a.final_val_loss == b.final_val_loss
    assert [s["loss"] for s in a.steps] != [s["loss"] for s in c.steps]


def test_memory_figures_are_recorded_without_changing_training(digits, tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    plain = adapt(tiny(mode="bias", steps=3), data=digits)
    measured = adapt(tiny(mode="bias", steps=3, record_memory=True), data=digits, store=store)
    assert [s["loss"] for s in plain.steps] == [s["loss"] for s in measured.steps]
    mem = measured.memory
    assert isinstance(mem, RunMemory) and mem.weights_bytes > 0 and mem.activations_measured_bytes > 0
    assert mem.total_modelled_bytes >= mem.weights_bytes + mem.grads_optimizer_bytes
    # The run trains on the engine (the default): its measured figure is the engine's, stock's beside it.
    assert measured.engine_layers > 0 and "img/s, engine)" in measured.summary()
    assert mem.activations_measured_bytes == mem.activations_measured_engine_bytes
    assert mem.activations_measured_engine_bytes < mem.activations_measured_stock_bytes / 5
    row = store.get_run(measured.run_id)
    assert row[MEMORY.total_modelled_bytes] == int(mem.total_modelled_bytes)
    assert row["status"] == RunStatus.FINISHED
    assert row["config"]["mode"] == "bias" and len(row["history"]) == 4 and row["versions"]["torch"]
    assert row["config"]["engine"] is True
    stock = MEMORY.activations_measured_stock_bytes
    assert row[stock] == int(mem.activations_measured_stock_bytes)  # a column of its own since schema 2
    assert RunMemory.from_dict(row["memory"]) == mem  # the JSON reads back as the run's figures


def test_engine_and_stock_layers_train_alike(digits):
    """Same seed with and without the training engine: the same losses (gradients equal stock's)."""
    on = adapt(tiny(mode="lite_residual+bias", steps=4), data=digits)
    off = adapt(tiny(mode="lite_residual+bias", steps=4, engine=False), data=digits)
    assert on.engine_layers > 0 and off.engine_layers == 0 and not off.config.engine
    losses_on, losses_off = [s["loss"] for s in on.steps], [s["loss"] for s in off.steps]
    assert losses_on == pytest.approx(losses_off, rel=1e-5, abs=1e-6)
    assert losses_on[0] != losses_on[-1]  # it trained


def test_cancel_from_another_thread_returns_partial_result(digits, tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    cancel = threading.Event()
    seen = []

    def on_progress(event):  # what an app page's worker would do: just record and let the UI poll
        seen.append(event)
        if isinstance(event, StepEvent) and event.step == 3:
            cancel.set()

    out = {}
    worker = threading.Thread(
        target=lambda: out.update(
            r=adapt(tiny(steps=50), data=digits, progress=on_progress, cancel=cancel, store=store)
        )
    )
    worker.start()
    worker.join(120)
    result = out["r"]
    assert result.status == "cancelled" and result.steps_done == 3 and "3 of 50" in result.message
    assert not any(isinstance(e, EvalEvent) for e in seen) and result.final_val_acc is None
    row = store.get_run(result.run_id)
    assert row["status"] == "cancelled" and row["steps_done"] == 3 and len(row["history"]) == 3


def test_non_finite_loss_stops_the_run_as_diverged(digits, tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    result = adapt(tiny(optimizer="sgd", lr=1e30, steps=20), data=digits, store=store)
    assert result.status == RunStatus.DIVERGED and result.steps_done < 20
    assert "loss became nan" in result.message and "lower learning rate" in result.message
    assert store.get_run(result.run_id)["status"] == "diverged"


def test_an_exploding_but_finite_loss_stops_the_run_as_diverged(digits, tmp_path):
    """lr 1e6 with Adam: the loss climbs into the billions without becoming NaN; it must not be stored as
    finished at chance."""
    store = ResultsStore(tmp_path / "r.sqlite")
    result = adapt(tiny(lr=1e6, steps=40), data=digits, store=store)
    assert result.status == RunStatus.DIVERGED and result.steps_done < 40, result.summary()
    assert "lower learning rate (now 1e+06)" in result.message
    assert "exploded" in result.message or "loss became" in result.message
    assert store.get_run(result.run_id)["status"] is RunStatus.DIVERGED


@pytest.mark.parametrize(("lr", "steps"), [(1e6, 3), (1e3, 2), (1e6, 1), (1e30, 1), (1e30, 3)])
def test_a_run_too_short_for_the_patience_still_stops_as_diverged(digits, tmp_path, lr, steps):
    """The class: however short the run, exploded or non-finite weights at the end are `diverged`, never
    `finished` at chance (3 steps at lr 1e6 ended with a NaN validation loss, stored as finished)."""
    store = ResultsStore(tmp_path / "r.sqlite")
    result = adapt(tiny(lr=lr, steps=steps), data=digits, store=store)
    assert result.status == RunStatus.DIVERGED, result.summary()
    assert "lower learning rate" in result.message
    row = store.get_run(result.run_id)
    assert row["status"] is RunStatus.DIVERGED
    assert row["final_val_loss"] is None or math.isfinite(row["final_val_loss"])
    if row["final_val_loss"] is None:  # NaN weights: their (chance) accuracy is no figure of this run
        assert row["final_val_acc"] is None
    json.dumps(row["history"], allow_nan=False)  # valid JSON: no NaN in the stored history


def test_a_collapsing_accuracy_stops_the_run_as_diverged(digits, monkeypatch):
    import tinytl_core.adapt as adapt_module

    accuracies = iter([0.9, 0.05])  # well above chance (10 classes), then back to chance
    monkeypatch.setattr(adapt_module, "_evaluate", lambda *a: (next(accuracies), 1.0))
    result = adapt(tiny(steps=4, eval_every=2), data=digits)
    assert result.status == RunStatus.DIVERGED and "accuracy collapsed to 5.0%" in result.message


def test_settings_the_run_adjusts_are_recorded_as_they_ran_and_said(tinytl_home, tmp_path):
    """batch 100000 on 30 training images trains on all 30: record batch 30, images/s from the images
    actually seen, memory modelled at batch 30; shots / val_cap beyond the data and rounded epochs are
    said too."""
    store = ResultsStore(tmp_path / "r.sqlite")
    events = []
    config = tiny(
        batch_size=100000,
        steps=None,
        epochs=1.5,
        shots=1000,
        val_cap=1000,
        record_memory=True,
        measure_memory=False,
    )
    data = load_dataset("digits", shots=3, val_cap=2)  # 30 training images, 20 validation
    result = adapt(config, data=data, store=store, progress=events.append)
    assert result.status == RunStatus.FINISHED and result.n_train == 30
    assert result.batch_size == 30 and result.images_seen == 30 * result.steps_done == 60
    assert result.images_per_s == pytest.approx(60 / result.train_time_s)
    assert all(e.images_per_s < 30 * e.step / 1e-9 for e in events if isinstance(e, StepEvent))
    assert result.memory is not None and result.memory.total_modelled_bytes > 0
    row = store.get_run(result.run_id)
    assert row["batch_size"] == 30 and row["config"]["batch_size"] == 100000  # what ran; what was asked
    notes = " | ".join(result.notes)
    assert "batch size 100000 is larger than the 30 training images" in notes
    assert "1.5 epochs asked for: 2 whole step(s) of 30 images make 2 epochs" in notes
    assert "shots 1000 is more than the data has: at most 3 training images" in notes
    assert "val_cap 1000 is more than the data has: at most 2 validation images" in notes
    assert all(n in row["message"] for n in result.notes) and "batch size 100000" in result.summary()
    assert [e.message for e in events if isinstance(e, PhaseEvent) and e.phase == "note"] == result.notes


def test_a_resolution_that_collapses_the_feature_maps_is_said(digits):
    result = adapt(tiny(resolution=16, steps=1), data=digits)
    assert result.status == RunStatus.FINISHED
    assert any("16 px is below 32 px" in n and "Use at least 32 px" in n for n in result.notes)
    assert not adapt(tiny(steps=1), data=digits).notes  # 32 px: the last stage is 1x1, nothing to say


def test_unexpected_error_is_recorded_as_failed_and_raised(digits, tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")

    def boom(event):
        if isinstance(event, StepEvent) and event.step == 2:
            raise RuntimeError("display crashed")

    with pytest.raises(RuntimeError, match="display crashed"):
        adapt(tiny(), data=digits, progress=boom, store=store)
    (row,) = store.list_runs()
    assert row["status"] == "failed" and "display crashed" in row["message"] and row["steps_done"] == 2


def test_folder_with_bad_files_trains_on_the_rest_with_batch_size_one(tinytl_home, tmp_path):
    from PIL import Image

    for name, color in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (tmp_path / "pics" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (20 + i, 16), color).save(tmp_path / "pics" / name / f"{i}.png")
    (tmp_path / "pics" / "red" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "pics" / "blue" / "readme.txt").write_text("hello")
    store = ResultsStore()
    config = tiny(
        dataset=str(tmp_path / "pics"),
        batch_size=1,
        epochs=1,
        steps=None,
        val_fraction=0.25,
        val_cap=None,
        resolution=64,
    )
    result = adapt(config, store=store)
    assert result.status == "finished" and result.skipped_files == 2
    assert result.n_train == 6 and result.n_val == 2 and result.steps_planned == 6 == result.steps_done
    assert store.get_run(result.run_id)["skipped_files"] == 2
    # At 32 px resnet10t's last feature map is 1x1: one image gives BatchNorm nothing to normalise over.
    # Refused before the dataset loads (checked on `meta`), so no failed run is left in the store.
    with pytest.raises(ValueError, match="batch size 1 is too small.*GroupNorm"):
        adapt(AdaptConfig.from_dict({**config.to_dict(), "resolution": 32}), store=store)
    assert [r["id"] for r in store.list_runs()] == [result.run_id]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 1.0}, "either steps or epochs"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of"),
        ({"lr": -1.0}, "learning rate"),
        ({"batch_size": 0}, "batch size must be 1 to"),
        ({"label_smoothing": 1.0}, "label smoothing"),
        ({"mode": "everything"}, "unknown mode"),
        ({"device": "cuda:7"}, "CUDA is not available"),
        ({"backbone": "resnet5O"}, "unknown backbone 'resnet5O'. Did you mean: resnet50"),
        ({"dataset": "digitz"}, "unknown dataset 'digitz'"),
        ({"shots": 0}, "images per class must be 1 to"),
        ({"val_fraction": 1.0}, "validation fraction must be more than 0"),
        ({"resolution": 100_000}, "resolution must be 8 to 1,024"),
        ({"seed": 10**30}, "seed must be 0 to"),
        ({"epochs": float("inf"), "steps": None}, "epochs must be a finite number"),
        # None where a number is needed, a float where a whole number is, and odd types: clear, not a
        # TypeError from deep inside the run
        ({"lr": None}, "learning rate must be a number, got None"),
        ({"seed": None}, "seed must be a number, got None"),
        ({"batch_size": None}, "batch size must be a number, got None"),
        ({"label_smoothing": None}, "label smoothing must be a number"),
        ({"val_fraction": None}, "validation fraction must be a number"),
        ({"seed": 1.5}, "seed must be a whole number"),
        ({"seed": 2**70}, "got 1,180,591,620,717,411,303,424$"),  # an int stays one, not 1.18e+21
        ({"resolution": 40.5}, "resolution must be a whole number"),
        ({"momentum": "x"}, "momentum must be a number"),
        ({"momentum": float("inf")}, "momentum must be a finite number"),
        ({"weight_decay": float("nan")}, "weight decay must be a finite number"),
        ({"weight_decay": None}, "weight decay must be a number"),
        ({"device": None}, "unknown device None"),
        ({"device": "mps"}, "unknown device 'mps'"),
    ],
)
def test_bad_configuration_is_a_clear_error(overrides, message, tmp_path):
    import torch

    if "device" in overrides and torch.cuda.is_available():
        pytest.skip("CUDA present")
    store = ResultsStore(tmp_path / "r.sqlite")
    with pytest.raises(ValueError, match=message):
        adapt(tiny(**overrides), store=store)
    assert store.count() == 0


def test_a_step_that_does_not_fit_in_free_memory_is_refused_before_training(digits, tmp_path, monkeypatch):
    """The class: a run whose modelled step exceeds the free memory used to start anyway (the memory
    figures' own check only dropped the figures) and end in the OOM killer or a CUDA error, taking a
    worker with it. It is refused before training, with the batch and size it would train at, and nothing
    is stored."""
    import importlib

    from tinytl_core.memory import MemoryLimitError

    measure_module = importlib.import_module("tinytl_core.memory.measure")  # the function shadows it
    monkeypatch.setattr(measure_module, "available_memory", lambda device: 1_000)
    store = ResultsStore(tmp_path / "r.sqlite")
    with pytest.raises(MemoryLimitError, match=r"at batch 8, 32 px needs about .* but only 1.00 KB are free"):
        adapt(tiny(mode="bias"), data=digits, store=store)
    assert store.count() == 0
    monkeypatch.setattr(measure_module, "available_memory", lambda device: None)  # unknown: it trains
    assert adapt(tiny(mode="bias", steps=1), data=digits, store=store).status == "finished"


def test_whole_numbers_given_as_floats_are_one_configuration():
    """Regression: seeds [1, 1.0] or steps [5, 5.0] in a sweep queued the same run twice (the float passed
    validation, and config_key differed); a NumPy integer from a table did the same."""
    import numpy as np

    from tinytl_core.sweeps import SweepGrid, config_key

    as_floats = tiny(seed=1.0, steps=5.0, resolution=np.int64(32), batch_size=np.float64(8))
    assert as_floats == tiny(seed=1, steps=5) and config_key(as_floats) == config_key(tiny(seed=1, steps=5))
    assert type(as_floats.seed) is int and type(as_floats.resolution) is int
    as_floats.validate()
    grid = SweepGrid(["resnet10t"], modes=["bias"], datasets=["digits"], seeds=[1, 1.0], steps=[5, 5.0])
    assert len(grid.expand()) == 1
    # other real numbers (np.float32, a Fraction) become plain floats: stored as JSON, keyed by it
    from fractions import Fraction

    odd = tiny(lr=np.float32(0.5), momentum=Fraction(1, 2), resolution=np.float32(32))
    assert json.loads(json.dumps(odd.to_dict()))["lr"] == 0.5 and type(odd.momentum) is float
    assert type(odd.resolution) is int


def test_config_round_trips_through_a_dict():
    config = tiny(shots=3, eval_every=5)
    assert AdaptConfig.from_dict({**config.to_dict(), "unknown": 1}) == config


def test_the_default_backbone_is_the_same_everywhere():
    from tinytl_core.backbones import DEMO_BACKBONE, default_backbone
    from tinytl_core.cli import build_parser
    from tinytl_core.ui.settings import Settings

    assert default_backbone() == DEMO_BACKBONE == AdaptConfig().backbone == Settings.defaults().backbone
    for command in (["adapt"], ["memory"], ["modes"]):
        assert build_parser().parse_args(command).model == DEMO_BACKBONE


def test_a_setting_that_changes_nothing_is_said_and_recorded_as_it_ran(digits, tmp_path):
    """The class: --group-norm on a backbone without BatchNorm (a ViT: LayerNorm) replaced nothing; the run
    says so and records group_norm False, as it trained -- not the setting asked for."""
    store = ResultsStore(tmp_path / "r.sqlite")
    config = tiny(backbone="vit_tiny_patch16_224", mode="last", group_norm=True, steps=1, record_memory=False)
    result = adapt(config, data=digits, store=store)
    assert result.status == RunStatus.FINISHED and result.group_norm is False
    assert any("has no BatchNorm to replace" in n for n in result.notes)
    assert store.get_run(result.run_id)["group_norm"] is False
    converted = adapt(tiny(mode="last", group_norm=True, steps=1, record_memory=False), data=digits)
    assert converted.group_norm is True and not converted.notes
