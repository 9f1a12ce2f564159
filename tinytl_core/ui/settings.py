"""The app's shared sidebar settings, read once per page into a :class:`Settings` object.

The sidebar (``app.py``) writes its widgets' values to the session state under :data:`KEYS`; every page
reads them with :meth:`Settings.from_state`, so no page keeps defaults of its own: a value the sidebar
has not set yet falls back to :meth:`Settings.defaults` -- ``tinytl_core.backbones.default_backbone()`` (the
shipped demo backbone, which works offline; the CLI uses the same function), at its own input resolution.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from tinytl_core.backbones import data_config, default_backbone

DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class Settings:
    """What the sidebar sets for every page."""

    backbone: str
    resolution: int
    batch_size: int = DEFAULT_BATCH_SIZE
    pretrained: bool = True
    session_id: str = ""

    @classmethod
    def defaults(cls, backbone: str | None = None) -> Settings:
        """The settings before the user changes anything: ``backbone`` (default: :func:`default_backbone`,
        the shipped demo backbone) at its own input resolution."""
        name = backbone or default_backbone()
        return cls(backbone=name, resolution=data_config(name).resolution)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Settings:
        """Read the settings from a session state (any mapping); missing values take the defaults."""
        base = cls.defaults(state.get("backbone") or None)
        values = {f.name: state[f.name] for f in fields(cls) if state.get(f.name) is not None}
        merged = {**base.__dict__, **values}
        return cls(
            backbone=str(merged["backbone"]),
            resolution=int(merged["resolution"]),
            batch_size=int(merged["batch_size"]),
            pretrained=bool(merged["pretrained"]),
            session_id=str(merged["session_id"]),
        )


KEYS: tuple[str, ...] = tuple(f.name for f in fields(Settings))
"""Session-state keys the sidebar writes (one per :class:`Settings` field)."""
