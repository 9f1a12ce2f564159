"""Memory budgets: parsing a size the user types, and device presets with what their number means.

Units are decimal, as everywhere in TinyTL Lab (:data:`tinytl_core.quantities.MB` = 10^6 bytes): KB = 10^3,
MB = 10^6, GB = 10^9 bytes, and TB, PB, EB likewise. The binary units KiB, MiB, GiB, TiB and PiB (2^10 to
2^50) are accepted when written as such. A bare number is in MB.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from tinytl_core.quantities import MB

UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "k": 1000,
    "mb": MB,
    "m": MB,
    "gb": 1000 * MB,
    "g": 1000 * MB,
    "tb": 10**12,
    "t": 10**12,
    "pb": 10**15,
    "p": 10**15,
    "eb": 10**18,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "pib": 1 << 50,
}
"""Units a budget may be written in (case-insensitive); decimal unless written KiB..PiB. Every unit the app
prints a size in (:func:`tinytl_core.quantities.format_bytes`, up to EB) is one a budget can be typed in."""

_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


MAX_BUDGET_BYTES = 10**18
"""The largest budget taken (1,000 PB): far beyond any device, and within the 64-bit integers the plan's
tables hold (a 10^20-byte budget overflowed them)."""


class BudgetError(ValueError):
    """A budget that cannot be used; the message says what to type instead."""


def parse_budget(text: str | float | int) -> int:
    """Bytes of a budget written as ``"256KB"``, ``"0.5 GB"``, ``"300 MB"``, ``"2GiB"`` or ``"300"`` (MB).

    A number (int or float) is taken in MB too. Raises :class:`BudgetError` for an empty, zero, negative,
    unparseable or absurdly large (over :data:`MAX_BUDGET_BYTES`) budget or an unknown unit.
    """
    if isinstance(text, bool):
        raise BudgetError(f"budget must be a size such as '256 KB' or '300 MB', got {text!r}")
    if isinstance(text, (int, float)):
        if isinstance(text, int) and abs(text) > MAX_BUDGET_BYTES:  # float() of 10**400 overflows
            raise BudgetError(f"budget {text!r} MB is more than 1 EB, larger than any device")
        value, unit = float(text), "mb"
    else:
        raw = str(text).strip()
        if not raw:
            raise BudgetError("budget is empty: type a size such as '256 KB', '300 MB' or '4 GB'")
        if raw.lstrip().startswith("-"):
            raise BudgetError(f"budget must be positive, got {raw!r}")
        match = _BUDGET.match(raw)
        if not match:
            raise BudgetError(
                f"cannot read budget {raw!r}: type a number and a unit, e.g. '256 KB' or '0.5 GB'"
            )
        value, unit = float(match.group(1)), (match.group(2).lower() or "mb")
        if unit not in UNITS:
            raise BudgetError(
                f"unknown unit {match.group(2)!r} in budget {raw!r}: use B, KB, MB, GB, TB, PB, EB "
                "(10^3 steps) or KiB, MiB, GiB, TiB, PiB (2^10 steps)"
            )
    if math.isinf(value):  # "1e999 MB"
        raise BudgetError(f"budget {text!r} is infinite: type a finite size such as '4 GB'")
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"budget must be a positive size, got {text!r}")
    scaled = value * UNITS[unit]
    if not math.isfinite(scaled) or scaled > MAX_BUDGET_BYTES:  # 1e300 GB overflows int(round(...))
        raise BudgetError(
            f"budget {text!r} is more than 1 EB ({MAX_BUDGET_BYTES // 10**15:,} PB), larger than any device: "
            "type the memory of the device you train on, e.g. '4 GB'"
        )
    nbytes = int(round(scaled))
    if nbytes < 1:
        raise BudgetError(f"budget {text!r} is less than one byte")
    return nbytes


@dataclass(frozen=True)
class DevicePreset:
    """A device's memory budget and how to read it.

    ``weights_in_flash``: frozen weights live in flash/ROM (read in place), so they do not count against
    the budget (RAM); ``frozen_weight_bits`` is how they are stored (8 = quantised, as in the paper).
    """

    name: str
    label: str
    budget_bytes: int
    note: str
    frozen_weight_bits: int = 32
    weights_in_flash: bool = False


PRESETS: dict[str, DevicePreset] = {
    p.name: p
    for p in (
        DevicePreset(
            "mcu-256k",
            "Microcontroller, 256 KB SRAM",
            256_000,
            "A Cortex-M class MCU (e.g. STM32F4): 256 KB of SRAM hold trainable weights, their gradients "
            "and optimizer state and the step's activations; frozen weights stay in flash at 8 bits.",
            frozen_weight_bits=8,
            weights_in_flash=True,
        ),
        DevicePreset(
            "mcu-512k",
            "Microcontroller, 512 KB SRAM",
            512_000,
            "A larger MCU (e.g. STM32F7/H7): 512 KB of SRAM for everything that changes during training; "
            "frozen weights in flash at 8 bits.",
            frozen_weight_bits=8,
            weights_in_flash=True,
        ),
        DevicePreset(
            "board-512m",
            "Single-board computer, 512 MB",
            512 * MB,
            "A 512 MB board (e.g. Raspberry Pi Zero 2 W): the whole step (fp32 weights, gradients, optimizer "
            "state, activations) must fit next to the OS; in practice leave some room.",
        ),
        DevicePreset(
            "phone-300m",
            "Phone app, 300 MB",
            300 * MB,
            "What a mobile app can use before the OS may stop it in the background: the whole step "
            "in 300 MB.",
        ),
        DevicePreset(
            "edge-gpu-4g",
            "Edge GPU, 4 GB",
            4000 * MB,
            "A 4 GB edge GPU module (e.g. Jetson Nano): memory is shared by CPU and GPU, so the step gets "
            "less than the whole 4 GB.",
        ),
    )
}
"""Device presets by name (``python -m tinytl_core plan --budget mcu-256k``)."""


@dataclass(frozen=True)
class Budget:
    """What the planner checks configurations against: bytes, and whether frozen weights count."""

    nbytes: int
    weights_in_flash: bool = False
    label: str = ""

    def __post_init__(self) -> None:
        if (
            isinstance(self.nbytes, bool)
            or not isinstance(self.nbytes, int)
            or not 1 <= self.nbytes <= MAX_BUDGET_BYTES
        ):  # bytes as an int: a size in words goes through Budget.of / parse_budget
            raise BudgetError(f"a budget is 1 byte to {MAX_BUDGET_BYTES:,} bytes, got {self.nbytes!r}")

    @classmethod
    def of(cls, text: str | float | int) -> Budget:
        """A preset by name (see :data:`PRESETS`) or a size (:func:`parse_budget`)."""
        if isinstance(text, str) and text.strip().lower() in PRESETS:
            preset = PRESETS[text.strip().lower()]
            return cls(preset.budget_bytes, preset.weights_in_flash, preset.label)
        nbytes = parse_budget(text)
        return cls(nbytes, False, str(text).strip())
