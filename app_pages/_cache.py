"""Cached wrappers of the library calls the pages share (Streamlit glue, no logic of its own).

One module so that every page hits the same cache: Home and the Memory Explorer show the same totals.
"""

from __future__ import annotations

import streamlit as st

from tinytl_core.backbones import list_backbones, own_resolution
from tinytl_core.comparisons import table_from_reports
from tinytl_core.jobs import WorkerPool
from tinytl_core.planner.reports import ReportCache
from tinytl_core.results import ResultsStore, default_db_path
from tinytl_core.ui import checks, jobs
from tinytl_core.ui.runs import StoredRuns, load_runs
from tinytl_core.ui.settings import Settings


@st.cache_data(show_spinner=False)
def backbone_names() -> list[str]:
    """Every timm architecture, curated mobile CNNs first."""
    return [b.name for b in list_backbones()]


@st.cache_data(show_spinner=False)
def curated_names() -> frozenset[str]:
    """Names flagged as curated in the catalog."""
    return frozenset(b.name for b in list_backbones() if b.curated)


@st.cache_data(show_spinner=False, max_entries=256)
def default_resolution(backbone: str) -> int:
    """The backbone's own input resolution (timm's pretrained config)."""
    return own_resolution(backbone)


@st.cache_data(show_spinner="Checking the input size...", max_entries=256)
def resolution_problem(backbone: str, resolution: int) -> str | None:
    """:func:`tinytl_core.ui.checks.resolution_problem`, cached."""
    return checks.resolution_problem(backbone, resolution)


@st.cache_data(show_spinner=False, ttl=120)
def weights(backbone: str) -> checks.WeightsAvailability:
    """:func:`tinytl_core.ui.checks.pretrained_availability`, re-checked every two minutes."""
    return checks.pretrained_availability(backbone)


@st.cache_data(
    show_spinner="Tracing every mode on the meta device (shapes only, no memory)...", max_entries=64
)
def reports(
    backbone: str,
    resolution: int,
    batch_size: int,
    optimizer: str = "adam",
    accounting: str = "complete",
    group_norm: bool = False,
):
    """Modelled memory of every mode: ``(compare_modes table, {mode: MemoryReport or reason})``, from the
    disk cache when any session traced this setting before (``tinytl_core.planner.reports.ReportCache``)."""
    out = ReportCache().reports(
        backbone,
        resolution=resolution,
        batch_size=batch_size,
        optimizer=optimizer,
        accounting=accounting,
        group_norm=group_norm,
    )
    return table_from_reports(out), out


@st.cache_data(show_spinner="Reading the stored runs...", max_entries=4)
def stored_runs(db_path: str, version: str) -> StoredRuns:
    """Every run in the results store at ``db_path`` and its table, read once per ``version``
    (:func:`tinytl_core.ui.runs.runs_version`): every session and rerun of Compare runs shares one read
    of the runs and one parse of their histories until a run is saved, deleted or restored."""
    return load_runs(ResultsStore(db_path))


@st.cache_resource(show_spinner=False)
def paper_table_slot() -> dict:
    """One slot per server for the reproduced Table 2 (:func:`tinytl_core.paper.paper_table`): computed once,
    on request, with a progress bar, then shown to every visitor of the About page."""
    return {}


@st.cache_resource(show_spinner=False)
def _worker_pool(db_path: str) -> WorkerPool | None:
    """The server's worker processes on ``db_path``: started once per server process (not per session or
    rerun), stopped with it (:func:`tinytl_core.ui.jobs.start_pool`)."""
    return jobs.start_pool(db_path)


def worker_pool() -> WorkerPool | None:
    """The pool training this server's queue (None when ``TINYTL_WORKERS=0``)."""
    return _worker_pool(str(default_db_path()))


def pool_size() -> int | None:
    """Workers in this server's pool (None: none started)."""
    pool = worker_pool()
    return pool.size if pool is not None else None


def settings() -> Settings:
    """The sidebar's settings for this page run (:class:`~tinytl_core.ui.settings.Settings`)."""
    return Settings.from_state(st.session_state)
