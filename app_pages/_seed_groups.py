"""Compare runs' seed-grouped section: memory vs accuracy per dataset, one point per backbone x mode with
its seeds pooled, from your runs or the bundled reference sweep, with the paper's Table 2 points as an
optional layer (layout only: the logic is ``tinytl_core.seeds`` and ``tinytl_core.ui.sweep``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import streamlit as st

from tinytl_core.reference import PAPER_DATASETS
from tinytl_core.results import MEMORY, run_quantity
from tinytl_core.seeds import SEED_GROUP_HEADERS, group_seeds
from tinytl_core.ui import figures
from tinytl_core.ui.sweep import PAPER_CAPTION, paper_frame, reference_set

SOURCES = {"mine": "Your runs (as filtered above)", "reference": "Bundled reference sweep"}


@st.cache_data(show_spinner=False, max_entries=16)
def _figure(groups, paper, x_label: str):
    """:func:`tinytl_core.ui.figures.seed_groups_figure`, cached on the table it draws."""
    return figures.seed_groups_figure(groups, paper=paper, x_label=x_label)


def render(runs: Sequence[Mapping[str, Any]]) -> None:
    """The section, over ``runs`` (the page's filtered runs; may be empty: the reference sweep is shown)."""
    st.subheader("Memory vs accuracy per dataset, seeds grouped")
    reference = reference_set()
    options = [o for o, there in (("mine", bool(runs)), ("reference", reference is not None)) if there]
    if not options:
        return
    source = st.segmented_control(
        "Runs", options, default=options[0], format_func=SOURCES.get, required=True, key="cr_group_source"
    )
    if source == "reference":
        st.caption(
            f":material/verified: {reference.caption}. {reference.description} Read-only, shipped with "
            "the package (`tinytl_core.reference.load_reference_runs()`)."
        )
    groups = group_seeds(reference.runs if source == "reference" else runs)
    paper_on = st.toggle("Paper's published points (TinyTL Table 2)", key="cr_paper")
    paper = None
    if paper_on:
        picked = st.multiselect(
            "Paper's datasets",
            list(PAPER_DATASETS),
            default=["flowers102"],
            format_func=PAPER_DATASETS.get,
            key="cr_paper_sets",
        )
        paper = paper_frame(picked)
        st.caption(f"Diamonds: {PAPER_CAPTION} Each in a panel of its own.")
    slot = st.empty()  # the chart fills in after the table (Plotly's bundle loads in the browser)
    if groups.empty:
        st.info("No finished runs to group here.", icon=":material/info:")
    else:
        st.caption(
            f"x: {run_quantity(MEMORY.total_measured_bytes).label}, mean over seeds (error bar: standard "
            "deviation); y: validation accuracy, "
            "mean over seeds (error bar: standard deviation). One point per configuration, its seeds "
            "pooled; *differs in* tells apart configurations that look alike otherwise."
        )
        shown = groups if groups["differs_in"].astype(bool).any() else groups.drop(columns=["differs_in"])
        st.dataframe(
            shown.rename(columns=SEED_GROUP_HEADERS).round(2),
            hide_index=True,
            width="stretch",
            placeholder="–",
            key="cr_groups_table",
        )
    if not groups.empty or paper is not None:
        slot.plotly_chart(
            _figure(groups, paper, run_quantity(MEMORY.total_measured_bytes).label),  # its unit: the chart's
            width="stretch",
            key="cr_groups_chart",
        )
