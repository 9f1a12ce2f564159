"""Memory over one training step: measured timelines (stock PyTorch vs the engine) stacked by category, with
the measured and the modelled peaks marked (the Memory Explorer's and the first notebook's chart)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tinytl_core.memory.timeline import Category, StepTimeline
from tinytl_core.quantities import MB, bytes_unit, format_bytes
from tinytl_core.ui.figures import PART_GREYS

MAX_POINTS = 400
"""Points per timeline in the chart; bins keep their largest instant so the peak survives."""

CATEGORY_ORDER: tuple[Category, ...] = (
    Category.PARAMETER,
    Category.OPTIMIZER_STATE,
    Category.INPUT,
    Category.ACTIVATION,
    Category.AUTOGRAD_DETAIL,
    Category.GRADIENT,
    Category.TEMPORARY,
    Category.UNKNOWN,
)
CATEGORY_STYLES: dict[Category, tuple[str, str]] = {
    Category.PARAMETER: (PART_GREYS["weights"], ""),
    Category.OPTIMIZER_STATE: (PART_GREYS["gradients"], "."),
    Category.INPUT: (PART_GREYS["working"], "x"),
    Category.ACTIVATION: (PART_GREYS["activations"], ""),
    Category.AUTOGRAD_DETAIL: (PART_GREYS["activations"], "/"),
    Category.GRADIENT: (PART_GREYS["gradients"], ""),
    Category.TEMPORARY: (PART_GREYS["working"], ""),
    Category.UNKNOWN: ("#f0f0f0", "."),
}
"""Each profiler category's grey and hatch: the parts' greys of the mode bars (hues mean modes only), a
hatch where two categories share a part's grey."""


def timeline_frame(timeline: StepTimeline, max_points: int = MAX_POINTS) -> pd.DataFrame:
    """The timeline in long form (``ms`` since the step started, ``category``, ``MB``), at most
    ``max_points`` instants: each bin of consecutive instants is represented by its largest one."""
    totals = timeline.totals
    if not totals:
        return pd.DataFrame(columns=["ms", "category", "MB"])
    size = max(1, -(-len(totals) // max_points))
    picks = [
        max(range(i, min(i + size, len(totals))), key=totals.__getitem__) for i in range(0, len(totals), size)
    ]
    start = timeline.times_us[0]
    rows = [
        {
            "ms": (timeline.times_us[i] - start) / 1000,
            "category": cat.value,
            "MB": timeline.bytes[i].get(cat, 0) / MB,
        }
        for i in picks
        for cat in CATEGORY_ORDER
    ]
    return pd.DataFrame(rows)


def step_timeline_figure(
    timelines: dict[str, StepTimeline], *, modelled: dict[str, float | None] | None = None, title: str
) -> go.Figure:
    """One panel per timeline (e.g. ``{"stock PyTorch": ..., "engine": ...}``): bytes alive over the step,
    stacked by the profiler's categories, the measured peak marked with its phase, and the modelled peak
    (``modelled[name]``, bytes) as a dashed line."""
    modelled = modelled or {}
    names = list(timelines)
    largest = max(
        [t.peak_bytes for t in timelines.values() if t.bytes] + [v for v in modelled.values() if v] + [0.0]
    )
    unit_name, factor = bytes_unit(largest)  # one unit for every panel (they share the y axis)
    fig = make_subplots(
        rows=1, cols=max(1, len(names)), shared_yaxes=True, subplot_titles=names, horizontal_spacing=0.04
    )
    for col, name in enumerate(names, start=1):
        timeline = timelines[name]
        frame = timeline_frame(timeline)
        for cat in CATEGORY_ORDER:
            part = frame[frame["category"] == cat.value]
            if not part["MB"].any():
                continue
            fig.add_trace(
                go.Scatter(
                    x=part["ms"],
                    y=part["MB"] * MB / factor,
                    name=cat.value,
                    legendgroup=cat.value,
                    showlegend=col == 1,
                    stackgroup=f"s{col}",
                    line={"width": 0.5},
                    fillcolor=CATEGORY_STYLES[cat][0],
                    fillpattern={"shape": CATEGORY_STYLES[cat][1], "fgcolor": "#ffffff"}
                    if CATEGORY_STYLES[cat][1]
                    else None,
                    marker={"color": CATEGORY_STYLES[cat][0]},
                    hovertemplate=f"{cat.value}: %{{y:,.3~f}} {unit_name}<extra>%{{x:,.0f}} ms</extra>",
                ),
                row=1,
                col=col,
            )
        if timeline.bytes:
            i = timeline.peak_index
            fig.add_trace(
                go.Scatter(
                    x=[(timeline.times_us[i] - timeline.times_us[0]) / 1000],
                    y=[timeline.peak_bytes / factor],
                    mode="markers+text",
                    marker={"color": "black", "size": 8},
                    text=[f"peak {format_bytes(timeline.peak_bytes)} ({timeline.peak_phase or 'step'})"],
                    textposition="top center",
                    showlegend=False,
                    hoverinfo="skip",
                ),
                row=1,
                col=col,
            )
        if modelled.get(name) is not None:
            fig.add_hline(
                y=modelled[name] / factor,
                line_dash="dash",
                line_color="#444444",
                row=1,
                col=col,
                annotation_text=f"modelled {format_bytes(modelled[name])}",
                annotation_position="bottom right",
            )
        fig.update_xaxes(title_text="ms since the step started", row=1, col=col)
    fig.update_yaxes(title_text=f"{unit_name} alive", row=1, col=1)
    fig.update_yaxes(exponentformat="none", separatethousands=True)
    fig.update_layout(
        title=title,
        template="plotly_white",
        margin={"l": 10, "r": 10, "t": 70, "b": 10},
        legend={"orientation": "h", "yanchor": "top", "y": -0.25, "xanchor": "left", "x": 0},
    )
    return fig
