"""Plotly figures of the app, built from library tables (MB = 10^6 bytes throughout, as in the paper).

Every builder takes plain data (DataFrames, snapshots, run dicts) and returns a ``plotly`` figure, so the
pages only place them. :func:`lite_residual_dot` returns the lite residual diagram as Graphviz DOT text.
The memory-accuracy scatter and the training curves are Vega-Lite (:mod:`tinytl_core.ui.vega`), in the
same colours.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tinytl_core.memory import MB
from tinytl_core.memory.report import MEMORY, TOTALS
from tinytl_core.modes import MODES
from tinytl_core.quantities import bytes_unit, format_bytes
from tinytl_core.ui.explorer import (
    ACTIVATION_LABELS,
    COMPONENT_LABELS,
    activation_frame,
    components_frame,
)
from tinytl_core.ui.explorer import label as quantity_label
from tinytl_core.ui.runs import ACCURACY

OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
    "grey": "#999999",
}
"""The Okabe-Ito palette (told apart with every common colour-vision deficiency), plus a neutral grey."""
MODE_COLORS = {
    "full": OKABE_ITO["black"],
    "last": OKABE_ITO["orange"],
    "bn+last": OKABE_ITO["sky blue"],
    "bias": OKABE_ITO["reddish purple"],
    "lite_residual": OKABE_ITO["blue"],
    "lite_residual+bias": OKABE_ITO["bluish green"],
    "mobiletl": OKABE_ITO["vermillion"],
    "sparse": OKABE_ITO["yellow"],  # the palette's last hue (grey stays neutral)
}
"""One colour per mode, on every chart that tells modes apart (scatter, curves, bars)."""
PART_GREYS = {"activations": "#2b2b2b", "weights": "#7a7a7a", "gradients": "#a8a8a8", "working": "#d4d4d4"}
"""The parts of a step's memory, in greys told apart by lightness (hues mean modes, and only modes): the
activations, the story, darkest; the same part has the same grey on every chart (the bars of a mode's
memory, the step timeline)."""
COMPONENT_COLORS = dict(
    zip(
        COMPONENT_LABELS,
        (PART_GREYS["weights"], PART_GREYS["gradients"], PART_GREYS["activations"], PART_GREYS["working"]),
    )
)
_STOCK_GREY = "#999999"
FIGURE_COLORS = dict(
    zip(ACTIVATION_LABELS, (PART_GREYS["activations"], _STOCK_GREY, _STOCK_GREY, PART_GREYS["activations"]))
)
FIGURE_PATTERNS = dict(zip(ACTIVATION_LABELS, ("", "", "/", "/")))
"""The activation figures: what TinyTL needs (necessary, the engine) in the activations' grey, what stock
PyTorch saves in a lighter one; modelled solid, measured hatched."""
SELECTION_COLOR = "#333333"
"""The neutral outline of a selected item: never a hue that means something else elsewhere."""
UNSELECTED_OPACITY = 0.45
_LAYOUT = {
    "template": "plotly_white",
    "margin": {"l": 10, "r": 10, "t": 60, "b": 10},
    "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "left", "x": 0},
}


_LEGEND_BELOW = {"orientation": "h", "yanchor": "top", "y": -0.2, "xanchor": "left", "x": 0}


def _mode_tick(mode: str) -> str:
    """A short two-line axis label for a mode (``TinyTL-B (bias)`` -> ``TinyTL-B``)."""
    title = MODES[mode].title.split(" (")[0] if mode in MODES else mode
    return title.replace(" ", "<br>", 1) if len(title) > 10 else title


_BAR_HOVER_COLUMNS = ["hover_mode", "hover_size"]


def _with_hover(frame: pd.DataFrame, nbytes: pd.Series) -> pd.DataFrame:
    """``frame`` with what a bar's hover says: its mode's title and its size in the unit that size calls
    for (:func:`~tinytl_core.quantities.format_bytes`), never a raw column name or a fixed unit."""
    titles = [MODES[m].title if m in MODES else str(m) for m in frame["mode"]]
    return frame.assign(hover_mode=titles, hover_size=[format_bytes(v) for v in nbytes])


def _bar_hover(fig: go.Figure, what: str | None = None) -> None:
    """Hover texts of a chart's bars (made with :func:`_with_hover`'s columns as ``custom_data``): the mode,
    then ``what`` (or the bar's series: a component, a figure) and the size."""
    series = what if what is not None else "%{fullData.name}"
    fig.update_traces(
        selector={"type": "bar"},
        hovertemplate=f"<b>%{{customdata[0]}}</b><br>{series}: %{{customdata[1]}}<extra></extra>",
    )


def _bytes_axis(fig: go.Figure, largest_bytes: float, title: str, axis: str = "y") -> tuple[str, int]:
    """Scale a bytes axis to the unit its largest value reads best in (:func:`bytes_unit`): ``title (GB)``,
    plain numbers with thousands separators (never ``1M MB``).
    Returns the unit; data go in as bytes / unit."""
    unit = bytes_unit(largest_bytes)
    update = fig.update_yaxes if axis == "y" else fig.update_xaxes
    update(title_text=f"{title} ({unit[0]})", exponentformat="none", separatethousands=True)
    return unit


BUDGET_STRETCH = 3.0
"""A chart's bytes axis stretches to show the budget line up to this many times its largest value; a budget
far above that is named in a note instead (a 1 TB budget would squash MB bars to nothing)."""


def budget_on_axis(budget_bytes: float | None, largest_bytes: float) -> bool:
    """True when the budget line is drawn on the axis (see :data:`BUDGET_STRETCH`)."""
    return bool(budget_bytes) and budget_bytes <= BUDGET_STRETCH * max(largest_bytes, 1.0)


def add_budget_line(
    fig: go.Figure,
    budget_bytes: float | None,
    unit: tuple[str, int],
    axis: str = "y",
    *,
    largest_bytes: float | None = None,
    weights_in_flash: bool = False,
) -> None:
    """Draw a memory budget (the Budget planner's) as a dashed line across a bytes axis scaled to ``unit``;
    nothing for None. A budget far above ``largest_bytes`` (the chart's largest value) is a note in the
    corner instead, so the axis keeps the data's scale; so is a budget that keeps frozen weights in flash
    (``weights_in_flash``: an MCU preset) on a chart whose totals hold them -- not the same quantity."""
    if not budget_bytes:
        return
    text = f"budget {format_bytes(budget_bytes)}"
    off_axis = largest_bytes is not None and not budget_on_axis(budget_bytes, largest_bytes)
    if weights_in_flash or off_axis:
        fig.add_annotation(
            text=(
                f"{text} (frozen weights in flash, not in it): compare on the Budget planner"
                if weights_in_flash
                else f"{text}: above everything shown"
            ),
            xref="paper",
            yref="paper",
            x=1,
            y=1,
            xanchor="right",
            yanchor="bottom",
            showarrow=False,
            font={"color": OKABE_ITO["black"]},
        )
        return
    value = budget_bytes / unit[1]
    style = {"line_dash": "dash", "line_color": OKABE_ITO["black"], "line_width": 2}
    if axis == "x":
        fig.add_vline(x=value, annotation_text=text, annotation_position="top left", **style)
    else:
        fig.add_hline(y=value, annotation_text=text, annotation_position="top left", **style)


def mode_memory_bars(
    table: pd.DataFrame,
    *,
    title: str,
    selected: str | None = None,
    budget_bytes: float | None = None,
    budget_in_flash: bool = False,
) -> go.Figure:
    """Stacked bars of modelled training memory per mode: weights, gradients + optimizer state,
    activations stored for backward, transient working set; the total on top of each bar.

    ``table`` is a :func:`~tinytl_core.comparisons.compare_modes` table; ``selected`` outlines one mode;
    ``budget_bytes`` (the Budget planner's, when set) is drawn as a line.
    """
    long = components_frame(table)
    totals_bytes = long.groupby("mode", sort=False)["MB"].sum() * MB
    unit = bytes_unit(float(totals_bytes.max()) if len(totals_bytes) else 0.0)
    long = _with_hover(long.assign(value=long["MB"] * MB / unit[1]), long["MB"] * MB)
    fig = px.bar(
        long,
        x="mode",
        y="value",
        color="component",
        title=title,
        color_discrete_map=COMPONENT_COLORS,
        category_orders={"component": list(COMPONENT_LABELS)},
        labels={"value": f"training memory ({unit[0]})", "mode": ""},
        custom_data=_BAR_HOVER_COLUMNS,
    )
    _bar_hover(fig)
    totals = long.groupby("mode", sort=False)["value"].sum()
    fig.add_trace(
        go.Scatter(
            x=list(totals.index),
            y=list(totals.values),
            mode="text",
            showlegend=False,
            text=[format_bytes(v, unit=unit) for v in totals_bytes.values],
            textfont={"size": 11},
            textposition="top center",
            hoverinfo="skip",
        )
    )
    if selected is not None and selected in totals.index:
        fig.add_vrect(
            x0=list(totals.index).index(selected) - 0.45,
            x1=list(totals.index).index(selected) + 0.45,
            line_width=2,
            line_color=SELECTION_COLOR,
            fillcolor="rgba(0,0,0,0)",
        )
    largest = float(totals_bytes.max()) if len(totals_bytes) else 0.0
    shown_budget = budget_bytes if budget_on_axis(budget_bytes, largest) and not budget_in_flash else 0
    fig.update_layout(
        **{**_LAYOUT, "legend": _LEGEND_BELOW},
        legend_title_text="",
        yaxis_range=[0, 1.15 * max(totals.max(), (shown_budget or 0) / unit[1], 1e-9)],
    )
    _bytes_axis(fig, largest, "training memory")
    add_budget_line(fig, budget_bytes, unit, largest_bytes=largest, weights_in_flash=budget_in_flash)
    fig.update_xaxes(tickvals=list(totals.index), ticktext=[_mode_tick(m) for m in totals.index], tickangle=0)
    return fig


def trainable_bars(table: pd.DataFrame, selected: str, *, title: str) -> go.Figure:
    """Bars of trainable parameter bytes per mode (from :func:`tinytl_core.reports.trainable_table`), the
    ``selected`` mode highlighted; modes that do not apply are left out."""
    chart = table.dropna(subset=["trainable_params"]).assign(selected=lambda t: t["mode"] == selected)
    unit = bytes_unit(float(chart["trainable_MB"].max() * MB) if len(chart) else 0.0)
    chart = _with_hover(chart.assign(value=chart["trainable_MB"] * MB / unit[1]), chart["trainable_MB"] * MB)
    fig = px.bar(
        chart,
        x="mode",
        y="value",
        color="mode",
        text=[format_bytes(v * MB, unit=unit) for v in chart["trainable_MB"]],
        labels={"value": f"trainable parameters ({unit[0]}, fp32)", "mode": ""},
        color_discrete_map=MODE_COLORS,
        custom_data=_BAR_HOVER_COLUMNS,
        title=title,
    )
    _bar_hover(fig, "trainable parameters (fp32)")
    # The mode keeps its colour; the selection is a neutral outline, the others fade.
    for trace in fig.data:
        chosen = selected in list(trace.x)
        trace.marker.line = {"color": SELECTION_COLOR, "width": 3 if chosen else 0}
        trace.marker.opacity = 1.0 if chosen else UNSELECTED_OPACITY
        trace.textposition = "outside"
    fig.update_layout(**_LAYOUT, showlegend=False)
    _bytes_axis(fig, float(chart["trainable_MB"].max() * MB) if len(chart) else 0.0, "trainable parameters")
    modes = list(chart["mode"])
    fig.update_xaxes(tickvals=modes, ticktext=[_mode_tick(m) for m in modes], tickangle=0)
    return fig


def activation_bars(
    table: pd.DataFrame, measured: Mapping[str, Any] | None = None, *, title: str
) -> go.Figure:
    """Grouped bars of activation memory per mode: necessary (model) and stock PyTorch (model) for every
    mode, plus stock PyTorch (measured) and engine (measured) for the modes in ``measured``."""
    long = activation_frame(table, dict(measured or {}))
    unit = bytes_unit(float(long["MB"].max() * MB) if len(long) else 0.0)
    long = _with_hover(long.assign(value=long["MB"] * MB / unit[1]), long["MB"] * MB)
    fig = px.bar(
        long,
        x="mode",
        y="value",
        color="figure",
        barmode="group",
        title=title,
        color_discrete_map=FIGURE_COLORS,
        pattern_shape="figure",
        pattern_shape_map=FIGURE_PATTERNS,
        category_orders={"figure": list(ACTIVATION_LABELS)},
        labels={"value": f"activations stored for backward ({unit[0]})", "mode": "", "figure": ""},
        custom_data=_BAR_HOVER_COLUMNS,
    )
    _bar_hover(fig)
    largest = unit[1] * float(long["value"].max()) if len(long) else 0.0
    _bytes_axis(fig, largest, "activations stored for backward")
    modes = list(dict.fromkeys(long["mode"]))
    fig.update_xaxes(tickvals=modes, ticktext=[_mode_tick(m) for m in modes], tickangle=0)
    fig.update_layout(**{**_LAYOUT, "legend": _LEGEND_BELOW}, legend_title_text="")
    return fig


_SERIES_COLORS = {
    "param_bytes": "#4c78a8",
    TOTALS.activations_necessary_bytes: "#54a24b",
    TOTALS.activations_stock_bytes: "#e45756",
    MEMORY.activations_measured_stock_bytes: "#b279a2",
    MEMORY.activations_measured_engine_bytes: "#1f77b4",
}
LAYER_SERIES: dict[str, tuple[str, str]] = {
    name: ("parameters" if name == "param_bytes" else quantity_label(name), color)
    for name, color in _SERIES_COLORS.items()
}
"""Per-layer columns drawn along the depth of the network, with their labels and colours."""


def layer_depth_chart(layers: pd.DataFrame, *, title: str, log_y: bool = False) -> go.Figure:
    """Parameter vs activation bytes of each layer along the depth of the network (execution order).

    Parameters and necessary activations are bars; stock PyTorch's (modelled, and measured when the
    table has the measured columns) are lines. Hover shows layer name, type, shapes and the rule's reason.
    Rows with nothing in any series (shape-only layers) are left out to keep the x axis readable.
    """
    cols = [c for c in LAYER_SERIES if c in layers.columns]
    rows = layers[layers[cols].sum(axis=1) > 0].reset_index(drop=True)
    x = list(range(1, len(rows) + 1))
    unit = bytes_unit(float(rows[cols].max().max()) if len(rows) else 0.0)
    custom = rows[["layer", "type", "input_shape", "output_shape", "necessary_reason"]].astype(str).to_numpy()
    hover = (
        "<b>%{customdata[0]}</b> (%{customdata[1]})<br>in %{customdata[2]} → out %{customdata[3]}<br>"
        f"%{{meta}}: %{{y:,.3f}} {unit[0]}<br><i>%{{customdata[4]}}</i><extra></extra>"
    )
    fig = go.Figure()
    for col in cols:
        label, color = LAYER_SERIES[col]
        y = rows[col].astype(float) / unit[1]
        common = {"x": x, "y": y, "name": label, "customdata": custom, "hovertemplate": hover, "meta": label}
        if col in ("param_bytes", TOTALS.activations_necessary_bytes):
            fig.add_trace(go.Bar(marker_color=color, opacity=0.85, **common))
        else:
            dash = "dot" if "measured" in col else "solid"
            fig.add_trace(
                go.Scatter(mode="lines", line={"color": color, "width": 1.5, "dash": dash}, **common)
            )
    fig.update_layout(
        **_LAYOUT,
        title=title,
        barmode="group",
        bargap=0.1,
        hovermode="closest",
        xaxis_title="layer (execution order, input → classifier)",
    )
    _bytes_axis(fig, unit[1], "memory")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


BACKBONE_SYMBOLS = ("circle", "square", "triangle-up", "diamond", "pentagon", "hexagon", "star", "x")
"""Marker symbols told apart by backbone on the seed-grouped figure (colour is the mode)."""


def seed_groups_figure(
    groups: pd.DataFrame,
    *,
    paper: pd.DataFrame | None = None,
    x_label: str = "step peak, measured",
    title: str = "",
) -> go.Figure:
    """Memory vs accuracy per dataset, one point per backbone x mode with its seeds pooled (the shape of
    the paper's main figure): one panel per dataset, x the mean measured step peak with its standard
    deviation, y the mean validation accuracy (%) with its standard deviation, colour the mode, symbol
    the backbone.

    ``groups``: a :func:`tinytl_core.seeds.group_seeds` table (rows without a measured peak are
    left out). ``paper``: :func:`tinytl_core.ui.sweep.paper_frame` rows, drawn in panels of their own
    (``"<dataset> (paper)"``, x = the paper's analytic memory), never on the measured axis.
    """
    data = groups.dropna(subset=["peak_mean_MB", "acc_mean_pct"])
    # one bytes unit for all panels, from the largest value shown (the axis titles get it: "(GB)")
    largest = max(
        [float(data["peak_mean_MB"].max() * MB) if len(data) else 0.0]
        + ([float(paper["memory_MB"].max() * MB)] if paper is not None and len(paper) else [])
    )
    unit_name, factor = bytes_unit(largest)
    scale = MB / factor
    panels: list[tuple[str, pd.DataFrame, bool]] = [
        (str(d), data[data["dataset"] == d], False) for d in dict.fromkeys(data["dataset"])
    ]
    if paper is not None and len(paper):
        for dataset in dict.fromkeys(paper["dataset"]):
            rows = paper[paper["dataset"] == dataset]
            panels.append((f"{rows['dataset_title'].iloc[0]} (paper)", rows, True))
    fig = make_subplots(
        rows=1, cols=max(1, len(panels)), subplot_titles=[name for name, _, _ in panels] or [""]
    )
    symbols = {
        b: BACKBONE_SYMBOLS[i % len(BACKBONE_SYMBOLS)] for i, b in enumerate(dict.fromkeys(data["backbone"]))
    }
    shown: set[str] = set()
    for col, (_, rows, published) in enumerate(panels, start=1):
        for _, row in rows.iterrows():
            mode = row["mode"]
            name = MODES[mode].title if mode in MODES else mode
            if published:
                trace = go.Scatter(
                    x=[row["memory_MB"] * scale],
                    y=[row["top1_pct"]],
                    mode="markers",
                    marker={"size": 12, "symbol": "diamond-open", "color": MODE_COLORS.get(mode, "#999999")},
                    name=f"{row['method']} (paper)",
                    legendgroup="paper",
                    showlegend=False,
                    hovertemplate=(
                        f"<b>{row['method']}</b> ({row['backbone']}, {row['resolution']} px)<br>"
                        f"analytic memory %{{x:,.3~f}} {unit_name}<br>top-1 %{{y:.1f}}%<extra></extra>"
                    ),
                )
            else:
                trace = go.Scatter(
                    x=[row["peak_mean_MB"] * scale],
                    y=[row["acc_mean_pct"]],
                    error_x={"type": "data", "array": [_spread(row["peak_std_MB"]) * scale], "visible": True},
                    error_y={"type": "data", "array": [_spread(row["acc_std_pct"])], "visible": True},
                    mode="markers",
                    marker={
                        "size": 12,
                        "symbol": symbols.get(row["backbone"], "circle"),
                        "color": MODE_COLORS.get(mode, OKABE_ITO["grey"]),
                        "line": {"width": 1, "color": SELECTION_COLOR},
                    },
                    name=name,
                    legendgroup=mode,
                    showlegend=mode not in shown,
                    hovertemplate=(
                        f"<b>{name}</b> · {row['backbone']} · {row['resolution']} px<br>"
                        + (f"{row['differs_in']}<br>" if row.get("differs_in") else "")
                        + f"val acc %{{y:.1f}}% ± {_spread(row['acc_std_pct']):.1f} "
                        f"over {row['seeds']} seed(s)<br>"
                        f"step peak %{{x:,.3~f}} {unit_name} ± "
                        f"{format_bytes(_spread(row['peak_std_MB']) * MB, unit=(unit_name, factor))}"
                        "<extra></extra>"
                    ),
                )
                shown.add(mode)
            fig.add_trace(trace, row=1, col=col)
        label = "paper's memory, analytic" if published else x_label
        fig.update_xaxes(
            title_text=f"{label} ({unit_name})",
            rangemode="tozero",
            separatethousands=True,
            exponentformat="none",
            row=1,
            col=col,
        )
    fig.update_yaxes(title_text=ACCURACY.title, row=1, col=1)
    fig.update_layout(**{**_LAYOUT, "legend": _LEGEND_BELOW}, title=title, height=420)
    return fig


def _spread(value: float) -> float:
    """A standard deviation for an error bar: 0 when there is none to tell (one seed)."""
    return 0.0 if value is None or pd.isna(value) else float(value)


def mode_color(label: str, index: int = 0) -> str:
    """The colour of the mode a series ``label`` names (the label itself or one of its words); a neutral
    grey for a label that names none."""
    for word in (label, *label.split()):
        if word in MODE_COLORS:
            return MODE_COLORS[word]
    return OKABE_ITO["grey"]


def lite_residual_dot() -> str:
    """Graphviz DOT of a block with a lite residual side branch (TinyTL Sec. 3.2, Eq. 4): the frozen main
    branch (an inverted bottleneck, expand 6) beside a branch at half resolution with a 5x5 group conv
    (2 groups) and a 1x1 conv, upsampled back and added."""
    return """digraph G {
  rankdir=LR; bgcolor="transparent"; nodesep=0.35; ranksep=0.4;
  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=14, color="#666"];
  edge [color="#555"];
  x [label="a_i\\n(C x H x W)", fillcolor="#eeeeee"];
  subgraph cluster_main { label="main branch: frozen weights (biases may train)"; fontname="Helvetica";
    fontsize=13; color="#4c78a8"; style="rounded";
    e [label="1x1 conv\\nexpand x6", fillcolor="#dbe6f3"];
    d [label="3x3 depthwise\\nconv", fillcolor="#dbe6f3"];
    p [label="1x1 conv\\nproject", fillcolor="#dbe6f3"]; e -> d -> p; }
  subgraph cluster_lr { label="lite residual: trains, ~26x smaller activations"; fontname="Helvetica";
    fontsize=13; color="#e45756"; style="rounded";
    r [label="2x2 avg pool\\n(H/2 x W/2)", fillcolor="#fbe0df"];
    g [label="5x5 group conv\\n(groups=2)", fillcolor="#fbe0df"];
    o [label="1x1 conv", fillcolor="#fbe0df"];
    u [label="bilinear\\nupsample x2", fillcolor="#fbe0df"]; r -> g -> o -> u; }
  add [label="+", shape=circle, fillcolor="#ffffff", fontsize=20];
  y [label="a_(i+1)", fillcolor="#eeeeee"];
  x -> e; x -> r; p -> add; u -> add; x -> add [style=dashed, label=" identity", fontsize=12];
  add -> y;
}"""
