"""Vega-Lite charts for pages that must show fast: the browser draws them with Streamlit's Vega bundle
(about 0.8 MB of JavaScript) instead of Plotly's (4.7 MB), whose loading held back everything else on a
new tab's first view. Same colours as the Plotly figures (:data:`~tinytl_core.ui.figures.MODE_COLORS`).

Each builder returns ``(data, spec)`` for ``st.vega_lite_chart(data, spec)``: plain data, plain dict.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from tinytl_core.memory import MB
from tinytl_core.modes import MODES
from tinytl_core.quantities import bytes_unit
from tinytl_core.ui.figures import MODE_COLORS, SELECTION_COLOR
from tinytl_core.ui.runs import ACCURACY

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
