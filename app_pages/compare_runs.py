"""Compare runs: every stored run on a memory-accuracy plot, a filterable table, curves, delete, export."""

import streamlit as st

from tinytl_core.modes import MODES
from tinytl_core.quantities import ENDED_STATUSES, RunStatus
from tinytl_core.results import ResultsStore, run_quantity
from tinytl_core.ui import figures
from tinytl_core.ui.runs import (
    ACCURACY,
    MEMORY_AXES,
    RUN_HEADERS,
    export_csv_text,
    filter_runs,
    memory_axis,
    run_label,
    runs_frame,
)

st.header("Compare runs")
store = ResultsStore()
runs = {r["id"]: r for r in store.list_runs()}
if not runs:
    st.info(
        "No stored runs yet. Train a few modes on the Adapt page; each run lands here.",
        icon=":material/inbox:",
    )
    st.page_link("app_pages/adapt.py", label="Go to Adapt", icon=":material/model_training:")
    st.stop()

frame = runs_frame(runs.values())
st.caption(f"{len(frame)} run(s) in `{store.path}`.")

f = st.columns(4)
picked = {
    "dataset": f[0].multiselect(
        "Dataset", sorted(frame["dataset"].unique()), key="cr_dataset", persist_state="session"
    ),
    "backbone": f[1].multiselect(
        "Backbone", sorted(frame["backbone"].unique()), key="cr_backbone", persist_state="session"
    ),
    "mode": f[2].multiselect(
        "Mode",
        [m for m in MODES if m in set(frame["mode"])],
        key="cr_mode",
        format_func=lambda m: MODES[m].title if m in MODES else m,
        persist_state="session",
    ),
    "status": f[3].multiselect(
        "Status",
        [s.value for s in ENDED_STATUSES],
        default=[RunStatus.FINISHED.value],
        key="cr_status",
        persist_state="session",
    ),
}
shown = filter_runs(frame, **picked)

figure = st.segmented_control(
    "Memory axis",
    list(MEMORY_AXES),
    default=MEMORY_AXES[0],
    required=True,
    format_func=lambda name: run_quantity(name).label,
    key="cr_axis",
    persist_state="session",
)
axis, axis_title = memory_axis(figure)
plotted = shown.dropna(subset=[axis, ACCURACY.key])
if len(plotted):
    st.plotly_chart(
        figures.memory_accuracy_scatter(
            shown, x=axis, x_label=axis_title, title="Validation accuracy vs training memory"
        ),
        width="stretch",
        key="cr_scatter",
    )
if len(plotted) < len(shown):
    st.caption(
        f"{len(shown) - len(plotted)} run(s) without this memory figure or an accuracy are not "
        "plotted (memory not recorded, or stopped before evaluating)."
    )
if shown.empty:
    st.warning("No run matches these filters.")

st.dataframe(
    shown,
    hide_index=True,
    width="stretch",
    placeholder="–",
    key="cr_table",
    column_config={
        **RUN_HEADERS,
        ACCURACY.key: st.column_config.NumberColumn(ACCURACY.header, format="%.1f"),
    },
)
st.download_button(
    "Export these runs (CSV)",
    export_csv_text(store, shown["id"].tolist()),
    file_name="tinytl-runs.csv",
    mime="text/csv",
    icon=":material/download:",
    disabled=shown.empty,
    key="cr_export",
)

st.subheader("Training curves")
labels = {int(r["id"]): run_label(r) for r in shown.to_dict("records")}
chosen = st.multiselect("Runs", list(labels), default=list(labels)[:3], format_func=labels.get, key="cr_runs")
if chosen:
    series = []
    for run_id in chosen:
        history = runs[run_id]["history"] or []
        series.append(
            (
                f"#{run_id} {runs[run_id]['mode']}",
                [h for h in history if h["kind"] == "step"],
                [h for h in history if h["kind"] == "eval"],
            )
        )
    st.plotly_chart(figures.curves_figure(series), width="stretch", key="cr_curves")

with st.expander("Delete runs", icon=":material/delete:"):
    doomed = st.multiselect("Runs to delete", list(labels), format_func=labels.get, key="cr_delete")
    sure = st.checkbox("Yes, delete them for good", key="cr_sure", disabled=not doomed)
    if st.button("Delete", type="primary", disabled=not (doomed and sure), key="cr_delete_button"):
        for run_id in doomed:
            try:
                store.delete_run(run_id)
            except KeyError:
                pass  # already deleted from another tab
        for key in ("cr_delete", "cr_sure"):
            st.session_state.pop(key, None)
        st.toast(f"Deleted {len(doomed)} run(s).")
        st.rerun()
