"""One mechanism for exceptions that escape a page's work: a short message on the page, the traceback in
the log (``tinytl_core.ui.errors``). Streamlit's own control flow (``st.rerun``, ``st.stop``,
``st.switch_page``) raises ``BaseException`` subclasses, which pass through untouched.

``app.py`` runs every page with :func:`run_page`; a fragment (which reruns on its own, outside the page)
wraps its function with :func:`guarded`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st

from tinytl_core.ui.errors import failure_message, failure_reference, log_failure

F = TypeVar("F", bound=Callable[..., Any])


def show_failure(exc: Exception, where: str) -> None:
    """Log ``exc`` with its traceback and show the short message instead."""
    reference = failure_reference()
    log_failure(exc, reference, where)
    st.error(failure_message(exc, reference), icon=":material/error:")


def run_page(page: Any) -> None:
    """Run a ``st.navigation`` page; an exception from its work becomes a short message."""
    try:
        page.run()
    except Exception as exc:  # noqa: BLE001 -- every page's last line of defence
        show_failure(exc, f"page {getattr(page, 'title', '') or page}")


def guarded(fn: F) -> F:
    """``fn`` (e.g. a fragment's function) with the same guard as a page."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            show_failure(exc, f"{fn.__name__}")
            return None

    return wrapper  # type: ignore[return-value]
