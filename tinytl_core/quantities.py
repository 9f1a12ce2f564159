"""Figures, typed: each quantity's label, unit and help declared once, as dataclass field metadata.

A dataclass of figures declares its fields with :func:`quantity`; tables, cards, charts, CSV exports and
the results store read the label and unit from there (:func:`describe`, :func:`quantities`) instead of
spelling keys and labels of their own. :func:`names` gives checked attribute access to field names
(``names(RunMemory).total_modelled_bytes == "total_modelled_bytes"``, a typo is an AttributeError), for
tables that select or order fields.

Also here, at the bottom of the package (it imports nothing from ``tinytl_core``): :data:`MB` and the one
MB formatter :func:`format_mb`, :func:`format_bytes` (unit by magnitude) and :func:`format_ratio`;
:class:`RunStatus`; and :class:`RunMemory`, the memory figures a training
run records (modelled and measured), which the adaptation loop fills and the results store keeps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import Field, dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

MB = 1_000_000
"""One megabyte: 10^6 bytes, as in the paper."""
CUDA_WORKSPACES_NOTE = (
    "On CUDA it also holds the cuBLAS and cuDNN workspaces (about 50-75 MB measured on an H200), which "
    "the memory model leaves out: they depend on the GPU and library versions, not on the network."
)
"""What a measured CUDA peak holds beyond the modelled one (README, "On a GPU")."""


class Unit(str, Enum):
    """What a quantity counts, and so how it is shown (:attr:`display`)."""

    BYTES = "bytes"  # shown in MB (10^6 bytes)
    FRACTION = "fraction"  # 0..1, shown in %
    SECONDS = "seconds"
    COUNT = "count"  # an integer
    NUMBER = "number"  # any other real number
    FLAG = "flag"  # a yes/no
    TEXT = "text"

    @property
    def display(self) -> str:
        """The unit a value is shown in: ``MB``, ``%``, ``s``; empty for plain numbers and text."""
        return {Unit.BYTES: "MB", Unit.FRACTION: "%", Unit.SECONDS: "s"}.get(self, "")

    @property
    def digits(self) -> int | None:
        """Decimals a value is rounded to when shown in a table (None: as it is)."""
        return {Unit.BYTES: 2, Unit.FRACTION: 1, Unit.SECONDS: 1}.get(self)

    @property
    def numeric(self) -> bool:
        return self not in (Unit.TEXT, Unit.FLAG)

    def plausible(self, value: Any) -> bool:
        """Whether ``value`` can be a figure of this unit: a finite number, within 0..1 for a fraction, not
        negative for bytes, seconds and counts (text and flags: anything). A stored value that is not (an
        accuracy of ``inf`` or ``1e300``) is shown as missing, never as a figure."""
        if not self.numeric or value is None:
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value):
            return False
        if self is Unit.FRACTION:
            return 0 <= value <= 1
        return value >= 0 or self is Unit.NUMBER


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_mb(nbytes: float | None, digits: int = 1, missing: str = "-", *, unit: bool = False) -> str:
    """``nbytes`` in MB (10^6 bytes) with thousands separators (``12_345_678`` -> ``'12.3'``); ``missing``
    for None / NaN. ``unit`` appends `` MB`` to a figure."""
    if _missing(nbytes):
        return missing
    return f"{nbytes / MB:,.{digits}f}" + (" MB" if unit else "")


BYTE_UNITS: tuple[tuple[str, int], ...] = (
    ("B", 1),
    ("KB", 10**3),
    ("MB", MB),
    ("GB", 10**9),
    ("TB", 10**12),
    ("PB", 10**15),
    ("EB", 10**18),
)
"""Decimal byte units (10^3 steps, as :data:`MB`), smallest first."""


def bytes_unit(nbytes: float) -> tuple[str, int]:
    """The unit a figure of ``nbytes`` (or an axis whose largest value it is) reads best in: the largest
    of :data:`BYTE_UNITS` that leaves at least 1 (``2_654e6`` -> ``('GB', 10**9)``)."""
    size = abs(nbytes) if not _missing(nbytes) else 0.0
    chosen = BYTE_UNITS[0]
    for name, factor in BYTE_UNITS:
        if size >= factor:
            chosen = (name, factor)
    return chosen


def format_bytes(nbytes: float | None, missing: str = "-", *, unit: tuple[str, int] | None = None) -> str:
    """``nbytes`` in the unit its size calls for (:func:`bytes_unit`: B, KB, MB, GB, TB), three significant
    figures, so a card never needs more than about eight characters: ``110_150e6`` -> ``'110 GB'``,
    ``2_654e6`` -> ``'2.65 GB'``, ``12_345`` -> ``'12.3 KB'``; ``unit`` forces one (bar labels of one chart).
    ``missing`` for None / NaN."""
    if _missing(nbytes):
        return missing
    if math.isinf(nbytes):
        return "unlimited" if nbytes > 0 else "-"
    name, factor = unit or bytes_unit(nbytes)
    text = _three_figures(nbytes / factor, integer=factor == 1)
    if unit is None and name != BYTE_UNITS[-1][0] and abs(float(text.replace(",", ""))) >= 1000:
        # rounding reached the next unit (999,999 B is "1.00 MB", not "1,000 KB")
        name, factor = BYTE_UNITS[[u for u, _ in BYTE_UNITS].index(name) + 1]
        text = _three_figures(nbytes / factor, integer=False)
    return f"{text} {name}"


def _three_figures(value: float, *, integer: bool) -> str:
    digits = 0 if integer or abs(value) >= 99.95 else 1 if abs(value) >= 9.995 else 2
    return f"{value:,.{digits}f}"


def format_ratio(value: float | None, reference: float | None, name: str = "full", digits: int = 1) -> str:
    """How ``value`` compares with ``reference`` (called ``name``), in its true direction: ``'2.5x more than
    full'``, ``'4.4x less than full'``, ``'same as full'`` (``'about the same as full'`` when the ratio
    rounds to 1); ``'none, unlike full'`` for 0 and ``'-'`` when either is missing or the reference is 0.
    The one place a comparison is phrased (Home, Memory Explorer, CLI)."""
    if _missing(value) or _missing(reference) or not reference or value < 0 or reference < 0:
        return "-"  # a ratio of negative sizes has no direction to say
    if value == reference:
        return f"same as {name}"
    if not value:
        return f"none, unlike {name}"
    if math.isinf(value) or math.isinf(reference):
        return "-"
    ratio = value / reference if value > reference else reference / value  # >= 1, no underflow to 0
    if round(ratio, digits) > 1:
        return f"{_times(ratio, digits)} {'more' if value > reference else 'less'} than {name}"
    return f"about the same as {name}"


def _times(ratio: float, digits: int) -> str:
    """``2.5x``, ``3,948,448x``; past a billion, ``over 1,000,000,000x`` (no 300-digit figures)."""
    if ratio >= 1e9:
        return "over 1,000,000,000x"
    return f"{ratio:,.{0 if ratio >= 1000 else digits}f}x"


def quantity(
    label: str,
    unit: Unit = Unit.BYTES,
    *,
    short: str | None = None,
    help: str = "",
    digits: int | None = None,
    default: Any = None,
) -> Any:
    """A dataclass field (default None) carrying a quantity's ``label`` (cards, legends, axis titles),
    ``short`` label (table headers; default: the label), :class:`Unit`, ``help`` text and the ``digits`` a
    table rounds it to (default: the unit's)."""
    meta = {
        "label": label,
        "unit": Unit(unit),
        "short": short or label,
        "help": help,
        "digits": Unit(unit).digits if digits is None else digits,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Quantity:
    """A declared quantity: its field name, labels, unit and help (see :func:`quantity`)."""

    name: str
    label: str
    unit: Unit
    short: str
    help: str = ""
    digits: int | None = None

    @property
    def header(self) -> str:
        """Table header: short label and display unit (``total modelled MB``, ``val acc %``)."""
        return f"{self.short} {self.unit.display}".rstrip()

    @property
    def title(self) -> str:
        """Axis title: label and display unit (``training memory, modelled (MB)``)."""
        return f"{self.label} ({self.unit.display})" if self.unit.display else self.label

    @property
    def key(self) -> str:
        """Column name of the displayed value: ``*_bytes`` -> ``*_MB``, fractions get ``_pct``."""
        if self.unit is Unit.BYTES:
            return self.name.removesuffix("_bytes") + "_MB"
        return self.name + "_pct" if self.unit is Unit.FRACTION else self.name

    def convert(self, raw: Any) -> Any:
        """``raw`` in the display unit (bytes -> MB, fraction -> %), unrounded; None for a missing value;
        enum members (a :class:`RunStatus`) as their value."""
        if _missing(raw):
            return None
        if isinstance(raw, Enum):
            return raw.value
        if self.unit is Unit.BYTES:
            return raw / MB
        return 100 * raw if self.unit is Unit.FRACTION else raw

    def value(self, raw: Any, digits: int | None = None) -> Any:
        """:meth:`convert`, rounded to ``digits`` (default: the quantity's)."""
        shown = self.convert(raw)
        digits = self.digits if digits is None else digits
        if shown is None or digits is None or not self.unit.numeric:
            return shown
        return round(shown, digits)

    def text(self, raw: Any, missing: str = "-") -> str:
        """``raw`` as text with its unit: ``12.3 MB``, ``75.0 %``, ``1.5 s``; ``missing`` when absent."""
        if _missing(raw):
            return missing
        if self.unit is Unit.BYTES:  # a figure on its own: the unit its size calls for
            return format_bytes(raw)
        if self.unit is Unit.FRACTION:
            return f"{100 * raw:.1f} %"
        if self.unit is Unit.SECONDS:
            return f"{raw:.1f} s"
        if self.unit is Unit.COUNT:
            return f"{int(raw):,}"
        return str(raw.value if isinstance(raw, Enum) else raw)


def _quantity_fields(cls: Any) -> tuple[Field, ...]:
    if not is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    return tuple(f for f in fields(cls) if "unit" in f.metadata)


def _from_field(f: Field) -> Quantity:
    m = f.metadata
    return Quantity(f.name, m["label"], m["unit"], m["short"], m["help"], m["digits"])


def quantities(cls: Any) -> tuple[Quantity, ...]:
    """Every quantity field of a dataclass (or instance), in declaration order."""
    return tuple(_from_field(f) for f in _quantity_fields(cls))


def describe(name: str, *where: Any) -> Quantity:
    """The quantity ``name`` as declared by the first of the dataclasses ``where`` that has it
    (``KeyError`` if none does)."""
    for cls in where:
        for f in _quantity_fields(cls):
            if f.name == name:
                return _from_field(f)
    raise KeyError(f"no quantity {name!r} in {', '.join(getattr(c, '__name__', str(c)) for c in where)}")


class FieldNames:
    """Checked attribute access to a dataclass's field names (see :func:`names`); iterating gives them all,
    in order."""

    def __init__(self, cls: Any):
        self._cls = cls
        self._names = tuple(f.name for f in fields(cls))

    def __getattr__(self, name: str) -> str:
        if name.startswith("_") or name not in self._names:
            raise AttributeError(f"{self._cls.__name__} has no field {name!r}")
        return name

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names


def names(cls: Any) -> FieldNames:
    """The field names of dataclass ``cls`` as checked attributes: ``names(RunMemory).weights_bytes``."""
    return FieldNames(cls)


class RunStatus(str, Enum):
    """Where a training run stands. The store keeps the :attr:`ended` ones."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"
    DIVERGED = "diverged"  # stopped because the loss became non-finite or exploded, or accuracy collapsed

    @property
    def ended(self) -> bool:
        """True for finished, cancelled, failed and diverged."""
        return self in (RunStatus.FINISHED, RunStatus.CANCELLED, RunStatus.FAILED, RunStatus.DIVERGED)

    @property
    def unsuccessful(self) -> bool:
        """True for the statuses of a run that stopped on a problem: failed and diverged."""
        return self in (RunStatus.FAILED, RunStatus.DIVERGED)

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


ENDED_STATUSES: tuple[RunStatus, ...] = tuple(s for s in RunStatus if s.ended)
"""The statuses of a run that ended (what the results store accepts)."""


@dataclass
class ModelledMemory:
    """The modelled training memory of one configuration (complete accounting unless said otherwise),
    in bytes. Shared by a memory report's totals and a run's figures."""

    weights_bytes: float | None = quantity(
        "weights",
        short="weights",
        help="Weights and buffers (frozen weights at the report's frozen_weight_bits).",
    )
    grads_optimizer_bytes: float | None = quantity(
        "gradients + optimizer state",
        short="grads+opt",
        help="Gradients of the trainable parameters and the optimizer's state for them.",
    )
    activations_necessary_bytes: float | None = quantity(
        "activations necessary, TinyTL rules",
        short="act. necessary",
        help="Activations backward must store under TinyTL's rules (paper accounting: the peak).",
    )
    activations_stock_bytes: float | None = quantity(
        "activations stock PyTorch, modelled",
        short="act. stock",
        help="Activations PyTorch's autograd stores by default (modelled from the traced ops).",
    )
    total_modelled_bytes: float | None = quantity(
        "training memory (step peak), modelled",
        short="total modelled",
        help="The modelled peak of one training step: weights + gradients + optimizer state + the "
        "necessary activations stored so far + the working set of the layer at the peak.",
    )


@dataclass
class RunMemory(ModelledMemory):
    """The memory figures a training run records (bytes): modelled (:class:`ModelledMemory`) and
    measured in one real step (None when not measured; see
    :func:`tinytl_core.memory.training_memory_figures`)."""

    activations_measured_bytes: float | None = quantity(
        "activations measured in one step",
        short="act. measured",
        help="What autograd saved for backward in one real step, with the layers the model trains with.",
    )
    total_measured_bytes: float | None = quantity(
        "training memory (step peak), measured",
        short="total measured",
        help="The peak of one real training step as it trains (what the OS or "
        "torch.cuda.max_memory_allocated shows): torch.cuda.max_memory_allocated on CUDA, PyTorch's "
        "profiler memory timeline elsewhere; weights, optimizer state, input, activations, gradients "
        "and temporaries alive at once. " + CUDA_WORKSPACES_NOTE,
    )
    activations_measured_stock_bytes: float | None = quantity(
        "activations stock PyTorch, measured",
        short="act. stock measured",
        help="Saved for backward in one real step with stock PyTorch layers.",
    )
    activations_measured_engine_bytes: float | None = quantity(
        "activations engine, measured",
        short="act. engine measured",
        help="Saved for backward in one real step with the training engine's layers.",
    )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> RunMemory | None:
        """Read figures back from a stored dict (unknown keys ignored); None for None or a dict without any
        figure (e.g. ``{"error": ...}``)."""
        if not values:
            return None
        known = {k: v for k, v in values.items() if k in names(cls)}
        return cls(**known) if known else None
