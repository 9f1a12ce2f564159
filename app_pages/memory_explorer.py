"""Memory Explorer: where training memory goes, per mode and per layer, modelled and measured."""

import pandas as pd
import streamlit as st

from app_pages import _cache
from tinytl_core.adapt import resolve_device
from tinytl_core.comparisons import sign_mask_saving
from tinytl_core.memory import ACCOUNTINGS, OPTIMIZER_HELP, OPTIMIZER_STATES, MemoryLimitError, ReportTotals
from tinytl_core.memory.report import TOTALS
from tinytl_core.modes import MODES
from tinytl_core.quantities import CUDA_WORKSPACES_NOTE, describe, format_bytes, format_ratio
from tinytl_core.ui import checks, explorer, figures, step_chart
from tinytl_core.ui.errors import public_text

settings = _cache.settings()
backbone, resolution, batch_size = settings.backbone, settings.resolution, settings.batch_size

st.header("Memory Explorer")
st.caption(
    f"**{backbone}** · {resolution} px · batch {batch_size} (change them in the sidebar) · MB = 10^6 bytes"
)

mode = st.segmented_control(
    "Mode",
    list(MODES),
    default="bias",
    required=True,
    key="mx_mode",
    format_func=lambda m: MODES[m].title.split(" (")[0],
    persist_state="session",
    width="stretch",
)
c1, c2, c3, _ = st.columns([1.2, 1, 1, 2], vertical_alignment="bottom")
accounting = c1.segmented_control(
    "Accounting",
    ACCOUNTINGS,
    default="complete",
    required=True,
    key="mx_accounting",
    persist_state="session",
    help="complete: weights, gradients + optimizer state, stored activations and the working set. "
    "paper: TinyTL's own (peak activation + weights, frozen weights at 8 bits, no gradients).",
)
optimizer = c2.selectbox(
    "Optimizer",
    list(OPTIMIZER_STATES),
    index=list(OPTIMIZER_STATES).index("adam"),
    key="mx_optimizer",
    help=OPTIMIZER_HELP,
    persist_state="session",
)
group_norm = c3.toggle(
    "GroupNorm",
    key="mx_group_norm",
    persist_state="session",
    help="Replace BatchNorm by GroupNorm (8 channels per group), the paper's choice for "
    "batch size 1. GroupNorm needs its input stored even when frozen.",
)

problem = _cache.resolution_problem(backbone, resolution)
if problem:
    st.error(problem)
    st.stop()
try:
    table, reports = _cache.reports(backbone, resolution, batch_size, optimizer, accounting, group_norm)
    # Measured bytes are compared with the complete accounting's per-layer sums (the paper's is a peak).
    complete_table, complete_reports = (
        (table, reports)
        if accounting == "complete"
        else _cache.reports(backbone, resolution, batch_size, optimizer, "complete", group_norm)
    )
except (ValueError, RuntimeError) as exc:
    st.error(f"Cannot model {backbone} at {resolution} px, batch {batch_size}: {public_text(exc)}")
    st.stop()

report = reports[mode]
row = table.set_index("mode").loc[mode]
title = MODES[mode].title
st.info(f"**{title}** — {MODES[mode].description}", icon=":material/tune:")

# ------------------------------------------------------------------------------------------- totals
if isinstance(report, str):
    st.warning(f"{title} does not apply to {backbone}: {report}")
else:
    t = report.totals
    m = st.columns(6)
    m[0].metric(
        "Total",
        format_bytes(t.total_modelled_bytes),
        help=describe(TOTALS.total_modelled_bytes, ReportTotals).help,
        delta=None
        if mode == "full" or pd.isna(row["ratio_to_full"])
        else format_ratio(row["ratio_to_full"], 1.0),
        delta_color="off",
        delta_arrow="off",
    )
    m[1].metric("Weights", format_bytes(t.weights_bytes))
    m[2].metric("Grads + optimizer", format_bytes(t.grads_optimizer_bytes))
    m[3].metric(
        "Act. necessary",
        format_bytes(t.activations_necessary_bytes),
        help=describe(TOTALS.activations_necessary_bytes, ReportTotals).help,
    )
    m[4].metric(
        "Act. stock PyTorch",
        format_bytes(t.activations_stock_bytes),
        help=describe(TOTALS.activations_stock_bytes, ReportTotals).help,
    )
    m[5].metric("Trainable params", f"{t.n_trainable:,}", help=f"of {t.n_params:,}")
    fit = checks.memory_problem(
        complete_reports[mode].totals.total_stock_bytes,
        resolve_device("auto"),
        what=f"Training {title} with stock PyTorch at batch {batch_size}",
    )
    if fit:
        st.error(fit, icon=":material/memory:")

# ---------------------------------------------------------------------------------------- measuring
key = f"{backbone}|{resolution}|{batch_size}|{optimizer}|{group_norm}"
measured = st.session_state.setdefault("mx_measured", {}).setdefault(key, {})
left, right = st.columns([1, 3], vertical_alignment="center")
clicked = left.button(
    "Measure a real step",
    icon=":material/speed:",
    type="primary",
    key="mx_measure",
    disabled=isinstance(report, str),
    width="stretch",
)
right.caption(
    "Runs one real forward + backward + optimizer step of this mode with random weights and counts "
    "the bytes autograd saves for backward, per layer — once with stock PyTorch layers and once "
    "with the training engine's memory-lean layers."
)
if clicked:
    with st.spinner(f"Measuring one training step of {backbone} in {title}..."):
        try:
            measured[mode] = explorer.measure_mode(
                backbone,
                mode,
                resolution=resolution,
                batch_size=batch_size,
                optimizer=optimizer,
                group_norm=group_norm,
                modelled=complete_reports[mode],
            )
        except MemoryLimitError as exc:
            st.error(str(exc), icon=":material/memory:")
        except (ValueError, RuntimeError) as exc:
            st.error(f"The measurement failed: {public_text(exc)}")
step = measured.get(mode)
if step is not None and not isinstance(report, str):
    necessary = complete_reports[mode].totals.activations_necessary_bytes
    s = st.columns(3)
    s[0].metric("Necessary (model)", format_bytes(necessary), help="TinyTL's rules, summed per layer.")
    s[1].metric(
        "Stock PyTorch (measured)",
        format_bytes(step.stock_bytes),
        delta=format_ratio(step.stock_bytes, necessary, "necessary"),
        delta_color="off",
        delta_arrow="off",
    )
    if step.engine_bytes is not None:
        s[2].metric(
            "Engine (measured)",
            format_bytes(step.engine_bytes),
            delta=format_ratio(step.engine_bytes, necessary, "necessary", digits=2),
            delta_color="off",
            delta_arrow="off",
        )
    else:
        s[2].warning(f"The training engine could not run this model: {public_text(step.engine_error)}")
    peaks = st.columns(3)
    modelled_peak = {
        "stock PyTorch": complete_reports[mode].totals.total_stock_bytes,
        "engine": complete_reports[mode].totals.total_modelled_bytes,
    }
    for card, (name, measurement) in zip(peaks[1:], (("stock PyTorch", step.stock), ("engine", step.engine))):
        if measurement is not None and measurement.step_peak is not None:
            card.metric(
                f"Step peak, {name} (measured)",
                format_bytes(measurement.step_peak),
                delta=f"modelled {format_bytes(modelled_peak[name])}",
                delta_color="off",
                delta_arrow="off",
                help="The most memory alive at once in the step (what the OS or torch.cuda shows), "
                f"reached in the {measurement.peak_phase or 'step'}.",
            )
    peaks[0].caption(
        "**Step peak**: weights, optimizer state, the input, stored activations, gradients and temporaries "
        "alive at once — the number you can check yourself. Measured with PyTorch's profiler "
        "(torch.cuda.max_memory_allocated on CUDA); modelled by the memory model. " + CUDA_WORKSPACES_NOTE
    )
    timelines = {
        n: m.timeline
        for n, m in (("stock PyTorch", step.stock), ("engine", step.engine))
        if m is not None and m.timeline is not None
    }
    if timelines:
        st.plotly_chart(
            step_chart.step_timeline_figure(
                timelines, modelled=modelled_peak, title=f"{title}: memory over one training step"
            ),
            width="stretch",
            key="mx_step_timeline",
        )

# ------------------------------------------------------------------------------------------- charts
a, b = st.columns(2)
a.plotly_chart(
    figures.mode_memory_bars(
        table,
        title="Training memory per mode (modelled)",
        selected=mode,
        budget_bytes=settings.budget_bytes,  # set on the Budget planner
        budget_in_flash=settings.budget_in_flash,
    ),
    width="stretch",
    key="mx_bars",
)
b.plotly_chart(
    figures.activation_bars(
        complete_table, measured, title="Activations: necessary vs stock PyTorch vs engine"
    ),
    width="stretch",
    key="mx_activations",
)

if not isinstance(report, str):
    layers = explorer.layer_table(report, step)
    log_y = st.toggle("Log scale", key="mx_log", persist_state="session")
    st.plotly_chart(
        figures.layer_depth_chart(
            layers, log_y=log_y, title=f"{title}: parameters vs activations along the depth of {backbone}"
        ),
        width="stretch",
        key="mx_layers",
    )
    st.subheader("Per-layer table")
    shown, formats = explorer.readable_table(layers)
    st.dataframe(
        shown,
        hide_index=True,
        width="stretch",
        height=360,
        placeholder="–",
        column_config={h: st.column_config.NumberColumn(h, format=f) for h, f in formats.items() if f},
    )
    st.download_button(
        "Download the per-layer table (CSV)",
        layers.to_csv(index=False),
        file_name=f"{backbone}-{mode}-{resolution}px-b{batch_size}-{accounting}.csv",
        mime="text/csv",
        icon=":material/download:",
        key="mx_csv",
    )

with st.expander("Totals of every mode (table)"):
    shown, formats = explorer.readable_table(table)
    st.dataframe(
        shown,
        hide_index=True,
        width="stretch",
        placeholder="–",
        column_config={h: st.column_config.NumberColumn(h, format=f) for h, f in formats.items() if f},
    )
    st.download_button(
        "Download totals (CSV)",
        explorer.totals_in_mb(table).to_csv(index=False),
        mime="text/csv",
        file_name=f"{backbone}-modes-{resolution}px-b{batch_size}-{accounting}.csv",
        key="mx_totals_csv",
    )
if (saving := sign_mask_saving(complete_table)) is not None:  # MobileTL vs exact bias-only
    st.caption(f":material/info: {saving.sentence(backbone)}")
st.caption(
    "Modelled numbers come from shapes traced on PyTorch's meta device (nothing allocated). "
    "*Necessary* applies TinyTL's rules (a frozen weight needs no stored input, ReLU needs a 1-bit mask, "
    "...); *stock PyTorch* is what autograd saves by default. The About page has the rules."
)
