"""The measured memory of one training step over time, by category, from PyTorch's own profiler.

``torch.profiler.profile(profile_memory=True, record_shapes=True, with_stack=True)`` records every
allocation and free of the step; its memory profiler (``torch.profiler._memory_profiler``) labels each
tensor (parameter, optimizer state, input, activation, gradient, autograd detail, temporary) and
``MemoryProfileTimeline`` turns the events into bytes per category over time -- what
``prof.export_memory_timeline`` writes. The numbers are tensor bytes, independent of the allocator's
caching, on the CPU as on CUDA; on CUDA :func:`profile_step` also reads
``torch.cuda.max_memory_allocated`` (after ``reset_peak_memory_stats``), the number users check.

That API is private, so this module is the only one that touches it: :data:`PRIVATE_API` names what it
relies on and ``tests/test_memory_timeline.py`` fails loudly if a torch upgrade changes it. The profiler's
categories are heuristics (it may call an activation's gradient "optimizer state" when an optimizer
touches nothing of it); the total per instant is exact, and the peak is the total's maximum.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch.profiler import ProfilerActivity, profile, record_function

PRIVATE_API = (
    "torch.profiler._memory_profiler.MemoryProfile.timeline",
    "torch.profiler._memory_profiler.CategoryDict.get",
    "torch.profiler._memory_profiler.Category",
    "torch.profiler._memory_profiler.Action",
    "torch.profiler._memory_profiler.TensorKey",
    "torch.profiler.profile._memory_profile",
)
"""The private PyTorch names this module relies on (checked by the tests)."""

PHASES = ("forward", "backward", "optimizer")
"""Phases of a step, marked with ``record_function("tinytl::<phase>")`` by :func:`profile_step`'s caller."""


class Category(str, enum.Enum):
    """Memory categories of the profiler (``torch.profiler._memory_profiler.Category``), plus UNKNOWN."""

    UNKNOWN = "unknown"
    INPUT = "input"
    TEMPORARY = "temporary"
    ACTIVATION = "activation"
    GRADIENT = "gradient"
    AUTOGRAD_DETAIL = "autograd detail"
    PARAMETER = "parameter"
    OPTIMIZER_STATE = "optimizer state"


def _profiler_module():
    # The private module, imported in one place; AttributeError / ImportError surface in the tests.
    from torch.profiler import _memory_profiler

    return _memory_profiler


@dataclass
class StepTimeline:
    """Bytes alive during one step, per category, at every instant the profiler saw an allocation change.

    ``times_us`` are the profiler's timestamps (microseconds); ``bytes[i]`` maps each category to its bytes
    at ``times_us[i]``; ``phases`` maps ``forward`` / ``backward`` / ``optimizer`` to their time spans.
    ``peak_cuda_bytes`` is ``torch.cuda.max_memory_allocated`` for the step (None off CUDA).
    """

    device: str
    times_us: list[int]
    bytes: list[dict[Category, int]]
    phases: dict[str, tuple[int, int]] = field(default_factory=dict)
    peak_cuda_bytes: int | None = None

    @property
    def totals(self) -> list[int]:
        """Total bytes alive at each instant."""
        return [sum(b.values()) for b in self.bytes]

    @property
    def peak_index(self) -> int:
        totals = self.totals
        return max(range(len(totals)), key=totals.__getitem__) if totals else 0

    @property
    def peak_bytes(self) -> int:
        """The step's peak: the most bytes alive at once (parameters, optimizer state and input included)."""
        totals = self.totals
        return max(totals) if totals else 0

    @property
    def start_bytes(self) -> int:
        """Bytes alive when the step started (weights, optimizer state, the input batch)."""
        return self.totals[0] if self.bytes else 0

    def peak_breakdown(self) -> dict[Category, int]:
        """Bytes per category at the peak."""
        return dict(self.bytes[self.peak_index]) if self.bytes else {}

    def phase_at(self, index: int) -> str:
        """The phase (forward, backward, optimizer) the instant ``index`` falls in ('' outside them)."""
        t = self.times_us[index]
        return next((name for name, (a, b) in self.phases.items() if a <= t <= b), "")

    @property
    def peak_phase(self) -> str:
        return self.phase_at(self.peak_index) if self.bytes else ""


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null meanwhile (native libraries write there directly)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. some notebook kernels): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profile_step(step: Callable[[], None], device: torch.device) -> StepTimeline:
    """Run ``step()`` (one training step; it may mark its phases with
    ``record_function("tinytl::forward")`` etc.) under the profiler and return its memory timeline."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    prof = profile(activities=activities, profile_memory=True, record_shapes=True, with_stack=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "memory block allocated before profiling started"
        with _native_stderr_silenced():  # kineto prints start/stop (and "no GPU") lines from C++
            prof.__enter__()
        try:
            step()
        finally:
            with _native_stderr_silenced():
                prof.__exit__(None, None, None)
    peak_cuda = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak_cuda = int(torch.cuda.max_memory_allocated(device))
    times, sizes = _walk(prof._memory_profile(), device)
    phases = {}
    origin_us = prof.profiler.kineto_results.trace_start_ns() // 1000  # events are relative to it
    for event in prof.events():
        if event.name.startswith("tinytl::") and event.name[8:] in PHASES:
            span = event.time_range
            phases[event.name[8:]] = (origin_us + int(span.start), origin_us + int(span.end))
    return StepTimeline(str(device), times, sizes, phases, peak_cuda)


def _walk(memory_profile, device: torch.device) -> tuple[list[int], list[dict[Category, int]]]:
    """Bytes per category after every allocation event on ``device``, in order.

    ``MemoryProfileTimeline._coalesce_timeline`` merges events of the same microsecond, which can hide a
    peak (a buffer allocated and its predecessor freed within one microsecond): walk the events instead.
    """
    mp = _profiler_module()
    categories = memory_profile._categories
    order = {c: Category[c.name] for c in mp.Category}
    running: dict[Category, int] = {}
    times: list[int] = []
    sizes: list[dict[Category, int]] = []

    def add(key, version, delta: int) -> None:
        found = categories.get(key, version) if isinstance(key, mp.TensorKey) else None
        cat = order.get(found, Category.UNKNOWN)
        running[cat] = running.get(cat, 0) + int(delta)

    for t, action, (key, version), nbytes in memory_profile.timeline:
        if key.device != device:
            continue
        if t >= 0 and not times:  # the first event of the step: what existed before is the start point
            times.append(t // 1000)
            sizes.append({c: v for c, v in running.items() if v})
        if action in (mp.Action.PREEXISTING, mp.Action.CREATE):
            add(key, version, nbytes)
        elif action == mp.Action.INCREMENT_VERSION:
            add(key, version, -nbytes)
            add(key, version + 1, nbytes)
        elif action == mp.Action.DESTROY:
            add(key, version, -nbytes)
        else:
            raise ValueError(f"unknown profiler memory action {action!r}: torch changed its memory profiler")
        if t >= 0:
            times.append(t // 1000)
            sizes.append({c: v for c, v in running.items() if v})
    if not times:  # nothing happened during the step
        times, sizes = [0], [{c: v for c, v in running.items() if v}]
    return times, sizes


def phase(name: str) -> record_function:
    """Mark a phase of the step (``forward``, ``backward``, ``optimizer``) for :func:`profile_step`."""
    if name not in PHASES:
        raise ValueError(f"unknown phase {name!r}; one of {', '.join(PHASES)}")
    return record_function(f"tinytl::{name}")
