"""Issue 14, presentation: true comparisons, unit scaling, one colour per mode, sidebar limits, the
backbone picker's labels (no Streamlit here: the library functions the pages call)."""

from __future__ import annotations

import pandas as pd
import pytest

from tinytl_core.modes import MODES
from tinytl_core.quantities import MB, bytes_unit, format_bytes, format_ratio
from tinytl_core.ui import figures, vega
from tinytl_core.ui.settings import LIMITS, accept_setting, backbone_label, setting_problem


@pytest.mark.parametrize(
    ("value", "reference", "text"),
    [
        (2654, 1060, "2.5x more than full"),  # Home, resnet50: TinyTL-L+B costs more than full
        (100, 440, "4.4x less than full"),
        (5, 5, "same as full"),
        (1.02, 1, "about the same as full"),
        (0.98, 1, "about the same as full"),
        (0, 3, "none, unlike full"),
        (None, 3, "-"),
        (3, 0, "-"),
        (float("nan"), 3, "-"),
    ],
)
def test_a_ratio_is_phrased_in_its_true_direction(value, reference, text):
    assert format_ratio(value, reference) == text


def test_a_ratio_names_its_reference_and_digits():
    assert format_ratio(330, 100, "necessary") == "3.3x more than necessary"
    assert format_ratio(100, 125, "necessary", digits=2) == "1.25x less than necessary"


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (12_345, "12.3 KB"),
        (2_654e6, "2.65 GB"),
        (110_150e6, "110 GB"),  # was "110,150.0 MB", cut off in a metric card
        (3_456e9, "3.46 TB"),
        (None, "-"),
    ],
)
def test_bytes_take_the_unit_their_size_calls_for(nbytes, text):
    assert format_bytes(nbytes) == text
    assert len(format_bytes(nbytes)) <= 8  # fits a metric card


def test_bytes_unit_and_a_forced_unit():
    assert bytes_unit(5e5) == ("KB", 1000) and bytes_unit(5e6) == ("MB", MB) and bytes_unit(0) == ("B", 1)
    assert format_bytes(5e8, unit=("GB", 10**9)) == "0.50 GB"


def _table(scale: float) -> pd.DataFrame:
    """A compare_modes-like table with totals near ``scale`` bytes."""
    from tinytl_core.memory.report import TOTALS

    rows = []
    for i, mode in enumerate(MODES):
        part = scale * (1 + i) / 4
        rows.append(
            {
                "mode": mode,
                "applicable": True,
                TOTALS.weights_bytes: part,
                TOTALS.grads_optimizer_bytes: part,
                TOTALS.activations_necessary_bytes: part,
                TOTALS.transient_bytes: part,
                TOTALS.total_modelled_bytes: 4 * part,
                TOTALS.activations_stock_bytes: 2 * part,
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("scale", [3e5, 40e6, 110e9])  # the 64 px demo ... 1024 px at batch 512
def test_memory_bars_read_at_every_size(scale):
    try:
        fig = figures.mode_memory_bars(_table(scale), title="t")
    except KeyError as exc:  # the table needs more columns than this sketch has
        pytest.skip(f"table shape: {exc}")
    unit = bytes_unit(6 * scale)[0]  # the largest total
    assert fig.layout.yaxis.title.text.endswith(f"({unit})")
    assert fig.layout.yaxis.exponentformat == "none"  # never "1M MB"
    assert max(fig.data[-1].y) < 10_000  # values in the axis's unit stay short
    assert all(len(t) <= 8 for t in fig.data[-1].text)  # bar labels stay short: no overlap


def test_one_colour_per_mode_colour_blind_safe_and_a_neutral_selection():
    assert set(figures.MODE_COLORS) == set(MODES)
    assert len(set(figures.MODE_COLORS.values())) == len(MODES)
    assert set(figures.MODE_COLORS.values()) <= set(figures.OKABE_ITO.values())
    red = {"#d62728", "#e45756", "#D55E00"}
    assert figures.SELECTION_COLOR not in red
    r, g, b = (int(figures.SELECTION_COLOR[i : i + 2], 16) for i in (1, 3, 5))
    assert r == g == b  # grey: means "selected" and nothing else


def test_curves_are_coloured_by_mode_like_the_scatter():
    steps = [{"step": 1, "loss": 1.0, "train_acc": 0.5}]
    evals = [{"step": 1, "val_acc": 0.5}]
    series = [("#3 bias", steps, evals), ("#4 bias", steps, evals), ("#5 full", steps, [])]
    _, spec = vega.curves_chart(series)
    scale = spec["hconcat"][0]["encoding"]["color"]["scale"]
    colours = dict(zip(scale["domain"], scale["range"]))
    assert colours["#3 bias"] == colours["#4 bias"] == figures.MODE_COLORS["bias"]
    assert colours["#5 full"] == figures.MODE_COLORS["full"]


def test_trainable_bars_keep_mode_colours_and_outline_the_selection():
    table = pd.DataFrame(
        {"mode": ["full", "bias", "last"], "trainable_params": [10, 2, 1], "trainable_MB": [4e-5, 8e-6, 4e-6]}
    )
    fig = figures.trainable_bars(table, "bias", title="t")
    by_mode = {t.x[0]: t for t in fig.data}
    assert by_mode["bias"].marker.color == figures.MODE_COLORS["bias"]
    assert by_mode["bias"].marker.line.color == figures.SELECTION_COLOR and by_mode["bias"].marker.line.width
    assert not by_mode["full"].marker.line.width
    assert fig.layout.yaxis.title.text.endswith("(B, fp32)") or "(B)" in fig.layout.yaxis.title.text


def test_out_of_range_settings_are_rejected_with_the_reason():
    value, problem = accept_setting("batch_size", 100_000, 8)
    assert value == 8 and "100,000" in problem and "1 to 512" in problem and "Kept 8" in problem
    assert accept_setting("batch_size", 16, 8) == (16, None)
    assert setting_problem("resolution", 2048) and not setting_problem("resolution", 1024)
    assert setting_problem("resolution", 4) and "8 to 1,024" in setting_problem("resolution", 4)
    assert set(LIMITS) == {"resolution", "batch_size"}


def test_the_backbone_picker_labels_are_bare_names():
    # Streamlit's fuzzy search ranks an option whose label equals the typed text first (score +inf);
    # a decorated label ("resnet50  ★") lost to "resnet50c".
    for name in ("resnet50", "resnet50c", "demo_mobilenetv2_050"):
        assert backbone_label(name) == name


@pytest.mark.parametrize("budget", [1e6, 1e9, 1e12])  # below, near, far above the bars
@pytest.mark.parametrize("scale", [3e5, 40e6, 110e9])
def test_a_budget_never_stretches_a_bytes_axis_out_of_reading(scale, budget):
    """A budget far above every bar is a note, not a line that turns a MB axis into "1,000,000 MB"."""
    fig = figures.mode_memory_bars(_table(scale), title="t", budget_bytes=budget)
    largest = 6 * scale
    top = fig.layout.yaxis.range[1]
    assert top < 10_000  # the axis keeps short numbers in its unit
    notes = [a.text for a in fig.layout.annotations if a.text and a.text.startswith("budget")]
    assert len(notes) == 1  # the budget is always said, once
    if budget > figures.BUDGET_STRETCH * largest:
        assert notes[0].endswith("above everything shown") and not fig.layout.shapes
    else:
        assert fig.layout.shapes  # the dashed line


def test_a_budget_that_keeps_weights_in_flash_is_no_line_over_totals_that_hold_them():
    """An MCU preset's 512 KB leaves frozen weights out; Home's bars count them, so its line under every
    bar said nothing fits what the planner said fits. It is a note there instead."""
    fig = figures.mode_memory_bars(_table(40e6), title="t", budget_bytes=512_000, budget_in_flash=True)
    (note,) = [a.text for a in fig.layout.annotations if a.text and a.text.startswith("budget")]
    assert "frozen weights in flash" in note and "Budget planner" in note and not fig.layout.shapes


@pytest.mark.parametrize("peak", [30e3, 40e6, 50e9])
def test_step_timelines_and_seed_groups_take_the_unit_of_their_size(peak):
    from tinytl_core.memory.timeline import StepTimeline
    from tinytl_core.seeds import group_seeds
    from tinytl_core.ui.step_chart import CATEGORY_ORDER, step_timeline_figure

    unit = bytes_unit(peak)[0]
    cat = CATEGORY_ORDER[0]
    timeline = StepTimeline(
        device="cpu",
        times_us=[0, 1000, 2000],
        bytes=[{cat: int(peak / 2)}, {cat: int(peak)}, {cat: int(peak / 3)}],
        phases={"forward": (0, 1000), "backward": (1000, 2000)},
    )
    fig = step_timeline_figure({"engine": timeline}, modelled={"engine": peak}, title="t")
    assert fig.layout.yaxis.title.text == f"{unit} alive"
    peak_label = next(t.text[0] for t in fig.data if t.mode == "markers+text")
    assert peak_label.startswith(f"peak {format_bytes(peak)} (")  # 30 KB read "peak 0.0 MB"
    assert max(max(t.y) for t in fig.data) < 1000
    runs = [
        {
            "id": i,
            "status": "finished",
            "backbone": "b",
            "mode": "bias",
            "dataset": "d",
            "resolution": 32,
            "seed": i,
            "best_val_acc": 0.5,
            "final_val_acc": 0.5,
            "total_measured_bytes": peak,
        }
        for i in range(2)
    ]
    groups = figures.seed_groups_figure(group_seeds(runs))
    assert groups.layout.xaxis.title.text == f"step peak, measured ({unit})"
    assert groups.data[0].x[0] == pytest.approx(peak / bytes_unit(peak)[1])


def test_hues_mean_modes_only_the_parts_of_memory_are_greys():
    """Colours told the components and figures apart with the modes' own hues (TinyTL-B's purple meant
    "stock measured" on the Explorer); now a hue always means a mode, and each part of memory has one grey
    on every chart."""
    from tinytl_core.ui.step_chart import CATEGORY_ORDER, CATEGORY_STYLES

    def grey(colour):
        r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
        return r == g == b

    others = [*figures.COMPONENT_COLORS.values(), *figures.FIGURE_COLORS.values()]
    others += [c for c, _ in CATEGORY_STYLES.values()]
    assert all(grey(c) for c in others)
    assert not set(others) & set(figures.MODE_COLORS.values())
    assert set(CATEGORY_STYLES) == set(CATEGORY_ORDER)
    assert len(set(CATEGORY_STYLES.values())) == len(CATEGORY_STYLES)  # each category its own look
    assert [figures.FIGURE_PATTERNS[n] for n in figures.FIGURE_PATTERNS] == ["", "", "/", "/"]  # measured


@pytest.mark.parametrize("scale", [3e3, 40e6, 110e9])
def test_bar_hovers_say_the_mode_and_a_scaled_size(scale):
    """The class: a bar chart's hover names the mode and the series in words and gives the size in the unit
    it calls for -- never Plotly Express's raw ``column=%{...}`` lines or a fixed MB beside a GB axis."""
    table = _table(scale)
    trainable = pd.DataFrame(
        {"mode": ["full", "bias"], "trainable_params": [10, 2], "trainable_MB": [scale / MB, 1e-6]}
    )
    charts = [
        figures.mode_memory_bars(table, title="t"),
        figures.activation_bars(table, title="t"),
        figures.trainable_bars(trainable, "bias", title="t"),
    ]
    for fig in charts:
        bars = [t for t in fig.data if t.type == "bar"]
        assert bars
        for trace in bars:
            template = trace.hovertemplate
            assert "=%{" not in template and "_MB" not in template and "MB=" not in template, template
            assert template.startswith("<b>%{customdata[0]}</b>")
            titles = {c[0] for c in trace.customdata}
            assert titles <= {m.title for m in MODES.values()}
            sizes = [c[1] for c in trace.customdata]
            assert all(len(s) <= 8 and s.split()[-1] in ("B", "KB", "MB", "GB", "TB") for s in sizes), sizes


def test_tables_read_with_headers_and_scaled_units():
    """The Memory Explorer's tables: readable headers (no field names), bytes in the unit the column's
    largest value calls for, named in the header; a share of full fine-tuning as a percentage."""
    from tinytl_core.ui.explorer import readable_table

    table = _table(3e5).assign(trainable_params=[1000] * len(MODES), ratio_to_full=0.25, reason="")
    shown, formats = readable_table(table)
    assert not any("_" in h for h in shown.columns), list(shown.columns)
    assert "total modelled (MB)" in shown and shown["% of full fine-tuning"].iloc[0] == 25
    assert "why not" not in shown  # an empty column is dropped
    assert formats["trainable parameters"] == "localized" and formats["mode"] is None
    small = readable_table(pd.DataFrame({"layer": ["a"], "input_bytes": [1500.0]}))[0]
    assert list(small.columns) == ["layer", "input (KB)"] and small.iloc[0, 1] == 1.5
