"""Home: what TinyTL is, and one picture of where training memory goes (layout only)."""

import streamlit as st

from app_pages import _cache
from tinytl_core.comparisons import sign_mask_saving
from tinytl_core.memory.report import TOTALS
from tinytl_core.modes import MODES
from tinytl_core.quantities import format_bytes, format_ratio
from tinytl_core.ui.errors import public_text
from tinytl_core.ui.figures import mode_memory_bars

settings = _cache.settings()
backbone, resolution, batch_size = settings.backbone, settings.resolution, settings.batch_size

st.title("TinyTL Lab")
st.markdown(
    "Fine-tuning a network on a small device runs out of memory long before it runs out of parameters: "
    "backward needs the **activations** saved during the forward pass, and they are many times larger than "
    "the weights. **TinyTL** (Cai et al., NeurIPS 2020) freezes the weights, because the gradient of a "
    "bias needs no stored input, and adds small **lite residual** branches that work at half resolution, "
    "so the network still adapts while storing a fraction of the activations."
)

problem = _cache.resolution_problem(backbone, resolution)
if problem:
    st.error(problem)
    st.stop()
try:
    table, _ = _cache.reports(backbone, resolution, batch_size, "adam", "complete", False)
except (ValueError, RuntimeError) as exc:
    st.error(f"Cannot model {backbone} at {resolution} px, batch {batch_size}: {public_text(exc)}")
    st.stop()

# The chart's place, filled at the end: the numbers and links show at once, the chart (the browser loads
# Plotly's bundle for it, seconds in a new tab) fills in after them.
chart = st.empty()
rows = table[table["applicable"]].set_index("mode")
total, necessary = TOTALS.total_modelled_bytes, TOTALS.activations_necessary_bytes
if "full" in rows.index:
    full = rows.loc["full"]
    cols = st.columns(3)
    cols[0].metric(
        "Full fine-tuning",
        format_bytes(full[total]),
        help="Weights + gradients + Adam state + stored activations + working set (complete accounting).",
    )
    cols[1].metric("of which activations", f"{100 * full[necessary] / full[total]:.0f} %")
    best = rows.drop(index="full")[total]
    if len(best):
        tiny = "lite_residual+bias" if "lite_residual+bias" in best.index else best.idxmin()
        cols[2].metric(
            MODES[tiny].title,
            format_bytes(rows.loc[tiny, total]),
            delta=format_ratio(rows.loc[tiny, total], full[total]),
            delta_color="off",
            delta_arrow="off",
        )
if (saving := sign_mask_saving(table)) is not None:  # MobileTL vs exact bias-only, on this backbone
    st.caption(f":material/info: {saving.sentence(backbone)}")
st.caption(
    "Change the backbone, resolution and batch size in the sidebar: parameters stay put, activations follow "
    "the batch size and the square of the resolution. These are modelled numbers; the Memory Explorer "
    "measures a real step too."
)

st.subheader("Explore")
left, right = st.columns(2)
with left:
    st.page_link("app_pages/memory_explorer.py", label="Memory Explorer", icon=":material/bar_chart:")
    st.caption(
        "Per-mode totals, layer-by-layer activations vs parameters, necessary vs what stock PyTorch "
        "stores, and a measured step with the training engine."
    )
    st.page_link("app_pages/modes.py", label="Fine-tuning modes", icon=":material/tune:")
    st.caption("What each mode trains on the selected backbone.")
with right:
    st.page_link("app_pages/adapt.py", label="Adapt", icon=":material/model_training:")
    st.caption("Train in several modes on a built-in dataset or your own images, with live curves.")
    st.page_link("app_pages/compare_runs.py", label="Compare runs", icon=":material/scatter_plot:")
    st.caption("Every stored run on a memory-accuracy plot, like the paper's headline figure.")
st.page_link("app_pages/about.py", label="About the method and the memory rules", icon=":material/info:")
chart.plotly_chart(
    mode_memory_bars(
        table,
        title=f"Training memory per mode: {backbone}, {resolution} px, batch {batch_size}, Adam (modelled)",
        budget_bytes=settings.budget_bytes,  # set on the Budget planner
        budget_in_flash=settings.budget_in_flash,
    ),
    width="stretch",
)
