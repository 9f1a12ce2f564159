"""Vega-Lite charts for pages that must show fast: the browser draws them with Streamlit's Vega bundle
(about 0.8 MB of JavaScript) instead of Plotly's (4.7 MB), whose loading held back everything else on a
new tab's first view, and cost the server little to send again (the Adapt page redraws its curves every
poll). Same colours as the Plotly figures (:data:`~tinytl_core.ui.figures.MODE_COLORS`).

Each builder returns ``(data, spec)`` for ``st.vega_lite_chart(data, spec)``: plain data, plain dict.
:func:`inline_spec` joins the two into one self-contained spec (a notebook displays it with
``IPython.display.display({VEGA_LITE_MIME: inline_spec(data, spec)}, raw=True)``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from tinytl_core.memory import MB
from tinytl_core.modes import MODES
from tinytl_core.quantities import bytes_unit
from tinytl_core.ui.figures import MODE_COLORS, SELECTION_COLOR, mode_color
from tinytl_core.ui.runs import ACCURACY

VEGA_LITE_SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
VEGA_LITE_MIME = "application/vnd.vegalite.v5+json"
"""The MIME type Jupyter renders a Vega-Lite spec of :func:`inline_spec` with."""

BACKBONE_SHAPES = ("circle", "square", "triangle-up", "diamond", "cross", "triangle-down", "wedge", "stroke")
"""Vega-Lite point shapes, one per backbone in order of appearance."""
TOOLTIP = {
    "id": "run",
    "mode": "mode",
    "backbone": "backbone",
    "dataset": "dataset",
    "resolution": "resolution (px)",
    "batch_size": "batch",
    "steps_done": "steps",
}
"""Run fields shown when hovering a point, with their titles."""


def memory_accuracy_chart(
    frame: pd.DataFrame, *, x: str, x_label: str, title: str
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Stored runs on a memory-accuracy plane (the shape of the paper's headline figure), as Vega-Lite:
    ``x`` is a memory column in MB of a :func:`~tinytl_core.ui.runs.runs_frame`, scaled to the unit its
    largest value reads best in (``training memory, modelled (GB)``); y the validation accuracy in %;
    colour the mode (:data:`MODE_COLORS`), shape the backbone. Runs without either figure are left out."""
    y = ACCURACY.key
    data = frame.dropna(subset=[x, y])
    unit, factor = bytes_unit(float(data[x].max()) * MB if len(data) else 0.0)
    shown = [c for c in TOOLTIP if c in data.columns]
    data = data[shown + [y]].assign(memory=data[x] * MB / factor)
    modes = [m for m in MODES if m in set(data["mode"])] + sorted(set(data["mode"]) - set(MODES))
    backbones = list(dict.fromkeys(data["backbone"]))
    spec: dict[str, Any] = {
        "title": title,
        "mark": {"type": "point", "filled": True, "size": 120, "opacity": 0.85, "stroke": SELECTION_COLOR},
        "encoding": {
            "x": {
                "field": "memory",
                "type": "quantitative",
                "title": f"{x_label} ({unit})",
                "scale": {"zero": True},
                "axis": {"format": ",~r"},
            },
            "y": {"field": y, "type": "quantitative", "title": ACCURACY.title, "scale": {"zero": True}},
            "color": {
                "field": "mode",
                "type": "nominal",
                "title": "mode",
                "scale": {"domain": modes, "range": [MODE_COLORS.get(m, "#999999") for m in modes]},
            },
            "shape": {
                "field": "backbone",
                "type": "nominal",
                "title": "backbone",
                "scale": {
                    "domain": backbones,
                    "range": [BACKBONE_SHAPES[i % len(BACKBONE_SHAPES)] for i in range(len(backbones))],
                },
            },
            "tooltip": [
                *({"field": c, "title": TOOLTIP[c]} for c in shown),
                {"field": "memory", "title": f"{x_label} ({unit})", "format": ",.4~r"},
                {"field": y, "title": ACCURACY.title, "format": ".1f"},
            ],
        },
    }
    return data.reset_index(drop=True), spec


CURVE_LOSS, CURVE_TRAIN, CURVE_VAL = "training loss", "training accuracy (running)", "validation accuracy"
"""The ``curve`` values of :func:`curves_chart`'s data: what each row is a point of."""
SERIES_SHAPES = ("circle", "square", "diamond", "triangle-up", "cross", "triangle-down")
"""Validation marker shapes, one per series in order: runs of the same mode (same colour) told apart."""
CURVE_PANEL = {"width": 340, "height": 240}
"""Size of each of the two panels of :func:`curves_chart` (a concatenation takes no container width)."""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def curves_chart(
    series: Iterable[tuple[str, Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]], *, title: str = ""
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Training curves as Vega-Lite: training loss per step (left panel), accuracy in % (right panel:
    running training accuracy dotted, validation as a line with markers, y 0-100). Each series has the
    colour of its mode (:func:`~tinytl_core.ui.figures.mode_color`, as every chart); validation markers
    differ by series, so runs of one mode are told apart. Steps are whole numbers on the axis.

    ``series`` yields ``(label, steps, evals)`` with the step and eval history dicts of
    :mod:`tinytl_core.adapt` (``step``, ``loss``, ``train_acc`` / ``val_acc`` as fractions); the mode is
    the label or a word of it (``'#3 bias'``). Series without a point are left out, and so are points
    whose step or value is not a finite number (a damaged history draws what it has). The data has one row
    per point: ``run`` (the label), ``step``, ``curve`` (:data:`CURVE_LOSS`, :data:`CURVE_TRAIN`,
    :data:`CURVE_VAL`) and ``value`` (loss, or accuracy in %).
    """
    columns: dict[str, list[Any]] = {"run": [], "step": [], "curve": [], "value": []}
    labels: list[str] = []

    def add(label: str, points: Sequence[Mapping[str, Any]], curve: str, field: str, scale: float) -> None:
        for point in points:
            step, value = point.get("step"), point.get(field)
            if not (_finite(step) and _finite(value)):  # a damaged point (None, NaN, text) is left out
                continue
            columns["run"].append(label)
            columns["step"].append(step)
            columns["curve"].append(curve)
            columns["value"].append(scale * value)

    for label, steps, evals in series:
        if not (steps or evals) or label in labels:
            continue
        labels.append(label)
        add(label, steps, CURVE_LOSS, "loss", 1.0)
        add(label, steps, CURVE_TRAIN, "train_acc", 100.0)
        add(label, evals, CURVE_VAL, "val_acc", 100.0)
    data = pd.DataFrame(columns)
    # Colour and shape share the field and domain: Vega-Lite merges them into one legend of runs.
    color = {
        "field": "run",
        "type": "nominal",
        "title": "run",
        "scale": {"domain": labels, "range": [mode_color(label) for label in labels]},
        "legend": {"orient": "bottom", "columns": 4, "labelLimit": 260, "symbolStrokeWidth": 3},
    }
    shape = {
        "field": "run",
        "type": "nominal",
        "scale": {
            "domain": labels,
            "range": [SERIES_SHAPES[i % len(SERIES_SHAPES)] for i in range(len(labels))],
        },
    }
    x = {"field": "step", "type": "quantitative", "title": "step", "axis": {"tickMinStep": 1, "format": "d"}}
    tooltip = [
        {"field": "run", "title": "run"},
        {"field": "curve", "title": "curve"},
        {"field": "step", "title": "step"},
        {"field": "value", "title": "value", "format": ",.3~f"},
    ]
    accuracy_y = {
        "field": "value",
        "type": "quantitative",
        "title": "accuracy (%)",
        "scale": {"domain": [0, 100]},
    }

    def only(curve: str) -> list[dict[str, Any]]:
        return [{"filter": {"field": "curve", "equal": curve}}]

    loss = {
        **CURVE_PANEL,
        "title": CURVE_LOSS,
        "transform": only(CURVE_LOSS),
        "mark": {"type": "line", "strokeWidth": 2},
        "encoding": {
            "x": x,
            "y": {"field": "value", "type": "quantitative", "title": "loss"},
            "color": color,
            "tooltip": tooltip,
        },
    }
    accuracy = {
        **CURVE_PANEL,
        "title": {"text": "accuracy (%)", "subtitle": "dotted: training (running) · markers: validation"},
        "encoding": {"x": x, "y": accuracy_y, "color": color, "tooltip": tooltip},
        "layer": [
            {
                "transform": only(CURVE_TRAIN),
                "mark": {"type": "line", "strokeDash": [2, 3], "strokeWidth": 2},
            },
            {"transform": only(CURVE_VAL), "mark": {"type": "line", "strokeWidth": 2}},
            {
                "transform": only(CURVE_VAL),
                "mark": {"type": "point", "filled": True, "size": 70, "opacity": 1},
                "encoding": {"shape": shape},
            },
        ],
    }
    spec: dict[str, Any] = {"hconcat": [loss, accuracy], "resolve": {"scale": {"color": "shared"}}}
    if title:
        spec["title"] = title
    return data, spec


def inline_spec(data: pd.DataFrame, spec: Mapping[str, Any]) -> dict[str, Any]:
    """One self-contained Vega-Lite spec: ``spec`` of a builder here with its ``data`` inlined as JSON
    values (missing figures as null) and the schema named. What a notebook displays:
    ``IPython.display.display({VEGA_LITE_MIME: inline_spec(data, spec)}, raw=True)``."""
    values = json.loads(data.to_json(orient="records"))  # NaN -> null, numpy numbers -> JSON numbers
    return {"$schema": VEGA_LITE_SCHEMA, **spec, "data": {"values": values}}
