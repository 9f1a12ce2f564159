"""The ranges a setting may take, declared once: the library's checks (``AdaptConfig.validate``, the
planner's ``SearchSpace``), the CLI's argument types (:mod:`tinytl_core.cli.args`) and the app read them
from here, so a value one path refuses another cannot take (a resolution of 100,000 px, a seed of 10^30).

Each :class:`Limit` is inclusive; ``check`` raises ``ValueError`` naming the setting and its range.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    """An inclusive range of a setting: ``low..high`` (``integer``: whole numbers only; ``above_low``: the
    low end excluded, e.g. a learning rate > 0)."""

    name: str
    low: float
    high: float
    integer: bool = True
    above_low: bool = False

    def text(self) -> str:
        """``1 to 4,096``, ``more than 0 and at most 10``, ``0 to 31,536,000``."""
        if self.above_low:
            top = "" if math.isinf(self.high) else f" and at most {_number(self.high)}"
            return f"more than {_number(self.low)}{top}"
        return f"{_number(self.low)} to {_number(self.high)}"

    def problem(self, value: float) -> str | None:
        """Why ``value`` is not allowed, or None."""
        # any real number, NumPy's included (a table's np.int64 is a resolution like any other)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"{self.name} must be a number, got {value!r}"
        value = int(value) if isinstance(value, numbers.Integral) else float(value)
        if isinstance(value, float) and not math.isfinite(value):
            return f"{self.name} must be a finite number ({self.text()}), got {value}"
        if self.integer and not float(value).is_integer():
            return f"{self.name} must be a whole number ({self.text()}), got {value}"
        below = value <= self.low if self.above_low else value < self.low
        if below or value > self.high:
            if isinstance(value, int):  # an int typed as one stays one ("1.18e+21" for a typed integer)
                digits = len(str(abs(value)))
                shown = f"{value:,}" if digits <= 30 else f"a number of {digits:,} digits"
            else:
                shown = f"{value:g}"
            return f"{self.name} must be {self.text()}, got {shown}"
        return None

    def check(self, value: float) -> None:
        """Raise ``ValueError`` when ``value`` is outside the range (or not a finite number)."""
        problem = self.problem(value)
        if problem is not None:
            raise ValueError(problem)


def _number(value: float) -> str:
    """``4,096``, ``0.95``, ``31,536,000`` (no ``3.15e+07``); an int exactly (2^63 - 1 is not rounded up
    through a float to the value it refuses), a float over 10^15 as ``1e+30``."""
    if isinstance(value, int):
        return f"{value:,}"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{value:,.0f}"
    return f"{value:g}"


RESOLUTION = Limit("resolution", 8, 1024)
"""Input size in pixels: below 8 no timm CNN runs; 1024 px is where the app's figures stop."""
BATCH_SIZE = Limit("batch size", 1, 4096)
"""A batch the memory model and the planner account for."""
TRAINING_BATCH_SIZE = Limit("batch size", 1, 1_000_000_000)
"""A training run's: one larger than the training set trains on the whole set (recorded as it ran)."""
STEPS = Limit("steps", 1, 10_000_000)
EPOCHS = Limit("epochs", 0, 100_000, integer=False, above_low=True)
SEED = Limit("seed", 0, 2**32 - 1)
"""NumPy's seeds (PyTorch takes larger, NumPy does not)."""
THREADS = Limit("threads", 1, 1024)
CLASSES = Limit("classes", 2, 100_000)
WORKERS = Limit("workers", 0, 256)
IMAGES_PER_CLASS = Limit("images per class", 1, 10_000_000)
VALIDATION_IMAGES_PER_CLASS = Limit("validation images per class", 1, 10_000_000)
RUN_ID = Limit("run id", 1, 2**63 - 1)
"""SQLite's integer keys."""
ROWS = Limit("rows", 0, 10_000_000)
"""A listing's length (0: all)."""
SECONDS = Limit("seconds", 0, 365 * 24 * 3600, integer=False)
LEARNING_RATE = Limit("learning rate", 0, 1e30, integer=False, above_low=True)
"""Any positive rate up to 10^30: a huge one is for the divergence guard to stop, not for the parser to
refuse; above ~3.4e38 (float32's largest) the optimizer cannot even hold it and fails with PyTorch's text."""
LABEL_SMOOTHING = Limit("label smoothing", 0, 0.99, integer=False)
MOMENTUM = Limit("momentum", 0, 1, integer=False)  # SGD's: above 1 its velocity grows without bound
WEIGHT_DECAY = Limit("weight decay", 0, 1e6, integer=False)
VALIDATION_FRACTION = Limit("validation fraction", 0, 0.95, integer=False, above_low=True)
EVAL_EVERY = Limit("evaluation interval (steps)", 0, 10_000_000)
LAYERS = Limit("layers", 1, 10_000)
REPEATS = Limit("repeats", 1, 100)
JOBS = Limit("jobs", 1, 1_000_000_000)
DAYS = Limit("days", 0, 36_500, integer=False)
TIMEOUT = Limit("time-out (seconds)", 0, 3600, integer=False, above_low=True)
FROZEN_WEIGHT_BITS = Limit("frozen-weight bits", 1, 32)
PROCESS_ID = Limit("process id", 1, 2**31 - 1)
