"""What a page shows when its work raises something unexpected (no Streamlit here).

The page shows :func:`failure_message` -- short, without the exception's text (which may hold server paths
or data), with what to do and a reference to find the full traceback in the server log -- and the
traceback goes to the log with the same reference (:func:`log_failure`).
"""

from __future__ import annotations

import logging
import re
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


# An absolute path: POSIX (/srv/x/uploads/a.zip, ~/x) or Windows (C:\x\y, \\server\share\x), up to the next
# blank or quote. A URL's path (https://host/a/b) is not a server path and is kept.
_START = r"""(?:(?<![\w:/.~-])|(?<=:)(?!//))"""
"""Where a path may start: not inside a word, a URL's ``//host`` or another path; after a colon only when
no ``//`` follows (``at:/srv/x`` is a path, ``https://host/x`` an address)."""
_PATH = re.compile(
    r"""file:/{1,3}[^\s'"`<>|]+"""  # a file URI: all of it
    rf"""|{_START}(?:~|[A-Za-z]:)?(?:[/\\]{{1,2}}[^\s/\\'"`<>|:]+){{2,}}[/\\]?"""
    rf"""|{_START}(?:~|[A-Za-z]:)[/\\][^\s/\\'"`<>|:]+"""
)


def public_text(text: object) -> str:
    """``text`` as a page may show it: every absolute server path (``/srv/tinytl/uploads/a1b2/x.zip``,
    ``C:\\data\\x``) cut to its last part (``…/x.zip``). For messages that come from another process or
    a library (a job's error, a sweep driver's reason, an exception's text) and may name server paths,
    which a deployed app never shows (README, *Limits and safety*)."""
    if text is None:
        return ""

    def last_part(match: re.Match[str]) -> str:
        name = re.split(r"[/\\]", match.group(0).rstrip("/\\"))[-1]
        return f"…/{name}" if name else "…"

    return _PATH.sub(last_part, str(text))
