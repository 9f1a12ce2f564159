"""The budget planner: budgets, profiles equal to analyze(), the disk cache, what fits, the CLI."""

import json

import pandas as pd
import pytest

from tinytl_core.cli import main
from tinytl_core.memory import analyze, measure
from tinytl_core.modes import prepare_model
from tinytl_core.planner.accuracy import NOT_MEASURED, accuracy_table, attach_accuracy, format_accuracy
from tinytl_core.planner.budget import PRESETS, Budget, BudgetError, parse_budget
from tinytl_core.planner.plan import PLANNED, PlanError, SearchSpace, pareto_front, plan
from tinytl_core.planner.profile import ProfileCache, upper_envelope

DEMO = "demo_mobilenetv2_050"
MODES = ("bias", "lite_residual+bias")
BATCHES = (1, 2, 3, 64)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("planner-cache")


@pytest.fixture(scope="module")
def planned(cache_dir):
    cache = ProfileCache(cache_dir)
    space = SearchSpace((DEMO,), modes=MODES, resolutions=(32,), batch_sizes=BATCHES, optimizer="sgd")
    return plan(Budget.of("6 MB"), space, cache=cache), cache


@pytest.mark.parametrize(
    "text, nbytes",
    [
        ("256KB", 256_000),
        ("256 kb", 256_000),
        ("0.5 GB", 500_000_000),
        ("300 MB", 300_000_000),
        ("300", 300_000_000),
        (300, 300_000_000),
        ("2 GiB", 2 << 30),
        ("512KiB", 512 << 10),
        ("1e3 B", 1000),
        ("5 TB", 5 * 10**12),  # every unit a size is printed in can be typed back
        ("2 pb", 2 * 10**15),
        ("1 EB", 10**18),
        ("1 TiB", 1 << 40),
    ],
)
def test_parse_budget(text, nbytes):
    assert parse_budget(text) == nbytes


@pytest.mark.parametrize(
    "text",
    ["0", "0 MB", "-5 MB", "-1", "", "  ", "12 parsecs", "MB", "1.2.3 MB", "0.0001 B"]
    + ["1e300 GB", "1e308 MB", "1e20 MB", "1e400", 1e300, "1e19 B"],  # overflows, or beyond any device
)
def test_bad_budgets_are_clear(text):
    with pytest.raises(BudgetError, match="budget"):
        parse_budget(text)


def test_printed_sizes_read_back_as_budgets():
    """The class: a size the app prints (format_bytes, B to EB) typed back as a budget is the same size."""
    from tinytl_core.quantities import format_bytes

    for nbytes in (512, 256_000, 300 * 10**6, 4 * 10**9, 5 * 10**12, 3 * 10**15, 10**18):
        assert parse_budget(format_bytes(nbytes).replace(",", "")) == nbytes


def test_the_largest_budget_plans_and_a_larger_one_is_refused(tmp_path):
    """The class: a budget the plan's 64-bit tables cannot hold is refused up front, by text or by bytes."""
    from tinytl_core.planner.budget import MAX_BUDGET_BYTES

    assert parse_budget("1000 GB") == 10**12
    with pytest.raises(BudgetError):
        Budget(MAX_BUDGET_BYTES + 1)
    with pytest.raises(BudgetError):
        Budget(0)
    space = SearchSpace(
        backbones=("demo_mobilenetv2_050",), modes=("bias",), resolutions=(32,), batch_sizes=(2,)
    )
    result = plan(Budget(MAX_BUDGET_BYTES), space, cache=ProfileCache(tmp_path, disk=True))
    assert bool(result.configs["fits"].all())


def test_presets_say_what_they_mean():
    mcu = Budget.of("mcu-256k")
    assert (mcu.nbytes, mcu.weights_in_flash) == (256_000, True)
    assert PRESETS["mcu-256k"].frozen_weight_bits == 8
    assert not Budget.of("phone-300m").weights_in_flash
    assert all(p.note and p.budget_bytes > 0 for p in PRESETS.values())


def test_upper_envelope_keeps_the_maximum():
    lines = [(10, 1), (5, 2), (4, 2), (0, 3), (9, 1), (10, 0)]
    kept = upper_envelope(lines)
    assert set(kept) == {(10, 1), (5, 2), (0, 3)}
    for b in range(0, 100):
        assert max(a + s * b for a, s in kept) == max(a + s * b for a, s in lines)


def test_planned_figures_equal_analyze(planned):
    """The planner's figure is analyze()'s step peak for that exact configuration (engine and stock, 32-
    and 8-bit frozen weights), batch 1 with GroupNorm."""
    result, cache = planned
    assert result.built == 2 * len(MODES)  # one BatchNorm and one GroupNorm profile per mode
    configs = result.configs.set_index([PLANNED.mode, PLANNED.batch_size])
    assert len(configs) == len(MODES) * len(BATCHES)
    for mode in MODES:
        models = {
            gn: prepare_model(DEMO, mode, resolution=32, group_norm=gn, device="meta", engine=False).model
            for gn in (True, False)
        }
        for batch in BATCHES:
            bits = 8 if batch == 3 else 32  # one batch with 8-bit frozen weights (each analyze traces)
            t = analyze(
                models[batch == 1],
                input_size=(3, 32, 32),
                batch_size=batch,
                optimizer="sgd",
                frozen_weight_bits=bits,
            ).totals
            profile = cache.get(DEMO, 32, mode, group_norm=batch == 1)
            assert (
                profile.step_peak(batch, optimizer="sgd", frozen_weight_bits=bits) == t.total_modelled_bytes
            )
            stock = profile.step_peak(batch, optimizer="sgd", frozen_weight_bits=bits, engine=False)
            assert stock == t.total_stock_bytes
            if bits == 32:
                assert configs.loc[(mode, batch), PLANNED.peak_bytes] == t.total_modelled_bytes
            assert configs.loc[(mode, batch), PLANNED.group_norm] == (batch == 1)


def test_disk_cache_is_reused_versioned_and_safe(planned, cache_dir):
    result, _ = planned
    again = ProfileCache(cache_dir)
    again.version = planned[1].version  # (the tree may change under a test run while others edit it)
    space = result.space
    second = plan(result.budget, space, cache=again)
    assert (again.built, again.loaded) == (0, 2 * len(MODES))
    pd.testing.assert_frame_equal(second.configs, result.configs)
    files = sorted(cache_dir.glob("*.json"))
    assert len(files) == 2 * len(MODES)
    json.loads(files[0].read_text())  # plain JSON
    files[0].write_text("{not json")  # a damaged file is rebuilt, not trusted
    third = ProfileCache(cache_dir)
    third.version = "another torch"  # another version or code: other keys, a fresh trace
    assert third.key(DEMO, 32, "bias", False, 10) != again.key(DEMO, 32, "bias", False, 10)
    fourth = ProfileCache(cache_dir)
    fourth.version = again.version
    plan(result.budget, space, cache=fourth)
    assert fourth.built == 1
    assert fourth.clear() == 2 * len(MODES)


def test_summary_and_nothing_fits(planned):
    result, cache = planned
    summary = result.summary().set_index("mode")
    fit = result.configs[result.configs[PLANNED.fits]]
    for mode in MODES:
        mine = fit[fit[PLANNED.mode] == mode]
        if len(mine):
            assert summary.loc[mode, "max_batch"] == mine[PLANNED.batch_size].max()
            assert summary.loc[mode, "max_resolution"] == 32
    assert (result.configs[PLANNED.fits] == (result.configs[PLANNED.counted_bytes] <= 6_000_000)).all()
    tiny = plan(Budget.of("1 KB"), result.space, cache=cache)
    assert not tiny.any_fits and len(tiny.fitting) == 0
    message = tiny.nothing_fits_message()
    smallest = tiny.configs[PLANNED.counted_bytes].min()
    assert "nothing fits 1.00 KB" in message and "over" in message and DEMO in message
    assert tiny.smallest()[PLANNED.counted_bytes] == smallest
    # Frozen weights in flash do not count against an MCU budget.
    mcu = plan(Budget(256_000, weights_in_flash=True), result.space, cache=cache)
    flash = mcu.configs
    assert (flash[PLANNED.counted_bytes] == flash[PLANNED.peak_bytes] - flash[PLANNED.flash_bytes]).all()
    assert (flash[PLANNED.flash_bytes] > 0).all()
    # the summary's smallest is what the fit is decided on (it said 1.14 MB beside "smallest: 340 KB")
    least = mcu.summary()["smallest_counted_bytes"].min()
    assert least == mcu.smallest()[PLANNED.counted_bytes] < flash[PLANNED.peak_bytes].min()


def test_a_planned_fit_peaks_within_the_budget_when_measured(planned):
    """Measured with the engine on a real step (CPU profiler), a configuration the planner says fits a
    budget 10% above its modelled peak (the model is within 10% of measured) stays within that budget."""
    result, _ = planned
    row = result.configs.set_index([PLANNED.mode, PLANNED.batch_size]).loc[("bias", 3)]
    budget = Budget(int(row[PLANNED.peak_bytes] * 1.10))
    space = SearchSpace((DEMO,), modes=("bias",), resolutions=(32,), batch_sizes=(3,), optimizer="sgd")
    assert plan(budget, space, cache=planned[1]).any_fits
    p = prepare_model(DEMO, "bias", resolution=32, device="cpu")  # on the engine
    m = measure(p.model, input_size=(3, 32, 32), batch_size=3, optimizer="sgd", per_layer=False)
    assert 0 < m.step_peak <= budget.nbytes


def test_pareto_front_and_accuracy():
    frame = pd.DataFrame({"mem": [1, 2, 3, 4, 2], "acc": [0.5, 0.4, 0.8, 0.7, None]})
    assert list(pareto_front(frame, "mem", "acc")) == [True, False, True, False, False]

    def run(acc, batch, status="finished", seed=0):
        return {
            "status": status,
            "backbone": DEMO,
            "mode": "bias",
            "resolution": 32,
            "batch_size": batch,
            "steps_planned": 50,
            "seed": seed,
            "dataset": "digits",
            "final_val_acc": acc,
        }

    runs = [run(0.6, 8), run(0.7, 8, seed=1), run(0.1, 8, status="failed"), run(0.9, 1)]
    table = accuracy_table(runs)
    assert list(table["batch_size"]) == [1, 8]  # one row per batch size: batch is never pooled
    at8 = table[table["batch_size"] == 8].iloc[0]
    assert at8["accuracy_mean"] == pytest.approx(0.65)
    assert at8["accuracy_spread"] == pytest.approx(pd.Series([0.6, 0.7]).std())  # as group_seeds
    assert at8["n_runs"] == 2
    configs = pd.DataFrame(
        {
            "backbone": [DEMO] * 4,
            "mode": ["bias", "bias", "bias", "full"],
            "resolution": [32] * 4,
            "batch_size": [8, 1, 16, 8],
        }
    )
    merged = attach_accuracy(configs, table, "digits")
    assert list(merged["accuracy_source"]) == ["stored", "stored", "stored", NOT_MEASURED]
    assert list(merged["accuracy_batch"][:3]) == [8, 1, 8]  # own batch, else the nearest measured one
    assert merged["accuracy_mean"][1] == pytest.approx(0.9)
    assert format_accuracy(0.65, 0.05, 2, "stored", batch=8, measured_batch=8) == "65.0 ± 5.0 % (2 runs)"
    assert format_accuracy(0.65, 0.05, 2, "stored", batch=16, measured_batch=8) == (
        "65.0 ± 5.0 % (2 runs, at batch 8)"
    )
    assert format_accuracy(0.9, float("nan"), 1, "reference") == "90.0 % (1 run) (reference)"
    assert format_accuracy(None, None, 0, NOT_MEASURED) == NOT_MEASURED


def test_chart_accuracy_at_batch_and_paper_layer(planned):
    from tinytl_core.ui import planner_view as view

    result, _ = planned
    runs = [
        {
            "status": "finished",
            "backbone": DEMO,
            "mode": "bias",
            "resolution": 32,
            "batch_size": 2,
            "steps_planned": 10,
            "dataset": "flowers102",
            "final_val_acc": 0.5,
        }
    ]
    table = accuracy_table(runs)
    points = view.chart_points(result, table, "flowers102")
    bias = points[points["mode"] == "bias"].iloc[0]
    assert bias["accuracy_batch"] == 2 and bias["batch_size"] != 2  # plotted at its largest fitting batch
    assert "at batch 2" in bias["accuracy_text"]
    paper = view.paper_points(["flowers102"])
    assert len(paper) == 7 and set(paper["dataset"]) == {"flowers102"}
    fig = view.planner_figure(points, result.budget, title="t", paper=paper)
    names = [t.name for t in fig.data]
    assert "paper: Flowers (ProxylessNAS-Mobile (paper))" in names
    assert (
        "analytic memory"
        in fig.data[names.index("paper: Flowers (ProxylessNAS-Mobile (paper))")].hovertemplate
    )
    no_accuracy = view.chart_points(result, table.iloc[0:0], None)
    fig = view.planner_figure(no_accuracy, result.budget, title="t", paper=paper)
    assert not any(str(t.name).startswith("paper") for t in fig.data)  # not on a parameters axis


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", "0"], "budget must be a positive size"),
        (["--budget", "-3 MB"], "budget must be positive"),
        (["--budget", "12 parsecs"], "unknown unit"),
        (["--budget", "5MB", "--backbones", "no_such_net"], "unknown backbone"),
        (["--budget", "5MB", "--backbones", DEMO, "--modes", ","], "no mode"),
        (["--budget", "5MB", "--backbones", DEMO, "--modes", "nope"], "unknown mode"),
        (["--budget", "5MB", "--backbones", DEMO, "--resolutions", "0"], "resolution must be 8 to 1,024"),
        (["--budget", "5MB", "--backbones", DEMO, "--resolutions", "8-50000000"], "resolution must be 8 to"),
        (["--budget", "5MB", "--backbones", DEMO, "--batch-sizes", f"1-{10**30}"], "batch size must be 1 to"),
        (["--budget", "5MB", "--backbones", ","], "no backbone"),
        (["--budget", "5MB", "--backbones", DEMO, "--batch-sizes", "x"], "cannot read batch size"),
        (["--budget", "5MB", "--search", "zzzz_nothing"], "no backbone matches"),
    ],
)
def test_cli_bad_input_is_one_clear_line(args, message, capsys):
    assert main(["plan", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_cli_plan_csv_and_export(planned, cache_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TINYTL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("tinytl_core.cli.plan.ProfileCache", lambda disk=True: ProfileCache(cache_dir))
    csv, out = tmp_path / "plan.csv", tmp_path / "plan.json"
    args = ["plan", "--budget", "6MB", "--backbones", DEMO, "--modes", ",".join(MODES), "--resolutions", "32"]
    args += ["--batch-sizes", "1-3,64", "--optimizer", "sgd", "--csv", str(csv), "--export-plan", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "configurations planned" in text and DEMO in text
    assert len(pd.read_csv(csv)) == len(MODES) * len(BATCHES)
    # The exported plan (first mode, largest resolution then batch that fits) matches the planner's row.
    doc = json.loads(out.read_text())
    result = planned[0]
    fit = result.configs[result.configs[PLANNED.fits] & (result.configs[PLANNED.mode] == MODES[0])]
    row = fit.sort_values([PLANNED.resolution, PLANNED.batch_size]).iloc[-1]
    assert doc["format"] == "tinytl-training-plan"
    assert (doc["mode"], doc["batch_size"]) == (MODES[0], row[PLANNED.batch_size])
    assert doc["memory"]["modelled_step_peak_bytes"] == row[PLANNED.peak_bytes] <= 6_000_000
    assert doc["n_trainable"] == row[PLANNED.n_trainable]
    assert doc["engine_layers"] and all(layer["stores"] for layer in doc["engine_layers"])
    assert sum(r["bytes"] for r in doc["stored_for_backward"]) == doc["memory"]["activations_stored_bytes"]


def test_fill_groups_resolutions_and_equals_build_profile(tmp_path):
    """Workers trace each (backbone, mode, normalisation) once for every resolution it can share, one by
    one otherwise; each profile is the one build_profile gives, and progress counts profiles."""
    from tinytl_core.planner.profile import build_profile

    requests = [(DEMO, r, m, False, 10) for m in ("bias", "lite_residual") for r in (32, 64, 96)]
    cache, seen = ProfileCache(tmp_path), []
    assert cache.fill(requests, workers=2, progress=lambda done, total, _: seen.append((done, total))) == 6
    assert seen[0] == (0, 6) and seen[-1] == (6, 6) and len(seen) == 1 + 1 + 3  # a shared task, 3 single
    for backbone, r, mode, gn, _ in requests:
        assert cache.get(backbone, r, mode, group_norm=gn) == build_profile(backbone, r, mode, group_norm=gn)
    assert cache.built == 6


def test_a_size_a_backbone_cannot_run_at_is_a_note_in_words(tinytl_home, capsys):
    """plan's notes say why a configuration was not planned in words, not PyTorch's shape text."""
    args = ["plan", "--budget", "300MB", "--backbones", "vit_tiny_patch16_224", "--resolutions", "8,32"]
    assert main([*args, "--batch-sizes", "2", "--modes", "last"]) == 0
    out = capsys.readouterr().out
    assert "does not run at 8 px: a layer's 16x16 kernel (or patch) is larger than the 8x8 feature map" in out
    assert "Calculated padded" not in out


def test_plans_every_mode_by_default_and_refuses_an_empty_list(tinytl_home, capsys):
    """`plan` without --modes (or --modes all) plans every mode; an empty list of modes is refused."""
    args = ["plan", "--budget", "1MB", "--backbones", DEMO, "--resolutions", "32", "--batch-sizes", "2"]
    assert main(args) == 0
    assert main([*args, "--modes", "all"]) == 0
    capsys.readouterr()
    with pytest.raises(PlanError, match="no mode to plan"):
        SearchSpace(backbones=(DEMO,), modes=()).checked()
    from tinytl_core.modes import MODES as ALL_MODES

    assert SearchSpace(backbones=(DEMO,), modes=None).checked().modes == tuple(ALL_MODES)


def test_what_the_second_probe_found_in_the_planner(tmp_path, capsys):
    """Members of the planner's classes a hostile probe found: a repeated mode planned twice, a timm name
    with a weights tag planned as a CNN at 224 px only, library calls failing with Python's own errors,
    skip notes blaming batch 1 for every batch, and --export-plan saying "nothing fits" for a
    configuration that was never planned."""
    import numpy as np

    from tinytl_core.backbones import backbone_info
    from tinytl_core.planner.export import PlanRequest, training_plan

    cache = ProfileCache(tmp_path)
    space = SearchSpace((DEMO,), ("bias", "bias"), (32,), (2,))
    assert plan(Budget.of("10 MB"), space, cache=cache).space.size == 1
    numpy_size = SearchSpace((DEMO,), ("bias",), (np.int64(32),), (2,))  # a table's number
    assert len(plan(Budget.of("10 MB"), numpy_size, cache=cache).configs) == 1

    tagged = backbone_info("vit_tiny_patch16_224.augreg_in21k")
    assert (tagged.family, tagged.kind, tagged.has_pretrained) == ("vision_transformer", "transformer", True)

    for call, error, message in (
        (lambda: parse_budget(10**400), BudgetError, "more than 1 EB"),
        (lambda: Budget("5MB"), BudgetError, "a budget is 1 byte to"),
        (lambda: SearchSpace((DEMO,), optimizer=None).checked(), PlanError, "optimizer must be one of"),
        (lambda: SearchSpace((None,)).checked(), PlanError, "a backbone is named by a string"),
        (lambda: training_plan(PlanRequest(DEMO, "bias", 5000, 2)), PlanError, "resolution must be 8 to"),
        (lambda: training_plan(PlanRequest(DEMO, "bias", 32, 2, num_classes=1)), PlanError, "classes must"),
    ):
        with pytest.raises(error, match=message):
            call()

    vit = ["--backbones", "vit_tiny_patch16_224", "--modes", "bias", "--resolutions", "8"]
    assert main(["plan", "--budget", "1GB", *vit, "--batch-sizes", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "bias at 8 px not planned: it does not run at 8 px" in out and "batch 1 (GroupNorm)" not in out
    target = tmp_path / "plan.json"
    assert main(["plan", "--budget", "1GB", *vit, "--batch-sizes", "2", "--export-plan", str(target)]) == 2
    err = capsys.readouterr().err
    assert "nothing to export: vit_tiny_patch16_224 bias at 8 px was not planned (it does not run" in err
    assert not target.exists()
