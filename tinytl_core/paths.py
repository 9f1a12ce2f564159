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
