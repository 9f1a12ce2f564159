"""Plotly figures of the app, built from library tables (MB = 10^6 bytes throughout, as in the paper).

Every builder takes plain data (DataFrames, snapshots, run dicts) and returns a ``plotly`` figure, so the
pages only place them. :func:`lite_residual_dot` returns the lite residual diagram as Graphviz DOT text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tinytl_core.memory import MB
from tinytl_core.memory.report import MEMORY, TOTALS
from tinytl_core.modes import MODES
from tinytl_core.ui.explorer import (
    ACTIVATION_LABELS,
    COMPONENT_LABELS,
    activation_frame,
    components_frame,
)
from tinytl_core.ui.explorer import label as quantity_label
from tinytl_core.ui.runs import ACCURACY

COMPONENT_COLORS = dict(zip(COMPONENT_LABELS, ("#4c78a8", "#f58518", "#e45756", "#bab0ac")))
FIGURE_COLORS = dict(zip(ACTIVATION_LABELS, ("#54a24b", "#e45756", "#b279a2", "#4c78a8")))
MODE_COLORS = dict(zip(MODES, px.colors.qualitative.D3))
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


def mode_memory_bars(table: pd.DataFrame, *, title: str, selected: str | None = None) -> go.Figure:
    """Stacked bars of modelled training memory per mode: weights, gradients + optimizer state,
    activations stored for backward, transient working set; the total on top of each bar.

    ``table`` is a :func:`~tinytl_core.comparisons.compare_modes` table; ``selected`` outlines one mode.
    """
    long = components_frame(table)
    fig = px.bar(
        long,
        x="mode",
        y="MB",
        color="component",
        title=title,
        color_discrete_map=COMPONENT_COLORS,
        category_orders={"component": list(COMPONENT_LABELS)},
        labels={"MB": "training memory (MB)", "mode": ""},
        hover_data={"MB": ":.2f"},
    )
    totals = long.groupby("mode", sort=False)["MB"].sum()
    fig.add_trace(
        go.Scatter(
            x=list(totals.index),
            y=list(totals.values),
            mode="text",
            showlegend=False,
            text=[f"{v:,.1f} MB" for v in totals.values],
            textposition="top center",
            hoverinfo="skip",
        )
    )
    if selected is not None and selected in totals.index:
        fig.add_vrect(
            x0=list(totals.index).index(selected) - 0.45,
            x1=list(totals.index).index(selected) + 0.45,
            line_width=2,
            line_color="#333",
            fillcolor="rgba(0,0,0,0)",
        )
    fig.update_layout(
        **{**_LAYOUT, "legend": _LEGEND_BELOW},
        legend_title_text="",
        yaxis_range=[0, 1.15 * max(totals.max(), 1e-9)],
    )
    fig.update_xaxes(tickvals=list(totals.index), ticktext=[_mode_tick(m) for m in totals.index], tickangle=0)
    return fig


def trainable_bars(table: pd.DataFrame, selected: str, *, title: str) -> go.Figure:
    """Bars of trainable parameter bytes per mode (from :func:`tinytl_core.reports.trainable_table`), the
    ``selected`` mode highlighted; modes that do not apply are left out."""
    chart = table.dropna(subset=["trainable_params"]).assign(selected=lambda t: t["mode"] == selected)
    fig = px.bar(
        chart,
        x="mode",
        y="trainable_MB",
        color="selected",
        text_auto=".2f",
        labels={"trainable_MB": "trainable parameters (MB, fp32)", "mode": ""},
        color_discrete_map={True: "#d62728", False: "#1f77b4"},
        title=title,
    )
    fig.update_layout(**_LAYOUT, showlegend=False)
    modes = list(chart["mode"])
    fig.update_xaxes(tickvals=modes, ticktext=[_mode_tick(m) for m in modes], tickangle=0)
    return fig


def activation_bars(
    table: pd.DataFrame, measured: Mapping[str, Any] | None = None, *, title: str
) -> go.Figure:
    """Grouped bars of activation memory per mode: necessary (model) and stock PyTorch (model) for every
    mode, plus stock PyTorch (measured) and engine (measured) for the modes in ``measured``."""
    long = activation_frame(table, dict(measured or {}))
    fig = px.bar(
        long,
        x="mode",
        y="MB",
        color="figure",
        barmode="group",
        title=title,
        color_discrete_map=FIGURE_COLORS,
        category_orders={"figure": list(ACTIVATION_LABELS)},
        labels={"MB": "activations stored for backward (MB)", "mode": "", "figure": ""},
        hover_data={"MB": ":.2f"},
    )
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
    custom = rows[["layer", "type", "input_shape", "output_shape", "necessary_reason"]].astype(str).to_numpy()
    hover = (
        "<b>%{customdata[0]}</b> (%{customdata[1]})<br>in %{customdata[2]} → out %{customdata[3]}<br>"
        "%{meta}: %{y:.3f} MB<br><i>%{customdata[4]}</i><extra></extra>"
    )
    fig = go.Figure()
    for col in cols:
        label, color = LAYER_SERIES[col]
        y = rows[col].astype(float) / MB
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
        yaxis_title="MB",
    )
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def memory_accuracy_scatter(frame: pd.DataFrame, *, x: str, x_label: str, title: str) -> go.Figure:
    """Stored runs on a memory-accuracy plane (the shape of the paper's headline figure): ``x`` is a
    memory column in MB, y the validation accuracy in %, colour the mode, symbol the backbone (a
    :func:`~tinytl_core.ui.runs.runs_frame`)."""
    y = ACCURACY.key
    data = frame.dropna(subset=[x, y])
    fig = px.scatter(
        data,
        x=x,
        y=y,
        color="mode",
        symbol="backbone",
        title=title,
        color_discrete_map=MODE_COLORS,
        category_orders={"mode": list(MODES)},
        hover_data={"id": True, "dataset": True, "resolution": True, "batch_size": True, "steps_done": True},
        labels={x: x_label, y: ACCURACY.title},
    )
    fig.update_traces(marker={"size": 13, "line": {"width": 1, "color": "#333"}})
    fig.update_layout(**{**_LAYOUT, "legend": {"orientation": "v", "title": {"text": "mode, backbone"}}})
    fig.update_xaxes(rangemode="tozero")
    fig.update_yaxes(rangemode="tozero")
    return fig


def curves_figure(
    series: Iterable[tuple[str, Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]], *, title: str = ""
) -> go.Figure:
    """Training curves, one colour per series: loss (left), running train and validation accuracy (right).

    ``series`` yields ``(label, steps, evals)`` with the step and eval history dicts of
    :mod:`tinytl_core.adapt` (``step``, ``loss``, ``train_acc`` / ``val_acc``).
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss", "accuracy (%)"))
    series = list(series)  # read twice: traces, then the step axis
    colors = px.colors.qualitative.D3
    for i, (label, steps, evals) in enumerate(series):
        color = MODE_COLORS.get(label, colors[i % len(colors)])
        if steps:
            fig.add_trace(
                go.Scatter(
                    x=[s["step"] for s in steps],
                    y=[s["loss"] for s in steps],
                    name=label,
                    legendgroup=label,
                    line={"color": color},
                ),
                row=1,
                col=1,
            )
            fig.add_trace(
                go.Scatter(
                    x=[s["step"] for s in steps],
                    y=[100 * s["train_acc"] for s in steps],
                    name=f"{label} train",
                    legendgroup=label,
                    showlegend=False,
                    line={"color": color, "dash": "dot"},
                ),
                row=1,
                col=2,
            )
        if evals:
            fig.add_trace(
                go.Scatter(
                    x=[e["step"] for e in evals],
                    y=[100 * e["val_acc"] for e in evals],
                    name=f"{label} val",
                    legendgroup=label,
                    showlegend=False,
                    mode="lines+markers",
                    marker={"size": 9},
                    line={"color": color},
                ),
                row=1,
                col=2,
            )
    # Legend below the panels: above them it overlaps the subplot titles.
    fig.update_layout(**{**_LAYOUT, "legend": {**_LEGEND_BELOW, "y": -0.25}}, title=title, height=400)
    last_step = max((p["step"] for _, steps, evals in series for p in (*steps, *evals)), default=1)
    fig.update_xaxes(title_text="step", **step_ticks(last_step))
    fig.update_yaxes(range=[0, 100], row=1, col=2)
    return fig


def step_ticks(last_step: float, most: int = 8) -> dict[str, Any]:
    """Axis settings for a step axis up to ``last_step``: ticks on whole steps only (never 1.5), at most
    ``most`` of them, every 1, 2, 5, 10, 20, 50... steps."""
    span, step = max(1, int(-(-last_step // 1))), 1
    while span / step > most:
        step = _next_nice(step)
    return {"tickmode": "linear", "tick0": 0, "dtick": step, "tickformat": "d"}


def _next_nice(step: int) -> int:
    """1 -> 2 -> 5 -> 10 -> 20 -> 50 -> 100 ..."""
    exponent = 10 ** (len(str(step)) - 1)
    lead = step // exponent
    return {1: 2, 2: 5, 5: 10}[lead] * exponent


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
