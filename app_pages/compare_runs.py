"""Compare runs: every stored run on a memory-accuracy plot, a filterable table, curves, delete, export."""

import functools

import streamlit as st

from app_pages import _cache, _seed_groups
from tinytl_core.modes import MODES, approximation_note
from tinytl_core.quantities import ENDED_STATUSES, RunStatus
from tinytl_core.results import ResultsStore, run_quantity
from tinytl_core.ui import vega
from tinytl_core.ui.runs import (
    ACCURACY,
    MEMORY_AXES,
    export_csv_text,
    filter_runs,
    memory_axis,
    mode_options,
    parse_run_ids,
    restore_runs,
    run_label,
    runs_version,
    stored_run_label,
    table_display,
)

# How soon after a new session's first view the page runs again to draw its scatter. (A comment, not a
# docstring: a bare string in a page is Streamlit "magic" and would be drawn on it.)
SECOND_PASS_S = 1.0


def _second_pass() -> None:
    """Runs inline with a session's first view (notes that it did) and once more on its own
    :data:`SECOND_PASS_S` later: then the whole page runs again and, no longer a first view, draws the
    scatter -- after the browser has put the run table on screen (README, App speed)."""
    if st.session_state.pop("cr_second_pass", False):
        st.rerun(scope="app")
    st.session_state["cr_second_pass"] = True


st.header("Compare runs")
# A session's first view sends the table without the scatter: the browser draws both in one frame, and
# Vega's start-up held the table back by ~0.5 s. The scatter comes in a second pass a moment later.
first_view = not st.session_state.get("cr_viewed")
st.session_state["cr_viewed"] = True
store = ResultsStore()
deleted = st.session_state.get("cr_deleted") or []
if deleted:  # this session's last delete can be undone
    names = ", ".join(stored_run_label(r) for r in deleted)
    note, undo = st.columns([5, 1], vertical_alignment="center")
    note.info(f"Deleted {len(deleted)} run(s): {names}.", icon=":material/delete:")
    if undo.button("Undo", icon=":material/undo:", key="cr_undo", width="stretch"):
        back = restore_runs(store, deleted)
        st.session_state.pop("cr_deleted", None)
        st.toast(f"Restored run(s) {', '.join(f'#{i}' for i in back)}.")
        st.rerun()
loaded = _cache.stored_runs(str(store.path), runs_version(store))  # read again only when the runs change
runs = loaded.records
if not runs:
    st.info(
        "No stored runs yet. Train a few modes on the Adapt page; each run lands here.",
        icon=":material/inbox:",
    )
    st.page_link("app_pages/adapt.py", label="Go to Adapt", icon=":material/model_training:")
    _seed_groups.render([])  # a fresh install still shows the bundled reference sweep
    st.stop()

frame = loaded.frame
st.caption(f"{len(frame)} run(s) in the results store.")  # no server path on a page

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
        mode_options(frame["mode"]),  # every mode stored, a mode of another version included
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
if note := approximation_note(shown["mode"]):
    st.caption(f":material/info: {note}")

figure = st.segmented_control(
    "Memory axis",
    list(MEMORY_AXES),
    default=MEMORY_AXES[0],
    required=True,
    format_func=lambda name: run_quantity(name).label,
    key="cr_axis",
    persist_state="session",
)
axis = memory_axis(figure)[0]
plotted = shown.dropna(subset=[axis, ACCURACY.key])
# The scatter's place, filled after the table: the runs show first, the chart (Vega-Lite: a far lighter
# bundle for the browser to load than Plotly's) fills in after them.
scatter = st.empty()
if len(plotted) < len(shown):
    st.caption(
        f"{len(shown) - len(plotted)} run(s) without this memory figure or an accuracy are not "
        "plotted (memory not recorded, or stopped before evaluating)."
    )
if shown.empty:
    st.warning("No run matches these filters.")

table, formats = table_display(shown)  # sizes in the unit their column calls for
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    placeholder="–",
    key="cr_table",
    column_config={  # every column's header and format from its quantity (no figure left unformatted)
        key: header if fmt is None else st.column_config.NumberColumn(header, format=fmt)
        for key, (header, fmt) in formats.items()
    },
)
st.download_button(
    "Export these runs (CSV)",
    functools.partial(export_csv_text, store, shown["id"].tolist()),  # built when clicked, not every run
    file_name="tinytl-runs.csv",
    mime="text/csv",
    icon=":material/download:",
    disabled=shown.empty,
    key="cr_export",
)

if len(plotted) and first_view:
    scatter.caption(":material/hourglass_top: Drawing the memory–accuracy chart…")
    st.fragment(_second_pass, run_every=SECOND_PASS_S)()
elif len(plotted):
    data, spec = vega.memory_accuracy_chart(
        shown, x=axis, x_label=run_quantity(figure).label, title="Validation accuracy vs training memory"
    )
    scatter.vega_lite_chart(data, spec, width="stretch", key="cr_scatter")

# The two sections below run only once opened (lazy expanders). The seed-grouped one is Plotly: a new tab's
# first view then loads no Plotly bundle, which held the run table back for seconds (README, App speed).
grouped = st.expander(
    "Memory vs accuracy per dataset, seeds grouped",
    icon=":material/stacked_line_chart:",
    key="cr_groups_open",
    on_change="rerun",
)
if grouped.open:
    with grouped:
        _seed_groups.render([runs[i] for i in shown["id"]])
curves = st.expander("Training curves", icon=":material/show_chart:", key="cr_curves_open", on_change="rerun")
labels = {int(r["id"]): run_label(r) for r in shown.to_dict("records")}
chosen = []
if curves.open:
    with curves:
        chosen = st.multiselect(
            "Runs", list(labels), default=list(labels)[:3], format_func=labels.get, key="cr_runs"
        )
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
    curves.vega_lite_chart(*vega.curves_chart(series), key="cr_curves")

with st.expander("Delete runs", icon=":material/delete:"):
    typed = st.text_input(
        "Ids of the runs to delete",
        key="cr_delete_ids",
        placeholder="e.g. 3, 7 or #3 #7",
        help="Exact run ids (the table's id column): #3 is run 3, never run 13.",
    )
    doomed, problems = parse_run_ids(typed, runs)
    for problem in problems:
        st.warning(f"{problem}: nothing is deleted for it.", icon=":material/warning:")
    if doomed:
        st.markdown(
            f"These {len(doomed)} run(s) will be deleted:\n"
            + "\n".join(f"- {stored_run_label(runs[i])}" for i in doomed)
        )
    ids_text = ", ".join(f"#{i}" for i in doomed)
    sure = st.checkbox(
        f"Yes, delete {ids_text}" if doomed else "Yes, delete them",
        key=f"cr_sure_{'_'.join(map(str, doomed))}",  # a new selection needs a new confirmation
        disabled=not doomed,
    )
    if st.button("Delete", type="primary", disabled=not (doomed and sure), key="cr_delete_button"):
        gone = []
        for run_id in doomed:
            try:
                record = store.get_run(run_id)  # as stored: Undo puts back the run itself, not its view
                store.delete_run(run_id)
            except KeyError:
                continue  # already deleted from another tab
            gone.append(record)
        st.session_state["cr_deleted"] = gone  # kept for Undo during this session
        st.session_state.pop("cr_delete_ids", None)
        st.rerun()
