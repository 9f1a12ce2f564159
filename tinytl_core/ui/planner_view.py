"""The Budget planner page's logic (no Streamlit): presets as options, the chart's points and figure, the
table of what fits, accuracy from stored and reference runs, and queueing a "train it" run."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from tinytl_core.adapt import AdaptConfig
from tinytl_core.engine.quantized import BITS as EIGHT_BITS
from tinytl_core.jobs import JobQueue
from tinytl_core.planner.accuracy import (
    NOT_MEASURED,
    REFERENCE,
    STORED,
    accuracy_table,
    attach_accuracy,
    format_accuracy,
)
from tinytl_core.planner.budget import PRESETS, Budget
from tinytl_core.planner.plan import PLANNED, Plan, SearchSpace, pareto_front
from tinytl_core.planner.profile import ProfileCache
from tinytl_core.quantities import RunStatus, bytes_unit, format_bytes
from tinytl_core.reference import PAPER_BACKBONE, load_reference_runs
from tinytl_core.results import ResultsStore
from tinytl_core.ui.figures import SELECTION_COLOR, add_budget_line, budget_on_axis, mode_color
from tinytl_core.ui.runs import public_run
from tinytl_core.ui.sweep import paper_frame

CUSTOM = "custom"
"""The preset option for a budget typed by hand."""
TRAIN_STEPS = 200
"""Steps of a run queued with "train it" (as the Adapt page's default)."""


def preset_label(name: str) -> str:
    """The preset picker's label: the preset's own, or 'Custom (KB / MB / GB)'."""
    return PRESETS[name].label if name in PRESETS else "Custom size (KB / MB / GB)"


def budget_from_choice(preset: str, custom: str) -> Budget:
    """The budget the page's controls describe (raises :class:`~tinytl_core.planner.budget.BudgetError`)."""
    return Budget.of(preset if preset in PRESETS else custom)


def stored_runs(db_path: str | None = None) -> list[dict[str, Any]]:
    """The finished runs of the results store (for their accuracy), as the app shows them
    (:func:`tinytl_core.ui.runs.public_run`: an upload by its own name, never its server path)."""
    return [public_run(r) for r in ResultsStore(db_path).list_runs(status=RunStatus.FINISHED.value)]


@functools.cache
def shared_cache() -> ProfileCache:
    """One profile cache per process (memory over the disk cache), shared by every session."""
    return ProfileCache()


def accuracy_runs(stored: Iterable[Mapping[str, Any]], *, reference: bool = True) -> pd.DataFrame:
    """Accuracy per (backbone, mode, resolution, dataset) of the user's runs and, with ``reference``, of
    the bundled reference sweep (labelled as such)."""
    tables = [accuracy_table(stored, source=STORED)]
    if reference:
        tables.append(accuracy_table(load_reference_runs(), source=REFERENCE))
    tables = [t for t in tables if len(t)]
    return pd.concat(tables, ignore_index=True) if tables else accuracy_table([])


def chart_points(plan: Plan, accuracy: pd.DataFrame, dataset: str | None) -> pd.DataFrame:
    """One point per fitting (backbone, mode, resolution): its largest fitting batch, with accuracy on
    ``dataset`` where measured, and ``on_front`` (Pareto front of modelled peak vs accuracy, or vs trainable
    parameters when no point has an accuracy). ``y`` is the plotted value, ``y_label`` says which."""
    fit = plan.fitting
    if not len(fit):
        return pd.DataFrame()
    keys = [PLANNED.backbone, PLANNED.mode, PLANNED.resolution]
    points = fit.sort_values(PLANNED.batch_size).groupby(keys, sort=False).tail(1).reset_index(drop=True)
    if dataset is not None and len(accuracy):
        points = attach_accuracy(points, accuracy, dataset)
    else:
        points = points.assign(
            accuracy_mean=float("nan"), accuracy_spread=float("nan"), n_runs=0, accuracy_batch=float("nan")
        )
        points["accuracy_source"] = NOT_MEASURED
    points["accuracy_text"] = _accuracy_texts(points)
    measured = points["accuracy_mean"].notna().any()
    points["y"] = 100 * points["accuracy_mean"] if measured else points[PLANNED.n_trainable].astype(float)
    points["y_label"] = f"validation accuracy on {dataset} (%)" if measured else "trainable parameters"
    points["on_front"] = pareto_front(points, PLANNED.peak_bytes, "y")
    return points


def planner_figure(
    points: pd.DataFrame, budget: Budget, *, title: str, paper: pd.DataFrame | None = None
) -> go.Figure:
    """Modelled peak (x) vs accuracy or trainable parameters (y), one colour per mode, the Pareto front
    as a line through its points, the budget as a vertical line. ``paper``: :func:`paper_points` drawn as
    a reference layer (open diamonds, legend group "paper"): the paper's own network, datasets and
    *analytic* memory, so labelled; only on an accuracy axis."""
    fig = go.Figure()
    on_accuracy = len(points) and "accuracy" in str(points["y_label"].iloc[0])
    paper = paper if paper is not None and len(paper) and on_accuracy else None
    data_largest = max(
        float(points[PLANNED.peak_bytes].max()) if len(points) else 0.0,
        float(paper["memory_MB"].max() * 1e6) if paper is not None else 0.0,
    )
    # the budget sets the scale only when it is near the points (else it is a note: budget_on_axis)
    largest = max(data_largest, float(budget.nbytes) if budget_on_axis(budget.nbytes, data_largest) else 0.0)
    unit = bytes_unit(largest)
    y_label = str(points["y_label"].iloc[0]) if len(points) else ""
    for mode, group in points.groupby(PLANNED.mode, sort=False):
        fig.add_trace(
            go.Scatter(
                x=group[PLANNED.peak_bytes] / unit[1],
                y=group["y"],
                mode="markers",
                name=str(mode),
                marker={
                    "color": mode_color(str(mode)),
                    "size": [13 if f else 8 for f in group["on_front"]],
                    "line": {"width": [2 if f else 0 for f in group["on_front"]], "color": SELECTION_COLOR},
                },
                customdata=list(
                    zip(
                        group[PLANNED.backbone],
                        group[PLANNED.resolution],
                        group[PLANNED.batch_size],
                        group[PLANNED.peak_bytes].map(format_bytes),
                        group["accuracy_text"],
                    )
                ),
                hovertemplate="%{customdata[0]} · " + str(mode) + "<br>%{customdata[1]} px, batch "
                "%{customdata[2]}<br>modelled peak %{customdata[3]}<br>" + y_label + ": %{y:,.1f}"
                "<br>%{customdata[4]}<extra></extra>",
            )
        )
    if paper is not None:
        for _, rows in paper.groupby("dataset", sort=False):
            fig.add_trace(
                go.Scatter(
                    x=rows["memory_MB"] * 1e6 / unit[1],
                    y=rows["top1_pct"],
                    mode="markers",
                    name=f"paper: {rows['dataset_title'].iloc[0]} ({PAPER_BACKBONE})",
                    legendgroup="paper",
                    # the method's mode colour, as on Compare runs' paper panels (the shape says "paper")
                    marker={
                        "symbol": "diamond-open",
                        "size": 11,
                        "color": [mode_color(m) for m in rows["mode"]],
                        "line": {"width": 2},
                    },
                    customdata=list(zip(rows["method"], rows["resolution"], rows["dataset_title"])),
                    hovertemplate="%{customdata[0]} (TinyTL paper, Table 2)<br>"
                    + PAPER_BACKBONE
                    + ", %{customdata[1]} px, batch 8, on %{customdata[2]}<br>top-1 %{y:.1f} %<br>"
                    "the paper's analytic memory %{x:,.1f} " + unit[0] + " (not a modelled step peak)"
                    "<extra></extra>",
                )
            )
    front = points[points["on_front"]].sort_values(PLANNED.peak_bytes) if len(points) else points
    if len(front) > 1:
        fig.add_trace(
            go.Scatter(
                x=front[PLANNED.peak_bytes] / unit[1],
                y=front["y"],
                mode="lines",
                name="Pareto front",
                line={"color": SELECTION_COLOR, "dash": "dot", "shape": "hv"},
                hoverinfo="skip",
            )
        )
    fig.update_layout(
        template="plotly_white",
        title=title,
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "xanchor": "left", "x": 0},
        yaxis_title=y_label,
    )
    fig.update_xaxes(
        title_text=f"modelled step peak ({unit[0]})",
        exponentformat="none",
        separatethousands=True,
        rangemode="tozero",
    )
    add_budget_line(fig, budget.nbytes, unit, axis="x", largest_bytes=data_largest)
    return fig


def fits_table(plan: Plan, accuracy: pd.DataFrame, dataset: str | None) -> pd.DataFrame:
    """What fits, for the page's table: one row per configuration, bytes in MB (10^6), accuracy as text."""
    fit = plan.fitting
    if dataset is not None and len(accuracy):
        fit = attach_accuracy(fit, accuracy, dataset)
    else:
        fit = fit.assign(
            accuracy_mean=float("nan"), accuracy_spread=float("nan"), n_runs=0, accuracy_batch=float("nan")
        )
        fit["accuracy_source"] = NOT_MEASURED
    return pd.DataFrame(
        {
            "backbone": fit[PLANNED.backbone],
            "mode": fit[PLANNED.mode],
            "px": fit[PLANNED.resolution],
            "batch": fit[PLANNED.batch_size],
            "GroupNorm": fit[PLANNED.group_norm],
            "modelled peak (MB)": fit[PLANNED.peak_bytes] / 1e6,
            "in budget (MB)": fit[PLANNED.counted_bytes] / 1e6,
            "activations (MB)": fit[PLANNED.activations_bytes] / 1e6,
            "trainable params": fit[PLANNED.n_trainable],
            "accuracy": _accuracy_texts(fit),
        }
    ).reset_index(drop=True)


def _accuracy_texts(frame: pd.DataFrame) -> list[str]:
    """:func:`~tinytl_core.planner.accuracy.format_accuracy` per row (saying when it was measured at
    another batch size than the row's)."""
    return [
        format_accuracy(m, s, n, src, batch=b, measured_batch=mb)
        for m, s, n, src, b, mb in zip(
            frame["accuracy_mean"],
            frame["accuracy_spread"],
            frame["n_runs"],
            frame["accuracy_source"],
            frame[PLANNED.batch_size],
            frame["accuracy_batch"],
        )
    ]


def paper_points(datasets: Iterable[str]) -> pd.DataFrame:
    """TinyTL's published Table 2 points on ``datasets`` (:func:`tinytl_core.ui.sweep.paper_frame`), for
    the chart's reference layer."""
    return paper_frame(list(datasets))


def summary_table(plan: Plan) -> pd.DataFrame:
    """Per backbone x mode, for the page: the largest resolution and batch that fit, the smallest peak."""
    s = plan.summary()

    def pair(a: Any, b: Any) -> str:
        return "does not fit" if pd.isna(a) else f"{int(a)} (batch {int(b)})"

    return pd.DataFrame(
        {
            "backbone": s["backbone"],
            "mode": s["mode"],
            "largest px that fits (its largest batch)": [
                pair(a, b) for a, b in zip(s["max_resolution"], s["max_batch_at_max_resolution"])
            ],
            "largest batch that fits (px)": [
                "does not fit" if pd.isna(a) else f"{int(a)} ({int(b)} px)"
                for a, b in zip(s["max_batch"], s["resolution_at_max_batch"])
            ],
            "smallest in budget": s["smallest_counted_bytes"].map(format_bytes),
        }
    )


def config_label(row: Mapping[str, Any]) -> str:
    """``'mobilenetv2_100 · bias · 128 px · batch 8 · 45.2 MB'`` for pickers."""
    return (
        f"{row['backbone']} · {row['mode']} · {int(row['resolution'])} px · batch {int(row['batch_size'])} · "
        f"{format_bytes(row['peak_bytes'])}"
    )


_SPACE_FIELDS = {
    "backbones": "backbones",
    "modes": "modes",
    "resolutions": "resolutions",
    "batch_sizes": "batch sizes",
    "optimizer": "optimizer",
    "frozen_weight_bits": "frozen-weight bits",
    "engine": "layers",
    "num_classes": "classes",
}


def space_changes(planned: SearchSpace, shown: SearchSpace) -> str:
    """Which settings of the form (``shown``) differ from those a plan was made with (``planned``), in
    words (``frozen-weight bits 8 -> 32``); empty when none. A plan kept across reruns must not pass for
    the form's: its figures and *Train it* are the plan's."""
    parts = []
    for name, label in _SPACE_FIELDS.items():
        before, now = getattr(planned, name), getattr(shown, name)
        if before == now:
            continue
        if name == "engine":
            parts.append(
                f"layers {'engine' if before else 'stock PyTorch'} -> {'engine' if now else 'stock PyTorch'}"
            )
        elif isinstance(before, tuple):
            parts.append(f"other {label}")
        else:
            parts.append(f"{label} {before} -> {now}")
    return ", ".join(parts)


TRAINABLE_WEIGHT_BITS = (EIGHT_BITS, 32)
"""The frozen-weight precisions a training run can use (``engine.quantized.check_weight_bits``)."""


def train_config(
    row: Mapping[str, Any], dataset: str, *, space: SearchSpace, pretrained: bool
) -> AdaptConfig:
    """The adaptation run "train it" starts for a planned configuration: every setting the plan counted
    (batch 1 with GroupNorm, the optimizer, the frozen-weight bits, the engine or stock PyTorch), so the
    run trains what was shown as fitting. ``ValueError`` when training cannot use the plan's frozen-weight
    bits (a run keeps them at 8 or 32)."""
    bits = space.frozen_weight_bits
    if bits not in TRAINABLE_WEIGHT_BITS:
        raise ValueError(
            f"this plan counts frozen weights at {bits} bits; a training run keeps them at 8 (8-bit codes) "
            "or 32 bits (float): plan with one of those to train it"
        )
    config = AdaptConfig(
        backbone=str(row["backbone"]),
        mode=str(row["mode"]),
        dataset=dataset,
        steps=TRAIN_STEPS,
        batch_size=int(row["batch_size"]),
        resolution=int(row["resolution"]),
        group_norm=int(row["batch_size"]) == 1,
        optimizer=space.optimizer,
        weight_bits=bits,
        engine=space.engine,
        pretrained=pretrained,
    )
    config.validate()
    return config


def queue_training(config: AdaptConfig, *, owner: str | None, db_path: str | None = None) -> int:
    """Queue ``config`` on the persistent job queue (:class:`tinytl_core.jobs.JobQueue`); returns the job
    id. The one place the planner starts training."""
    return JobQueue(db_path).submit(config, owner=owner, label=f"planner: {config.dataset}")
