"""TinyTL Lab -- Streamlit entry point: ``streamlit run app.py``.

Builds the navigation and the shared sidebar (backbone, resolution, batch size), whose values every page
reads from ``st.session_state``. Pages hold layout only; computations live in ``tinytl_core``.
"""

import streamlit as st

from tinytl_core.backbones import list_backbones

st.set_page_config(page_title="TinyTL Lab", page_icon=":material/memory:", layout="wide")

PAGES = [
    st.Page("pages/modes.py", title="Fine-tuning modes", icon=":material/tune:", default=True),
]


@st.cache_data(show_spinner=False)
def _backbone_names() -> list[str]:
    return [b.name for b in list_backbones()]


with st.sidebar:
    st.title("TinyTL Lab")
    st.caption("Training memory is activations, not parameters.")
    names = _backbone_names()
    st.session_state.setdefault("backbone", names[0])
    st.selectbox("Backbone (type to search all timm models)", names, key="backbone")
    st.session_state.setdefault("resolution", 224)
    st.number_input("Input resolution (px)", min_value=32, max_value=1024, step=16, key="resolution")
    st.session_state.setdefault("batch_size", 8)
    st.number_input("Batch size", min_value=1, max_value=512, step=1, key="batch_size")

st.navigation(PAGES).run()
