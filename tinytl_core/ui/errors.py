"""What a page shows when its work raises something unexpected (no Streamlit here).

The page shows :func:`failure_message` -- short, without the exception's text (which may hold server paths
or data), with what to do and a reference to find the full traceback in the server log -- and the
traceback goes to the log with the same reference (:func:`log_failure`).
"""

from __future__ import annotations

import logging
import uuid

log = logging.getLogger("tinytl_core.ui.pages")

_ADVICE = {
    MemoryError: "The machine ran out of memory: lower the batch size or the input resolution.",
    OSError: "A file could not be read or written on the server (a name too long, a full disk, a missing "
    "file). Try another file or dataset, or ask whoever runs the server.",
    TimeoutError: "Something took too long to answer: try again in a moment.",
}


def failure_reference() -> str:
    """A short id that ties the message a user sees to the traceback in the log."""
    return uuid.uuid4().hex[:8]


def failure_message(exc: BaseException, reference: str, where: str = "this page") -> str:
    """The sentence a page shows for an unexpected ``exc``: what failed (by kind, never the exception's own
    text), what to do, and the log reference."""
    advice = next((text for kind, text in _ADVICE.items() if isinstance(exc, kind)), None)
    advice = advice or "Try again, change the settings in the sidebar, or reload the page."
    return (
        f"Something went wrong on {where}. {advice} If it keeps happening, report reference "
        f"`{reference}`: the full details are in the server log under it."
    )


def log_failure(exc: BaseException, reference: str, where: str = "page") -> None:
    """The full traceback of ``exc`` to the log, under ``reference``."""
    log.error("unexpected error on %s (reference %s)", where, reference, exc_info=exc)
