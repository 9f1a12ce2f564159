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

from tinytl_core import limits as L
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
    budget_bytes: int | None = None  # the Budget planner's budget, drawn on Home and Memory Explorer charts
    budget_in_flash: bool = False  # that budget keeps frozen weights in flash (an MCU preset)

    @classmethod
    def defaults(cls, backbone: str | None = None) -> Settings:
        """The settings before the user changes anything: ``backbone`` (default: :func:`default_backbone`,
        the shipped demo backbone) at its own input resolution."""
        name = backbone or default_backbone()
        return cls(backbone=name, resolution=data_config(name).resolution)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Settings:
        """Read the settings from a session state (any mapping); missing values take the defaults (looked up
        only when one is missing: every page reads this on every run)."""
        values = {f.name: state[f.name] for f in fields(cls) if state.get(f.name) is not None}
        if "backbone" in values and "resolution" in values:
            merged = {**{f.name: f.default for f in fields(cls)}, **values}
        else:
            merged = {**cls.defaults(state.get("backbone") or None).__dict__, **values}
        return cls(
            backbone=str(merged["backbone"]),
            resolution=int(merged["resolution"]),
            batch_size=int(merged["batch_size"]),
            pretrained=bool(merged["pretrained"]),
            session_id=str(merged["session_id"]),
            budget_bytes=None if merged.get("budget_bytes") is None else int(merged["budget_bytes"]),
            budget_in_flash=bool(merged.get("budget_in_flash")),
        )


KEYS: tuple[str, ...] = tuple(f.name for f in fields(Settings))
"""Session-state keys the sidebar writes (one per :class:`Settings` field)."""

LIMITS: dict[str, tuple[int, int, str]] = {
    "resolution": (int(L.RESOLUTION.low), int(L.RESOLUTION.high), "Input resolution"),
    "batch_size": (1, 512, "Batch size"),
}
"""The sidebar's numeric settings: (smallest, largest, name). The widgets take any number and
:func:`accept_setting` rejects what is outside, in place, with the reason shown under the field."""


def setting_problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the sidebar's ``key`` setting, with what to do; None when it can."""
    if key not in LIMITS:
        return None
    low, high, name = LIMITS[key]
    if value is None or not float(value).is_integer():
        return f"{name} must be a whole number from {low:,} to {high:,}."
    if not low <= value <= high:
        return f"{name} {value:,} is out of range: choose {low:,} to {high:,}. Kept {{kept}}."
    return None


def accept_setting(key: str, value: Any, last_valid: Any) -> tuple[Any, str | None]:
    """What the sidebar keeps for ``key`` after the user entered ``value``: ``(value, None)`` when it is
    valid, else ``(last_valid, reason)`` -- the field shows the value the charts use, the reason beside it."""
    problem = setting_problem(key, value)
    if problem is None:
        return value, None
    return last_valid, problem.replace("{kept}", f"{last_valid:,}")


def backbone_label(name: str) -> str:
    """The backbone picker's label of ``name``: the name alone. Streamlit's fuzzy search ranks an option
    whose label equals the typed text first, so any decoration (a star for curated names) would let
    ``resnet50c`` win over ``resnet50``."""
    return name
