"""Fine-tuning modes: what each mode trains on the selected backbone (layout only)."""

import streamlit as st

from app_pages import _cache
from tinytl_core.modes import MODES, compare_trainable
from tinytl_core.quantities import MB, format_bytes
from tinytl_core.reports import trainable_display, trainable_table
from tinytl_core.ui import figures

st.header("Fine-tuning modes")
st.write(
    "Each mode decides which parameters train. TinyTL freezes the weights and trains biases (TinyTL-B), "
    "small lite residual branches (TinyTL-L), or both (TinyTL-L+B)."
)

settings = _cache.settings()
backbone, resolution = settings.backbone, settings.resolution
group_norm = st.toggle("Replace BatchNorm by GroupNorm (batch-size-1 training)", key="group_norm")


@st.cache_data(show_spinner="Applying every mode to the backbone...")
def _table(backbone: str, resolution: int, group_norm: bool):
    return trainable_table(compare_trainable(backbone, resolution=resolution, group_norm=group_norm))


problem = _cache.resolution_problem(backbone, resolution)  # as Home and the Explorer: no figures of a
if problem:  # model that cannot run at this size (a ViT's parameter count depends on it)
    st.error(problem)
    st.stop()
try:
    table = _table(backbone, resolution, group_norm)
except ValueError as exc:
    st.error(str(exc))
    st.stop()

mode = st.segmented_control(
    "Mode",
    list(MODES),
    default=next(iter(MODES)),
    required=True,
    key="mode",
    format_func=lambda m: MODES[m].title,
)
st.info(f"**{MODES[mode].title}** — {MODES[mode].description}")
row = table.set_index("mode").loc[mode]
if not row["applicable"]:
    st.warning(f"Not applicable to {backbone}: {row['note']}")
else:
    c1, c2, c3 = st.columns(3)
    c1.metric("Trainable parameters", f"{int(row['trainable_params']):,}")
    c2.metric("Trainable bytes (fp32)", format_bytes(row["trainable_MB"] * MB))
    c3.metric("Share of the model", f"{row['trainable_%']:.2f} %")

fig = figures.trainable_bars(
    table, mode, title=f"Trainable parameter bytes per mode — {backbone} @ {resolution}px"
)
st.plotly_chart(fig, width="stretch")
shown, formats = trainable_display(table)
st.dataframe(
    shown,
    hide_index=True,
    width="stretch",
    placeholder="–",
    key="md_table",
    column_config={h: st.column_config.NumberColumn(h, format=f) for h, f in formats.items() if f},
)
st.caption(
    "Trainable parameters are only part of training memory: the next pages show that the activations "
    "stored for backward dominate."
)
