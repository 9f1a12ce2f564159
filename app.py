"""TinyTL Lab -- Streamlit entry point: ``streamlit run app.py``.

Builds the navigation and the shared sidebar (backbone, resolution, batch size, pretrained weights), whose
values every page reads from ``st.session_state``. Pages hold layout only; computations live in
``tinytl_core`` (the app-specific logic in ``tinytl_core.ui``).
"""

import uuid

import streamlit as st

from app_pages import _cache
from app_pages._guard import run_page
from tinytl_core.ui.settings import KEYS, Settings

st.set_page_config(page_title="TinyTL Lab", page_icon=":material/memory:", layout="wide")

# app_pages/, not pages/: a pages/ folder is legacy multipage mode, deep links skip this sidebar (README).
PAGES = {
    "Overview": [
        st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
    ],
    "Memory": [
        st.Page("app_pages/memory_explorer.py", title="Memory Explorer", icon=":material/bar_chart:"),
        st.Page("app_pages/modes.py", title="Fine-tuning modes", icon=":material/tune:"),
    ],
    "Training": [
        st.Page("app_pages/adapt.py", title="Adapt", icon=":material/model_training:"),
        st.Page("app_pages/compare_runs.py", title="Compare runs", icon=":material/scatter_plot:"),
    ],
    "Background": [
        st.Page("app_pages/about.py", title="About", icon=":material/info:"),
    ],
}

st.session_state.setdefault("session_id", uuid.uuid4().hex)  # before the defaults: one id per session

with st.sidebar:
    st.subheader("Settings")
    st.caption("Shared by every page and kept while you move between them.")
    names = _cache.backbone_names()
    curated = _cache.curated_names()
    defaults = Settings.defaults(names[0])  # the catalog lists the shipped demo backbone first
    for key in KEYS:
        st.session_state.setdefault(key, getattr(defaults, key))
    st.selectbox(
        "Backbone",
        names,
        key="backbone",
        on_change=lambda: st.session_state.update(
            resolution=_cache.default_resolution(st.session_state.backbone)
        ),
        format_func=lambda n: f"{n}  ★" if n in curated else n,
        help=f"Type to search all {len(names):,} timm architectures. ★ = curated mobile CNNs (the paper's "
        "setting) and a few contrasts, listed first.",
    )
    st.number_input(
        "Input resolution (px)",
        min_value=8,
        max_value=1024,
        step=16,
        key="resolution",
        help="Square input size; picking a backbone sets its own default. Activation memory grows with "
        "its square.",
    )
    st.number_input(
        "Batch size",
        min_value=1,
        max_value=512,
        step=1,
        key="batch_size",
        help="Activation memory grows linearly with it; parameters do not.",
    )
    st.toggle(
        "Pretrained weights", key="pretrained", help="Start training from ImageNet weights (Adapt page)."
    )
    if st.session_state["pretrained"]:
        availability = _cache.weights(st.session_state["backbone"])
        if availability.usable:
            st.caption(f":material/check_circle: {availability.message}")
        else:
            st.warning(availability.message, icon=":material/cloud_off:")

run_page(st.navigation(PAGES))  # what escapes a page's work: a short message, the traceback to the log
