"""TinyTL Lab -- Streamlit entry point: ``streamlit run app.py``.

Builds the navigation and the shared sidebar (backbone, resolution, batch size, pretrained weights), whose
values every page reads from ``st.session_state``. Pages hold layout only; computations live in
``tinytl_core`` (the app-specific logic in ``tinytl_core.ui``).
"""

import sys
import uuid

import streamlit as st

from app_pages._guard import run_page

st.set_page_config(page_title="TinyTL Lab", page_icon=":material/memory:", layout="wide")

# app_pages/, not pages/: a pages/ folder is legacy multipage mode, deep links skip this sidebar (README).
PAGES = {
    "Overview": [
        st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
    ],
    "Memory": [
        st.Page("app_pages/memory_explorer.py", title="Memory Explorer", icon=":material/bar_chart:"),
        st.Page("app_pages/modes.py", title="Fine-tuning modes", icon=":material/tune:"),
        st.Page("app_pages/budget_planner.py", title="Budget planner", icon=":material/savings:"),
    ],
    "Training": [
        st.Page("app_pages/adapt.py", title="Adapt", icon=":material/model_training:"),
        st.Page("app_pages/compare_runs.py", title="Compare runs", icon=":material/scatter_plot:"),
        st.Page("app_pages/sweep.py", title="Sweep", icon=":material/grid_view:"),
    ],
    "Background": [
        st.Page("app_pages/about.py", title="About", icon=":material/info:"),
    ],
}

page = st.navigation(PAGES)
# First paint: on the server's first run, importing PyTorch and timm (the catalog below) takes seconds;
# show the page's title at once and let the page fill in as its parts come.
loading = st.empty()
if "tinytl_core.backbones" not in sys.modules:
    with loading.container():
        st.header(page.title)
        st.caption(":material/hourglass_top: Loading PyTorch and the model catalog (first page only).")

from app_pages import _cache  # noqa: E402 -- after the first paint
from tinytl_core.runtime import freeze_imported_objects  # noqa: E402
from tinytl_core.ui.settings import KEYS, LIMITS, Settings, accept_setting, backbone_label  # noqa: E402

st.session_state.setdefault("session_id", uuid.uuid4().hex)  # before the defaults: one id per session
try:
    _cache.worker_pool()  # the worker processes that train queued runs: started once per server process
except ValueError as exc:  # a bad TINYTL_WORKERS / TINYTL_WORKER_THREADS: said, and runs still queue
    st.sidebar.error(f"No worker pool: {exc}", icon=":material/error:")


def _check_setting(key: str) -> None:
    """Reject an out-of-range value in place: the field goes back to the value the charts use and the
    reason shows under it (:func:`tinytl_core.ui.settings.accept_setting`)."""
    valid = st.session_state.setdefault("settings_valid", {})
    value, problem = accept_setting(key, st.session_state[key], valid.get(key, st.session_state[key]))
    st.session_state[key] = value
    st.session_state.setdefault("settings_problems", {})[key] = problem


def _backbone_changed() -> None:
    """A new backbone brings its own resolution: an earlier rejected resolution's message is stale."""
    st.session_state["resolution"] = _cache.default_resolution(st.session_state.backbone)
    st.session_state.setdefault("settings_problems", {}).pop("resolution", None)


def _setting_problem(key: str) -> None:
    """Show the reason the last value of ``key`` was rejected, right under its field, in the run that
    follows the rejection only: typing the kept value again changes nothing Streamlit can see (no
    callback), so a reason kept longer would outlive its cause."""
    problem = st.session_state.get("settings_problems", {}).pop(key, None)
    if problem:
        st.error(problem, icon=":material/block:")


with st.sidebar:
    st.subheader("Settings")
    st.caption("Shared by every page and kept while you move between them.")
    names = _cache.backbone_names()
    curated = _cache.curated_names()
    if any(key not in st.session_state for key in KEYS):  # a new session: the defaults, looked up once
        defaults = Settings.defaults(names[0])  # the catalog lists the shipped demo backbone first
        for key in KEYS:
            st.session_state.setdefault(key, getattr(defaults, key))
    st.selectbox(
        "Backbone",
        names,
        key="backbone",
        on_change=_backbone_changed,
        format_func=backbone_label,  # the bare name: an exact match ranks first in the search
        help=f"Type to search all {len(names):,} timm architectures; an exact name comes first. Curated "
        f"mobile CNNs (the paper's setting) and a few contrasts are listed first ({len(curated)}).",
    )
    st.number_input(
        "Input resolution (px)",
        step=16,
        key="resolution",
        on_change=_check_setting,
        args=("resolution",),
        help="Square input size, {} to {} px; picking a backbone sets its own default. Activation memory "
        "grows with its square.".format(*LIMITS["resolution"]),
    )
    _setting_problem("resolution")
    st.number_input(
        "Batch size",
        step=1,
        key="batch_size",
        on_change=_check_setting,
        args=("batch_size",),
        help="{} to {}. Activation memory grows linearly with it; parameters do not.".format(
            *LIMITS["batch_size"]
        ),
    )
    _setting_problem("batch_size")
    # What the charts use now: the value a rejected entry falls back to.
    st.session_state["settings_valid"] = {k: st.session_state[k] for k in LIMITS}
    st.toggle(
        "Pretrained weights", key="pretrained", help="Start training from ImageNet weights (Adapt page)."
    )
    if st.session_state["pretrained"]:
        availability = _cache.weights(st.session_state["backbone"])
        if availability.usable:
            st.caption(f":material/check_circle: {availability.message}")
        else:
            st.warning(availability.message, icon=":material/cloud_off:")

loading.empty()
run_page(page)  # what escapes a page's work: a short message, the traceback to the log
freeze_imported_objects()  # once per server, after the first page's imports (tinytl_core.runtime)
