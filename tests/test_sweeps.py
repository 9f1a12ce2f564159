"""Sweeps (issue 13): grid expansion and keys, resuming an interrupted sweep, the job-queue and Ray
executors end to end, the driver's status file and the Sweep page's sweeps on Ray (address, checks, a
detached driver followed and cancelled), seeds grouped, the bundled reference set and the paper's points."""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tinytl_core.adapt import AdaptConfig, AdaptResult
from tinytl_core.cli import main
from tinytl_core.jobs import JobQueue, JobState, NotYourJobError, run_worker
from tinytl_core.modes import MODES
from tinytl_core.quantities import MB, RunStatus
from tinytl_core.reference import PAPER_TABLE2, load_reference_runs, load_reference_set, write_reference
from tinytl_core.results import ResultsStore
from tinytl_core.seeds import group_seeds
from tinytl_core.sweeps import (
    OutcomeKind,
    QueueExecutor,
    RayExecutor,
    SweepGrid,
    TaskOutcome,
    config_key,
    executors,
    finished_keys,
    parse_list,
    run_sweep,
    seedless_key,
    sweep_id,
)
from tinytl_core.sweeps.driver import DIED, DriverState, read_status
from tinytl_core.ui import sweep as ui_sweep
from tinytl_core.ui.sweep import cancel_sweep, paper_frame, start_sweep, sweep_status

DEMO = "demo_mobilenetv2_050"
# The smallest real run: 32 px, 2 steps, 4 training and 4 validation images per class, no memory figures.
TINY = AdaptConfig(
    backbone=DEMO,
    dataset="shapes",
    steps=2,
    resolution=32,
    batch_size=8,
    shots=4,
    val_cap=4,
    record_memory=False,
)


def fake_adapt(config, *, progress=None, cancel=None, store=None, data=None):
    """A stand-in for adapt(): a finished run whose accuracy depends on the seed, stored like adapt's."""
    result = AdaptResult(
        config=config,
        status=RunStatus.FINISHED,
        final_val_acc=0.5 + config.seed / 10,
        steps_done=config.steps,
        steps_planned=config.steps,
        batch_size=config.batch_size,
        resolution=config.resolution or 64,
    )
    if store is not None:
        result.run_id = store.save_run(result.to_record())
    return result


def test_a_built_in_set_in_another_letter_case_is_the_same_configuration():
    """`--datasets shapes,SHAPES,Shapes` queued the same set three times (load_dataset reads any case)."""
    grid = SweepGrid([DEMO], modes=["bias"], datasets=["shapes", "SHAPES", "Shapes"], seeds=[0])
    assert [c.dataset for c in grid.expand()] == ["shapes"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"backbones": DEMO}, "backbones must be a list of values, e.g. \\['demo_mobilenetv2_050'\\]"),
        ({"modes": "bias"}, "modes must be a list"),
        ({"resolutions": [64.5]}, "resolution must be a whole number"),
        ({"resolutions": ["64"]}, "resolution must be a number"),
    ],
)
def test_a_grid_of_the_wrong_shape_is_a_clear_error(values, message):
    """A lone string was read letter by letter ("unknown backbone 'd'"); 64.0 px was "too small"."""
    grid = {"backbones": [DEMO], "modes": ["bias"], "datasets": ["digits"], "seeds": [0], **values}
    with pytest.raises(ValueError, match=message):
        SweepGrid(**grid).expand()
    fixed = {**grid, "backbones": [DEMO], "modes": ["bias"], "resolutions": [64.0]}  # 64.0 px is 64 px
    assert len(SweepGrid(**fixed).expand()) == 1


def test_every_setting_a_sweep_page_sets_reaches_the_command_that_runs_it(tmp_path):
    """The class behind a Ray sweep dropping the page's GroupNorm switch: the command line written for a
    grid (the Ray driver the app starts; a reference set's label) must rebuild the very same grid, for
    every setting the sweep command carries, and refuse a setting it cannot carry instead of dropping it."""
    from tinytl_core.cli import build_parser
    from tinytl_core.cli.sweep import command_line, grid_from_args
    from tinytl_core.sweeps.grid import SWEEP_SETTINGS

    changed = {
        "batch_size": 4, "lr": 0.01, "optimizer": "sgd", "shots": 3, "val_cap": 2, "eval_every": 2,
        "device": "cpu", "pretrained": False, "record_memory": False, "measure_memory": False,
        "engine": False, "group_norm": True,
    }  # fmt: skip
    assert set(changed) == {s.field for s in SWEEP_SETTINGS}  # a new setting needs a value here
    grid = SweepGrid([DEMO], modes=["bias"], datasets=["shapes"], resolutions=[32], seeds=[0, 1], steps=[3],
                     base=replace(AdaptConfig(), **changed))  # fmt: skip
    command = ui_sweep.sweep_command(grid, "local", db_path=tmp_path / "r.sqlite", status_path="s", owner="o")
    args = build_parser().parse_args(command[3:])
    rebuilt = grid_from_args(args)
    assert [config_key(c) for c in rebuilt.expand()] == [config_key(c) for c in grid.expand()]
    assert command_line(args).split()[-1] == "--group-norm"
    smoothing = replace(grid, base=replace(grid.base, label_smoothing=0.0))
    with pytest.raises(ValueError, match="cannot carry these settings: label_smoothing"):
        ui_sweep.sweep_command(smoothing, "local", db_path="r", status_path="s", owner="o")


def test_grid_expands_every_combination_once_with_stable_keys():
    grid = SweepGrid(
        backbones=[DEMO, "mobilenetv2_050"],
        modes=["bias", "last", "bias"],
        datasets=["shapes", "digits"],
        resolutions=[32, None],
        seeds=[0, 1],
        steps=[2],
        base=TINY,
    )
    configs = grid.expand()
    assert len(configs) == 2 * 2 * 2 * 2 * 2  # the repeated mode counts once
    keys = [config_key(c) for c in configs]
    assert len(set(keys)) == len(keys)
    assert keys == [config_key(c) for c in grid.expand()]  # stable
    # A stored run's config dict (extra keys from another version ignored) has the key of its config.
    assert config_key({**configs[0].to_dict(), "not_a_field": 1}) == keys[0]
    assert seedless_key(configs[0]) == seedless_key(replace(configs[0], seed=7)) != seedless_key(configs[2])
    assert sweep_id(configs) == sweep_id(reversed(configs)) != sweep_id(configs[:3])
    assert {c.mode for c in SweepGrid([DEMO], modes=["all"]).expand()} == set(MODES)
    assert [c.seed for c in configs[:2]] == [0, 1]  # seeds innermost
    for bad, match in (
        ({"datasets": ["no_such_set"]}, "no_such_set"),
        ({"modes": ["nope"]}, "unknown mode"),
        ({"seeds": []}, "at least one"),
        ({"steps": [0]}, "steps must be 1 to"),
        ({"backbones": ["resnet5o"]}, "unknown backbone"),
        # batch 1 with BatchNorm where a feature map is 1x1: refused now, not after each run loads data
        (
            {"modes": ["bias", "full"], "resolutions": [32], "base": replace(TINY, batch_size=1)},
            "mode full at 32 px",
        ),
    ):
        with pytest.raises(ValueError, match=match):
            replace(grid, **bad).expand()
    assert len(replace(grid, modes=["bias", "last"], base=replace(TINY, batch_size=1)).expand()) == 32
    # the backbone's own size written out is the same run as `own`: one configuration, trained once
    own = replace(grid, backbones=[DEMO], resolutions=[None, 64]).expand()
    assert {c.resolution for c in own} == {None} and len(own) == len(
        replace(grid, backbones=[DEMO]).expand()
    ) // 2
    assert parse_list("0, 1,,1 ,2", "seeds", int) == [0, 1, 2]
    with pytest.raises(ValueError, match="seeds: 'x' is not a valid int"):
        parse_list("0,x", "seeds", int)


def test_interrupted_sweep_resumes_without_rerunning_finished_configs(tmp_path):
    """Real training in this process: Ctrl-C after the first configuration, then the same sweep again."""
    store = ResultsStore(tmp_path / "r.sqlite")
    configs = SweepGrid(
        [DEMO], modes=["bias"], datasets=["shapes"], resolutions=[32], seeds=[0, 1], steps=[2], base=TINY
    ).expand()

    def ctrl_c_after_first(state):
        if state.done == 1:
            raise KeyboardInterrupt

    first = run_sweep(configs, store=store, progress=ctrl_c_after_first)
    assert first.interrupted and first.progress.finished == 1 and first.remaining == 1
    assert store.count() == 1
    done_key, first_id = next(iter(first.run_ids.items()))
    seen = []
    second = run_sweep(configs, store=store, progress=lambda s: seen.append((s.to_run, s.already_finished)))
    assert not second.interrupted and seen[0] == (1, 1)
    assert second.skipped == {done_key: first_id}  # the finished one was not trained again
    assert set(second.run_ids) == {config_key(configs[1])} and store.count() == 2
    assert set(finished_keys(store)) == {config_key(c) for c in configs}
    assert all(r["history"] for r in store.list_runs())  # curves stored with each run


def test_sweep_cli_ctrl_c_says_how_to_resume_and_the_rerun_skips_finished(tmp_path, monkeypatch, capsys):
    db = str(tmp_path / "r.sqlite")
    calls = []

    def fake_train(config, cancel=None):
        calls.append(config["seed"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second configuration of the first sweep
        result = fake_adapt(AdaptConfig.from_dict(config))
        return TaskOutcome(config_key(config), OutcomeKind.RAN, record=result.to_record())

    monkeypatch.setattr(executors, "train_config", fake_train)
    argv = ["sweep", "--modes", "bias", "--datasets", "shapes", "--seeds", "0,1,2"]
    argv += ["--steps", "3", "--no-memory", "--workers", "0", "--db", db]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "2 of 3 configurations have no finished run yet" in err and "Run the same command again" in err
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 already finished (skipped)" in out and "2 / 2 done (2 finished)" in out
    assert calls == [0, 1, 1, 2]  # seed 0 trained once
    assert main([*argv, "--dry-run"]) == 0
    assert capsys.readouterr().out.count("skipped") == 3
    # a dry run says what will not apply, as the sweep itself will (not "to run")
    assert main([*argv, "--dry-run", "--backbones", "vit_tiny_patch16_224", "--modes", "lite_residual"]) == 0
    out = capsys.readouterr().out
    assert out.count("not applicable (lite residual: no blocks") == 3 and "to run" not in out
    # Arguments are checked before any work, with one clear line.
    for bad, message in (
        (["--resolutions", "big"], "'big' is not a size"),
        (["--seeds", "a"], "is not a valid int"),
        (["--datasets", "nope"], "nope"),
        (["--workers", "-1"], "argument --workers: must be 0 to 256"),
    ):
        assert main([*argv, *bad]) == 2
        assert message in capsys.readouterr().err

    def no_ray():
        raise ImportError(executors.RAY_MISSING)

    monkeypatch.setattr("tinytl_core.cli.sweep.import_ray", no_ray)
    assert main([*argv, "--ray"]) == 2
    assert "Ray is not installed" in capsys.readouterr().err
    for address in ("bogus://x", "host:99999", "not an address"):  # refused before Ray is even imported
        assert main([*argv, "--ray", address]) == 2
        assert f"Ray address {address!r}: give 'auto', host:port" in capsys.readouterr().err


def test_queue_executor_adopts_its_jobs_and_app_sweeps_cancel_owner_only(tmp_path):
    db = tmp_path / "r.sqlite"
    store, queue = ResultsStore(db), JobQueue(db)
    configs = SweepGrid(
        [DEMO], modes=["bias", "last"], datasets=["shapes"], seeds=[0, 1], steps=[3], base=TINY
    ).expand()
    executor = QueueExecutor(db, workers=0)  # the workers already serving the queue (a thread here)
    shutdown = threading.Event()
    worker = threading.Thread(
        target=run_worker, args=(db,), kwargs=dict(shutdown=shutdown, runner=fake_adapt, poll_s=0.05)
    )
    worker.start()
    try:
        report = run_sweep(configs, store=store, executor=executor)
    finally:
        shutdown.set()
        worker.join()
    assert report.progress.finished == 4 and not report.interrupted
    assert sorted(report.run_ids.values()) == sorted(r["id"] for r in store.list_runs())  # stored by workers
    assert {j.state for j in queue.list_jobs(sweep=sweep_id(configs))} == {JobState.FINISHED}

    # The app: a sweep skips what finished, queues the rest as the session's; only that session cancels.
    grid = SweepGrid(
        [DEMO], modes=["bias", "last"], datasets=["shapes"], seeds=[0, 1, 2], steps=[3], base=TINY
    )
    started = start_sweep(grid, queue, store, owner="alice")
    assert (started.total, started.skipped, started.queued) == (6, 4, 2)
    assert "4 already finished (skipped)" in started.message()
    again = start_sweep(grid, queue, store, owner="alice")  # started twice: its jobs are adopted
    assert (again.sweep, again.queued, again.adopted) == (started.sweep, 0, 2)
    status = sweep_status(queue, started.sweep)
    assert status.active and len(status.jobs) == 2 and "0 / 2 ended" in status.line()
    assert cancel_sweep(queue, started.sweep, "mallory").stopped == 0
    assert cancel_sweep(queue, started.sweep, "alice").stopped == 2
    status = sweep_status(queue, started.sweep)
    assert not status.active and list(status.frame()["state"]) == ["cancelled", "cancelled"]


def test_ray_sweep_of_two_configurations_end_to_end(tmp_path):
    """Two real configurations as Ray tasks on a local Ray instance; the driver alone writes the store."""
    import ray  # the dev extra installs Ray: CI runs this, no skip

    store = ResultsStore(tmp_path / "r.sqlite")
    configs = SweepGrid(
        [DEMO], modes=["bias", "last"], datasets=["shapes"], resolutions=[32], seeds=[0], steps=[2], base=TINY
    ).expand()
    executor = RayExecutor(init_kwargs=dict(num_cpus=2, include_dashboard=False))
    t0 = time.perf_counter()
    report = run_sweep(configs, store=store, executor=executor)
    elapsed = time.perf_counter() - t0
    assert not ray.is_initialized()  # the sweep started Ray, so it stopped it
    assert report.progress.finished == 2, [o.message for o in report.outcomes]
    assert all(o.worker and o.record is not None for o in report.outcomes)  # results came back to the driver
    runs = store.list_runs()
    assert {r["mode"] for r in runs} == {"bias", "last"}
    assert all(r["status"] is RunStatus.FINISHED and r["history"] for r in runs)
    print(f"Ray sweep of 2 configurations: {elapsed:.1f} s")


def _run(run_id, mode, seed, acc, peak, status="finished", lr=1e-3):
    config = replace(TINY, mode=mode, seed=seed, lr=lr).to_dict()
    return {
        "id": run_id, "status": RunStatus(status), "backbone": DEMO, "mode": mode, "dataset": "shapes",
        "resolution": 32, "batch_size": 8, "steps_planned": 2, "final_val_acc": acc,
        "total_measured_bytes": peak, "total_modelled_bytes": peak, "config": config,
    }  # fmt: skip


def test_group_seeds_mean_and_spread():
    runs = [
        _run(1, "bias", 0, 0.5, 10 * MB),
        _run(2, "bias", 1, 0.6, 12 * MB),
        _run(3, "bias", 2, 0.7, 14 * MB),
        _run(4, "bias", 3, 0.9, 99 * MB, status="failed"),  # not finished: left out
        _run(5, "bias", 0, 0.4, 10 * MB, lr=1e-2),  # another learning rate: another group
        _run(6, "last", 0, 0.3, 5 * MB),
    ]
    groups = group_seeds(runs)
    assert list(groups["mode"]) == ["bias", "bias", "last"] and list(groups["seeds"]) == [3, 1, 1]
    bias = groups.iloc[0]
    assert bias["acc_mean_pct"] == pytest.approx(60.0) and bias["acc_std_pct"] == pytest.approx(10.0)
    assert (bias["acc_min_pct"], bias["acc_max_pct"]) == pytest.approx((50.0, 70.0))
    assert bias["peak_mean_MB"] == pytest.approx(12.0) and bias["peak_std_MB"] == pytest.approx(2.0)
    assert bias["run_ids"] == "#1, #2, #3"
    assert math.isnan(groups.iloc[1]["acc_std_pct"])  # one seed: no spread to tell
    # the two bias groups look alike in every column shown but the figures: what tells them apart is said
    assert list(groups["differs_in"]) == ["lr 0.001", "lr 0.01", ""]


def test_reference_set_ships_labelled_and_loads_as_store_rows(tmp_path):
    reference = load_reference_set()
    assert (
        reference.command.startswith("python -m tinytl_core sweep ") and "--seeds 0,1,2" in reference.command
    )
    assert reference.label and reference.created and reference.versions["torch"]
    runs = load_reference_runs()
    assert runs and all(r["status"] is RunStatus.FINISHED and r["backbone"] == DEMO for r in runs)
    assert {r["dataset"] for r in runs} == {"shapes", "digits"}
    assert {"full", "last", "bn+last", "bias", "lite_residual", "lite_residual+bias"} <= {
        r["mode"] for r in runs
    }
    groups = group_seeds(runs)
    assert set(groups["seeds"]) == {3} and groups["peak_mean_MB"].notna().all()
    runs[0]["mode"] = "changed"
    assert load_reference_runs()[0]["mode"] != "changed"  # read-only: callers get copies
    # Round trip: rows of a store -> a reference file -> the same rows back.
    store = ResultsStore(tmp_path / "r.sqlite")
    store.save_run(fake_adapt(TINY).to_record())
    path = write_reference(store.list_runs(), tmp_path / "ref.json", label="test", command="python -m x")
    back = load_reference_runs(path)
    assert back[0]["status"] is RunStatus.FINISHED and back[0]["config"] == store.list_runs()[0]["config"]
    with pytest.raises(ValueError, match="no finished runs"):
        write_reference([], tmp_path / "empty.json", label="x", command="y")


def test_paper_points_and_grouped_figure():
    assert len(PAPER_TABLE2) == 7 * 8
    flowers = paper_frame(["flowers102"])
    assert len(flowers) == 7 and set(flowers["mode"]) <= set(MODES)
    full = flowers[flowers["method"] == "FT-Full"].iloc[0]
    assert (full["memory_MB"], full["top1_pct"]) == (391.0, 96.8)
    from tinytl_core.ui.figures import seed_groups_figure

    groups = group_seeds([_run(1, "bias", 0, 0.5, 10 * MB), _run(2, "bias", 1, 0.6, 12 * MB)])
    fig = seed_groups_figure(groups, paper=flowers)
    assert [a.text for a in fig.layout.annotations] == ["shapes", "Flowers (paper)"]
    assert len(fig.data) == 1 + 7 and fig.data[0].error_y.array[0] == pytest.approx(math.sqrt(50))


def test_app_sweep_page_queues_and_cancels_and_compare_runs_shows_the_reference(tinytl_home, monkeypatch):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=180)
    at.session_state["backbone"] = DEMO
    at.run()
    at.switch_page("app_pages/compare_runs.py").run()  # a fresh install: no runs, the reference sweep
    assert not at.exception, at.exception
    assert any("No stored runs yet" in i.value for i in at.info)
    assert at.dataframe[0].value["seeds"].eq(3).all()  # the only table: seeds grouped
    assert any("python -m tinytl_core sweep" in c.value for c in at.caption)
    at.switch_page("app_pages/sweep.py").run()
    assert not at.exception, at.exception
    at.multiselect(key="sw_modes").set_value(["bias", "last"])
    at.multiselect(key="sw_datasets").set_value(["shapes"])
    at.text_input(key="sw_seeds").set_value("0, 1")
    at.text_input(key="sw_res").set_value("own, big")
    at.button[0].click().run()  # the form's submit button
    assert any("'big' is not a size" in e.value for e in at.error)  # said, nothing queued
    # what the other pages refuse is refused here too, before anything is queued
    for text, message in (("²", "'²' is not a size"), ("4", "must be 8 to 1,024"), ("9" * 30, "30 digits")):
        at.text_input(key="sw_res").set_value(text)
        at.button[0].click().run()
        assert any(message in e.value for e in at.error), (text, [e.value for e in at.error])
    at.multiselect(key="sw_bb").set_value(["vit_tiny_patch16_224"])
    at.text_input(key="sw_res").set_value("8")
    at.button[0].click().run()
    assert any("8 px is too small" in e.value for e in at.error) and not at.exception
    assert JobQueue(tinytl_home / "results.sqlite").list_jobs() == []
    at.multiselect(key="sw_bb").set_value([DEMO])
    at.text_input(key="sw_res").set_value("32")
    at.button[0].click().run()
    assert not at.exception, at.exception
    queue = JobQueue(tinytl_home / "results.sqlite")
    jobs = queue.list_jobs()
    assert len(jobs) == 4 and {j.state for j in jobs} == {JobState.QUEUED} and jobs[0].sweep
    assert "0 / 4 ended" in at.get("progress")[0].proto.text
    at.button(key="sw_cancel").click().run()
    assert {j.state for j in queue.list_jobs()} == {JobState.CANCELLED} and not at.error

    # On Ray: a bad address, Ray missing, then a (stand-in) driver followed and cancelled; no traceback.
    at.text_input(key="sw_ray_address").set_value("nowhere")
    at.button[0].click().run()
    assert any("Ray address 'nowhere'" in e.value for e in at.error) and not at.exception
    monkeypatch.setattr(ui_sweep, "ray_installed", lambda: False)
    at.text_input(key="sw_ray_address").set_value("auto")
    at.button[0].click().run()
    assert any("Ray is not installed on this server" in e.value for e in at.error) and not at.exception
    monkeypatch.setattr(ui_sweep, "ray_installed", lambda: True)
    monkeypatch.setattr(
        ui_sweep,
        "sweep_command",
        lambda *a, status_path, owner, **k: [sys.executable, "-c", FAKE_DRIVER, str(status_path), owner],
    )
    at.button[0].click().run()
    assert not at.exception and "Your sweep on Ray" in [s.value for s in at.subheader]
    assert len(queue.list_jobs()) == 4  # nothing queued for the local workers
    at.button(key="sw_ray_cancel").click().run()
    assert not at.exception and not at.error
    deadline = time.monotonic() + 30
    while not any("again to resume" in i.value for i in at.info) and time.monotonic() < deadline:
        time.sleep(0.1)
        at.run()
    assert any("again to resume" in i.value for i in at.info)  # the driver stopped, and said so


# ----------------------------------------------------------------------------- sweeps on Ray, from the app
def test_the_driver_keeps_a_status_file_to_its_last_word(tmp_path, monkeypatch, capsys):
    db, status = str(tmp_path / "r.sqlite"), tmp_path / "status.json"

    def fake_train(config, cancel=None):
        result = fake_adapt(AdaptConfig.from_dict(config))
        return TaskOutcome(config_key(config), OutcomeKind.RAN, record=result.to_record())

    monkeypatch.setattr(executors, "train_config", fake_train)
    argv = ["sweep", "--modes", "bias,last", "--datasets", "shapes", "--seeds", "0", "--steps", "3"]
    argv += ["--workers", "0", "--db", db, "--status-file", str(status), "--owner", "session-1"]
    assert main(argv) == 0
    done = read_status(status)
    assert done.state is DriverState.FINISHED and done.owner == "session-1" and done.where == "this process"
    assert (done.progress.finished, done.progress.to_run, done.fraction) == (2, 2, 1.0) and done.sweep
    assert done.line() == "finished: 2 / 2 done (2 finished)"

    def no_ray():
        raise ImportError(executors.RAY_MISSING)

    monkeypatch.setattr("tinytl_core.cli.sweep.import_ray", no_ray)
    assert main([*argv, "--ray", "auto"]) == 2
    failed = read_status(status)
    assert failed.state is DriverState.FAILED and "Ray is not installed" in failed.message

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tinytl_core.cli.sweep.run_sweep", ctrl_c)
    assert main([*argv, "--seeds", "1"]) == 130
    assert (
        read_status(status).state is DriverState.INTERRUPTED
        and "again to resume" in read_status(status).message
    )
    capsys.readouterr()


def test_sweep_page_ray_address_checks_and_the_driver_command(tmp_path, monkeypatch):
    import socket

    from tinytl_core.cli import build_parser
    from tinytl_core.cli.sweep import grid_from_args

    addresses = [ui_sweep.parse_ray_address(t) for t in ("", "  ", "auto", "LOCAL")]
    assert addresses == [None, None, "auto", "local"]
    # Another cluster only when whoever runs the server allowed it: a page never probes other addresses.
    monkeypatch.delenv(ui_sweep.RAY_ADDRESSES_ENV, raising=False)
    with pytest.raises(ValueError, match="allows no other cluster.*TINYTL_RAY_ADDRESSES"):
        ui_sweep.parse_ray_address("10.0.0.5:6379")
    monkeypatch.setenv(ui_sweep.RAY_ADDRESSES_ENV, "10.0.0.5:6379, ray://head-node:10001, not an address")
    assert ui_sweep.allowed_ray_addresses() == ("10.0.0.5:6379", "ray://head-node:10001")
    assert ui_sweep.parse_ray_address(" 10.0.0.5:6379 ") == "10.0.0.5:6379"
    assert ui_sweep.parse_ray_address("ray://head-node:10001") == "ray://head-node:10001"
    with pytest.raises(ValueError, match="may join 10.0.0.5:6379, ray://head-node:10001"):
        ui_sweep.parse_ray_address("10.0.0.6:22")
    for bad in ("nowhere", "head:99999", "a b:1", "http://x:1"):
        with pytest.raises(ValueError, match="give 'auto', 'local', host:port"):
            ui_sweep.parse_ray_address(bad)

    with socket.socket() as listening:  # an address that answers, and one that does not
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed = listening.getsockname()[1]
        ui_sweep.check_reachable(f"127.0.0.1:{closed}")
    with pytest.raises(
        ValueError, match=f"cannot reach the Ray cluster at 127.0.0.1:{closed} .connection refused"
    ):
        ui_sweep.check_reachable(f"127.0.0.1:{closed}")

    store = ResultsStore(tmp_path / "r.sqlite")
    grid = SweepGrid(
        [DEMO],
        modes=["bias", "last"],
        datasets=["shapes"],
        resolutions=[None, 32],
        seeds=[0, 1],
        steps=[5],
        base=AdaptConfig(batch_size=4, pretrained=False),
    )
    monkeypatch.setattr(ui_sweep, "ray_installed", lambda: False)
    with pytest.raises(ValueError, match="Ray is not installed on this server"):
        ui_sweep.start_ray_sweep(grid, "auto", store, owner="me")
    assert not (tmp_path / "sweep-drivers").exists()  # nothing started

    path = ui_sweep.driver_status_path(store.path, "s")
    command = ui_sweep.sweep_command(grid, "auto", db_path=store.path, status_path=path, owner="me")
    assert command[1:4] == ["-m", "tinytl_core", "sweep"]
    args = build_parser().parse_args(command[3:])  # what the driver will run: the same grid
    assert [config_key(c) for c in grid_from_args(args).expand()] == [config_key(c) for c in grid.expand()]
    assert (args.ray, args.db, args.status_file, args.owner) == ("auto", str(store.path), str(path), "me")


FAKE_DRIVER = """
import json, os, signal, sys, time
path, owner = sys.argv[1], sys.argv[2]
progress = {"total": 4, "already_finished": 0, "to_run": 4, "done": 1, "finished": 1}
def write(state, message=""):
    status = {"sweep": "s1", "state": state, "pid": os.getpid(), "where": "Ray (auto)", "owner": owner,
              "progress": progress, "message": message, "started_at": 0.0, "updated_at": time.time()}
    with open(path + ".tmp", "w") as fh:
        json.dump(status, fh)
    os.replace(path + ".tmp", path)
write("running")
try:
    while True:
        time.sleep(0.05)
except KeyboardInterrupt:
    write("interrupted", "interrupted: start the same sweep again to resume")
"""


def test_sweep_page_starts_a_detached_driver_follows_and_cancels_it(tmp_path, monkeypatch):
    """The launcher with a stand-in driver (a real detached process speaking the status file's format;
    the real driver's status is tested above, Ray itself by the end-to-end test)."""
    store = ResultsStore(tmp_path / "r.sqlite")
    grid = SweepGrid([DEMO], modes=["bias"], datasets=["shapes"], seeds=[0, 1], steps=[2], base=TINY)
    sweep = sweep_id(grid.expand())
    path = ui_sweep.driver_status_path(store.path, sweep)
    monkeypatch.setattr(ui_sweep, "ray_installed", lambda: True)
    monkeypatch.setattr(
        ui_sweep,
        "sweep_command",
        lambda *a, status_path, owner, **k: [sys.executable, "-c", FAKE_DRIVER, str(status_path), owner],
    )
    started = ui_sweep.start_ray_sweep(grid, "auto", store, owner="me")
    assert started.started and started.sweep == sweep and "started on Ray (auto)" in started.message()
    status = ui_sweep.ray_sweep_status(path)
    assert status.active and status.owner == "me"
    deadline = time.monotonic() + 30
    while ui_sweep.ray_sweep_status(path).state is not DriverState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    running = ui_sweep.ray_sweep_status(path)
    assert running.state is DriverState.RUNNING and running.progress.done == 1 and running.fraction == 0.25
    again = ui_sweep.start_ray_sweep(grid, "auto", store, owner="me")  # a second click: followed, not twice
    assert not again.started and "already running" in again.message()
    with pytest.raises(NotYourJobError):
        ui_sweep.cancel_ray_sweep(path, "someone else")
    assert ui_sweep.cancel_ray_sweep(path, "me")
    deadline = time.monotonic() + 30
    while ui_sweep.ray_sweep_status(path).active and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped = ui_sweep.ray_sweep_status(path)
    assert stopped.state is DriverState.INTERRUPTED and "again to resume" in stopped.message
    assert not ui_sweep.cancel_ray_sweep(path, "me")  # nothing left to stop

    early = ui_sweep.start_ray_sweep(grid, "auto", store, owner="me")  # cancelled while still starting up
    assert early.started and ui_sweep.cancel_ray_sweep(path, "me")
    deadline = time.monotonic() + 30
    while ui_sweep.ray_sweep_status(path).active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ui_sweep.ray_sweep_status(path).state is DriverState.INTERRUPTED  # not "ended without a word"

    killed = ui_sweep.start_ray_sweep(grid, "auto", store, owner="me")  # started again, then killed
    assert killed.started
    import os
    import signal

    pid = read_status(path).pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while ui_sweep.ray_sweep_status(path).active and time.monotonic() < deadline:
        time.sleep(0.05)
    died = ui_sweep.ray_sweep_status(path)
    assert died.state is DriverState.FAILED and died.message == DIED  # not "running" forever (no zombie)

    for config in grid.expand():  # every configuration finished: no driver is started
        fake_adapt(config, store=store)
    done = ui_sweep.start_ray_sweep(grid, "auto", store, owner="me")
    assert not done.started and done.message() == "All 2 configuration(s) already finished: nothing to run."


def test_a_grid_two_sessions_start_is_trained_once_and_each_cancels_only_its_own(tinytl_home):
    """Session B starting A's grid adopts A's jobs (trained once) but gets no Cancel for them: it used to be
    shown a Cancel that cancelled nothing."""
    from app_helpers import app_test

    queue = JobQueue(tinytl_home / "results.sqlite")
    sessions = []
    for _ in range(2):
        at = app_test(backbone=DEMO, resolution=32)
        at.run()
        at.switch_page("app_pages/sweep.py").run()
        at.multiselect(key="sw_modes").set_value(["bias"])
        at.multiselect(key="sw_datasets").set_value(["shapes"])
        at.text_input(key="sw_seeds").set_value("0")
        at.button[0].click().run()
        assert not at.exception, at.exception
        sessions.append(at)
    a, b = sessions
    assert len(queue.list_jobs()) == 1  # one job for both
    assert not [x for x in b.button if x.key == "sw_cancel"]
    assert any("queued by another session" in c.value for c in b.caption)
    assert b.dataframe[0].value["queued by"].tolist() == ["another session"]
    # A's cancel hands the job B waits for over to B: it goes on, and only B can cancel it now
    a.button(key="sw_cancel").click().run()
    assert any("another session waits for the same run" in t.value for t in a.toast)
    (job,) = queue.list_jobs()
    assert job.state is JobState.QUEUED
    # A neither owns nor waits for it now: told so, not that it would become A's
    assert a.dataframe[0].value["queued by"].tolist() == ["another session (handed over)"]
    assert any("you cancelled go on for another session" in c.value for c in a.caption)
    assert not any("they go on as yours" in c.value for c in a.caption)
    b.run()
    assert b.dataframe[0].value["queued by"].tolist() == ["you"]
    b.button(key="sw_cancel").click().run()
    assert {j.state for j in queue.list_jobs()} == {JobState.CANCELLED}


def test_the_sweep_page_offers_group_norm_for_batch_1(tinytl_home):
    """The sidebar allows batch 1, which BatchNorm with batch statistics refuses at small sizes; the Sweep
    page had no GroupNorm switch, so such a grid could not be swept at all. It has one now, as Adapt."""
    from app_helpers import app_test, visit

    at = visit(app_test(backbone=DEMO, batch_size=1).run(), "sweep")
    at.multiselect(key="sw_modes").set_value(["full"])
    at.multiselect(key="sw_datasets").set_value(["shapes"])
    at.text_input(key="sw_seeds").set_value("0")
    at.text_input(key="sw_res").set_value("32")  # where the demo backbone's last feature map is 1x1
    at.button[0].click().run()
    assert any("batch size 1 is too small" in e.value for e in at.error), [e.value for e in at.error]
    queue = JobQueue(tinytl_home / "results.sqlite")
    assert queue.list_jobs() == []
    at.toggle(key="sw_group_norm").set_value(True)
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (job,) = queue.list_jobs()
    assert (job.config.batch_size, job.config.group_norm, job.config.resolution) == (1, True, 32)


def test_the_app_queues_no_configuration_whose_mode_does_not_apply(tinytl_home):
    """A lite residual mode on a ViT would only fail in a worker: start_sweep leaves it out and says so
    (Adapt refuses the same setting at Start)."""
    queue, store = JobQueue(), ResultsStore()
    grid = SweepGrid(
        ["vit_tiny_patch16_224"], modes=["last", "lite_residual"], datasets=["shapes"], seeds=[0], steps=[2]
    )
    started = ui_sweep.start_sweep(grid, queue, store, owner="me")
    assert (started.total, started.queued, started.not_applicable) == (2, 1, 1)
    assert "1 not applicable to their backbone (not queued)" in started.message()
    assert [j.config.mode for j in queue.list_jobs()] == ["last"]


def test_an_interrupted_sweep_hands_its_shared_jobs_to_the_identical_sweep_still_waiting(tmp_path):
    """Two identical command-line sweeps share their jobs (trained once). Ctrl-C on the first used to cancel
    them under the second, whose jobs were then lost; now they go on as the second's, and the first stops
    without waiting for them."""
    db = tmp_path / "r.sqlite"
    configs = [replace(TINY, mode="bias"), replace(TINY, mode="last")]
    first = QueueExecutor(db, 0, sweep="grid", owner="sweep grid (first)")
    second = QueueExecutor(db, 0, sweep="grid", owner="sweep grid (second)")
    first.submit(configs)
    queue, second_jobs, _ = second.submit(configs)  # adopts the first's jobs: none queued twice
    assert len(queue.list_jobs()) == 2 and set(second_jobs) == {j.id for j in queue.list_jobs()}
    interrupted = threading.Event()
    interrupted.set()  # Ctrl-C before anything ran
    start = time.perf_counter()
    first.run(configs, lambda outcome: None, interrupted)
    assert time.perf_counter() - start < 5  # did not wait STOP_WAIT_S for jobs that go on
    jobs = queue.list_jobs()
    assert {j.state for j in jobs} == {JobState.QUEUED} and {j.owner for j in jobs} == {"sweep grid (second)"}
    # with nobody else waiting, the second's own Ctrl-C stops them
    second.run(configs, lambda outcome: None, interrupted)
    assert {j.state for j in queue.list_jobs()} == {JobState.CANCELLED}


def test_a_sweep_whose_jobs_were_cancelled_elsewhere_does_not_report_success(tmp_path, monkeypatch, capsys):
    """Two identical sweeps share their jobs; when the other one's Ctrl-C cancels them, this sweep was not
    interrupted but did not train them either: exit 1 and say how to train them, never exit 0."""
    db = str(tmp_path / "r.sqlite")

    def cancelled_elsewhere(config, cancel=None):
        return TaskOutcome(config_key(config), OutcomeKind.CANCELLED)

    monkeypatch.setattr(executors, "train_config", cancelled_elsewhere)
    argv = ["sweep", "--modes", "bias", "--datasets", "shapes", "--seeds", "0", "--steps", "3"]
    assert main([*argv, "--no-memory", "--workers", "0", "--db", db]) == 1
    err = capsys.readouterr().err
    assert "1 configuration(s) were cancelled before they finished" in err and "run the same command" in err
