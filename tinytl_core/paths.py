"""Where TinyTL Lab keeps its files (results database, dataset cache, extracted uploads)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "TINYTL_HOME"


def data_home() -> Path:
    """Return the user data folder, creating it if needed.

    ``$TINYTL_HOME`` wins; otherwise ``$XDG_DATA_HOME/tinytl-lab`` or ``~/.local/share/tinytl-lab``.
    """
    env = os.environ.get(ENV_HOME)
    if env:
        root = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_DATA_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".local" / "share") / "tinytl-lab"
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir(name: str) -> Path:
    """Return (and create) a named sub-folder of :func:`data_home`, e.g. ``cache_dir("datasets")``."""
    path = data_home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def valid_text(text: str) -> str:
    """``text`` as valid Unicode: the undecodable bytes of a file name (Python's surrogate escapes, e.g. a
    Latin-1 ``caf\\xe9`` folder on a UTF-8 system) written ``\\xe9``, so a terminal, SQLite and JSON can
    hold it. Valid text comes back unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # lone surrogates that are no escaped bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")
