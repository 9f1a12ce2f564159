"""Memory profiles: what one (backbone, resolution, mode) costs at *every* batch size, from two traces.

The step's modelled peak (:mod:`tinytl_core.memory.accounting`) is the largest of a few hundred candidate
sums of tensor sizes (:class:`~tinytl_core.memory.accounting.PeakTerms`). Each tensor is either
batch-sized or fixed (normalisation statistics, weights), so each candidate is ``a + s * batch``; the
profile keeps these lines, fitted to batch sizes 2 and 3, both rewritten from one trace on the ``meta``
device at a prime batch size (:mod:`tinytl_core.tracing.scaling`), and checks that the two have the
same structure (same rows, same candidates). Batch 1 uses GroupNorm (the paper's
choice: batch statistics of one sample are meaningless), a different model, traced at batch 1 alone.
Tests compare profiles with :func:`tinytl_core.memory.analyze` at every batch of 1-64.

Profiles are cached in memory and on disk (``<data home>/planner-cache``, one JSON file each, safe to
delete): the key holds :data:`PROFILE_FORMAT`, :data:`TRACE_FORMAT` and the torch and timm versions
(:func:`cache_version`), so editing unrelated code never re-traces. Loading reads JSON only; nothing is
executed. Missing profiles are traced in worker processes (:func:`fill_cache`), one per core.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import timm
import torch
from torch import nn

from tinytl_core.backbones import backbone_info, known_shape_error
from tinytl_core.memory import accounting as acc
from tinytl_core.memory.analysis import BatchAnalysis
from tinytl_core.modes import PreparedModel, get_mode, prepare_model
from tinytl_core.planner.disk import JsonFolder
from tinytl_core.runtime import freeze_imported_objects
from tinytl_core.tracing import Trace, optimizer_states, trace_model
from tinytl_core.tracing.scaling import (
    RESOLUTION_STEP,
    ScalableTrace,
    prime_batch,
    resolution_primes,
)

PROFILE_FORMAT = 3
"""Bump when :class:`MemoryProfile`'s fields or their meaning change."""
TRACE_FORMAT = 4
"""Bump when the figures' code changes: anything that changes a traced profile (the tracer and its meta
kernels, the memory rules and accounting, layer kinds, modes, lite residual branches, normalisation,
backbone construction). Cached profiles of another version are not read. ``tests/test_planner_cache.py``
fails when a sample profile traced now differs from the one stored with this version (then bump this and
regenerate the sample: ``python tests/test_planner_cache.py``)."""
CACHE_NAME = "planner-cache"
MAX_FROZEN_BITS = 32
LINEAR_BATCHES = (2, 3)
"""The batch sizes a BatchNorm profile is traced at (two points fix each candidate's line)."""


@dataclass(frozen=True)
class MemoryProfile:
    """The modelled memory of one (backbone, resolution, mode, normalisation) at any batch size.

    ``engine_lines`` / ``stock_lines``: ``(a, s)`` pairs, the peak activation memory at batch ``b`` is
    ``max(a + s * b)`` (the undominated candidates only). ``min_batch``/``max_batch``: the batches the
    profile holds for (1..1 for GroupNorm, 2..None for BatchNorm). A mode that does not apply has
    ``applicable`` False and ``reason``.
    """

    backbone: str
    resolution: int
    mode: str
    group_norm: bool
    num_classes: int
    applicable: bool = True
    reason: str = ""
    min_batch: int = 1
    max_batch: int | None = None
    n_params: int = 0
    n_trainable: int = 0
    trainable_bytes: int = 0
    frozen_bytes: tuple[int, ...] = ()  # frozen weights' bytes at 1, 2, ..., 32 bits per weight
    buffer_bytes: int = 0
    engine_lines: tuple[tuple[int, int], ...] = ()
    stock_lines: tuple[tuple[int, int], ...] = ()

    def weights_bytes(self, frozen_weight_bits: int = 32) -> int:
        """Weights and buffers, frozen weights at ``frozen_weight_bits`` (as
        :func:`tinytl_core.memory.accounting.param_bytes` counts them)."""
        return self.trainable_bytes + self.frozen_weights_bytes(frozen_weight_bits) + self.buffer_bytes

    def frozen_weights_bytes(self, frozen_weight_bits: int = 32) -> int:
        """The frozen weights alone (what a microcontroller keeps in flash), as
        :func:`tinytl_core.memory.accounting.param_bytes` counts them (kept for 1..32 bits)."""
        if not 1 <= frozen_weight_bits <= len(self.frozen_bytes):
            raise ValueError(f"frozen-weight bits must be 1..{MAX_FROZEN_BITS}, got {frozen_weight_bits}")
        return self.frozen_bytes[frozen_weight_bits - 1]

    def grads_optimizer_bytes(self, optimizer: str) -> int:
        """Gradients and optimizer state of the trainable parameters."""
        return self.trainable_bytes * (1 + optimizer_states(optimizer))

    def activation_peak(self, batch_size: int, *, engine: bool = True) -> int:
        """Peak activation memory of one step at ``batch_size`` (engine or stock PyTorch)."""
        if batch_size < self.min_batch or (self.max_batch is not None and batch_size > self.max_batch):
            held = f"{self.min_batch}..{self.max_batch or 'any'}"
            raise ValueError(f"this profile holds for batch {held}, not {batch_size}")
        lines = self.engine_lines if engine else self.stock_lines
        return max((a + s * batch_size for a, s in lines), default=0)

    def step_peak(
        self, batch_size: int, *, optimizer: str = "adam", frozen_weight_bits: int = 32, engine: bool = True
    ) -> int:
        """The modelled step peak: weights + gradients and optimizer state + peak activation memory, as
        ``analyze(...).totals.total_modelled_bytes`` (engine) / ``total_stock_bytes`` (stock)."""
        return (
            self.weights_bytes(frozen_weight_bits)
            + self.grads_optimizer_bytes(optimizer)
            + self.activation_peak(batch_size, engine=engine)
        )

    def to_json(self) -> dict:
        """A plain JSON-able dict (the cache's file content)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> MemoryProfile:
        """Rebuild from :meth:`to_json` (plain data: no code runs). ``ValueError`` for anything a traced
        profile cannot hold (a damaged or edited file: the cache traces it again rather than serve it)."""
        data = dict(data)
        for name in ("engine_lines", "stock_lines"):
            data[name] = tuple(_pair(pair) for pair in data.get(name, ()))
        data["frozen_bytes"] = tuple(_count(v) for v in data.get("frozen_bytes", ()))
        profile = cls(**data)
        for name, kind in (("backbone", str), ("mode", str), ("reason", str)):
            if not isinstance(getattr(profile, name), kind):
                raise ValueError(f"{name} is not a {kind.__name__}")
        for name in ("group_norm", "applicable"):
            if not isinstance(getattr(profile, name), bool):
                raise ValueError(f"{name} is not true or false")
        for name in (
            "resolution", "num_classes", "min_batch", "n_params", "n_trainable", "trainable_bytes",
            "buffer_bytes",
        ):  # fmt: skip
            _count(getattr(profile, name))
        if profile.max_batch is not None:
            _count(profile.max_batch)
        if profile.applicable and (
            not profile.engine_lines
            or not profile.stock_lines
            or len(profile.frozen_bytes) != MAX_FROZEN_BITS
        ):
            raise ValueError("an applicable profile has engine and stock lines, and frozen bytes")
        return profile


_LARGEST = 2**62  # bytes: far above any budget (1 EB), still exact in a float64 sum of a few terms


def _count(value: object) -> int:
    """A whole number of bytes (or items) a profile may hold; ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _LARGEST:
        raise ValueError(f"not a count: {value!r}")
    return value


def _pair(pair: object) -> tuple[int, int]:
    """A line ``(a, s)``: ``a`` may be negative (a line's intercept), ``s`` is bytes per sample."""
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise ValueError(f"not a line: {pair!r}")
    a, s = pair
    if isinstance(a, bool) or not isinstance(a, int) or not -_LARGEST < a < _LARGEST:
        raise ValueError(f"not a line: {pair!r}")
    return a, _count(s)


def upper_envelope(lines: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """The lines ``(a, s)`` not dominated by another (``a' >= a`` and ``s' >= s``): the same maximum at
    every batch size >= 0, far fewer lines."""
    kept: list[tuple[int, int]] = []
    best_slope = None
    for a, s in sorted(set(lines), key=lambda p: (-p[0], -p[1])):
        if best_slope is None or s > best_slope:
            kept.append((a, s))
            best_slope = s
    return tuple(kept)


def _terms(trace: Trace) -> acc.PeakTerms:
    return acc.peak_terms(trace, acc.necessary_rows(trace))


def _fit(low: list[int], high: list[int], b_low: int, b_high: int) -> list[tuple[int, int]]:
    step = b_high - b_low
    lines = []
    for lo, hi in zip(low, high):
        slope, rest = divmod(hi - lo, step)
        if rest:  # not a whole number of bytes per sample: fall back to the safe side
            slope += 1
        lines.append((lo - slope * b_low, slope))
    return lines


def _structure(trace: Trace) -> list[tuple[str, int, str]]:
    return [(r.name, r.call, r.kind) for r in trace.rows]


def _traces(model: nn.Module, size: tuple[int, int, int], group_norm: bool) -> list[Trace]:
    """The traces a profile is fitted to: batch 1 for GroupNorm, else :data:`LINEAR_BATCHES`, both
    rewritten from one trace at a prime batch size (:class:`~tinytl_core.memory.analysis.BatchAnalysis`,
    which traces each batch on its own where sizes do not scale with the batch)."""
    analysis = BatchAnalysis(model, input_size=size)
    return [analysis.trace(b) for b in ((1,) if group_norm else LINEAR_BATCHES)]


def _prepare(backbone: str, resolution: int, mode: str, group_norm: bool, num_classes: int) -> PreparedModel:
    return prepare_model(
        backbone,
        mode,
        num_classes=num_classes,
        resolution=resolution,
        group_norm=group_norm,
        device="meta",
        strict=False,
        engine=False,  # analyze() models stock layers and the engine from the rules: no conversion
    )


def build_profile(
    backbone: str, resolution: int, mode: str, *, group_norm: bool, num_classes: int = 10
) -> MemoryProfile:
    """Trace ``backbone`` in ``mode`` on the ``meta`` device and fit its memory lines (see the module
    docstring). A mode that does not apply, or an input too small for the architecture, gives a profile
    with ``applicable=False`` and the reason."""
    base = MemoryProfile(backbone, resolution, mode, group_norm, num_classes)
    try:
        prepared = _prepare(backbone, resolution, mode, group_norm, num_classes)
        if not prepared.result.applicable:
            return _inapplicable(base, prepared.result.reason)
        traces = _traces(prepared.model, prepared.data.input_size, group_norm)
    except (ValueError, RuntimeError, TypeError, NotImplementedError) as exc:  # timm or tracer refusing
        plain = known_shape_error(str(exc))  # said in words, not PyTorch's shape text
        return _inapplicable(
            base, f"it does not run at {resolution} px: {plain}" if plain else str(exc) or type(exc).__name__
        )
    return _fitted(base, traces)


def _shared_resolutions(backbone: str, mode: str, resolutions: Iterable[int]) -> list[int]:
    """The resolutions one pair of traces can serve (:func:`build_profiles`): multiples of
    ``RESOLUTION_STEP`` of a CNN (transformers are built for their input size) in a mode without lite
    residual branches (sized by the input); none when fewer than three (two traces would not pay)."""
    if get_mode(mode).uses_lite_residual or backbone_info(backbone).kind != "cnn":
        return []
    shared = sorted({r for r in resolutions if r % RESOLUTION_STEP == 0})
    return shared if len(shared) >= 3 else []


def build_profiles(
    backbone: str, resolutions: Iterable[int], mode: str, *, group_norm: bool, num_classes: int = 10
) -> list[MemoryProfile]:
    """:func:`build_profile` at each of ``resolutions`` (in order), from two traces where they can serve
    them all: a CNN whose architecture does not depend on the input size is traced at two prime multiples
    of ``RESOLUTION_STEP`` (and a prime batch size) and every shared resolution and batch size is rewritten
    from them (:mod:`tinytl_core.tracing.scaling`, which checks that every size scales). Where that
    check fails, each resolution is traced on its own; the figures are the same either way."""
    resolutions = list(resolutions)
    out: dict[int, MemoryProfile] = {}
    shared = _shared_resolutions(backbone, mode, resolutions)
    if shared:
        try:
            out = _profiles_from_two_traces(backbone, shared, mode, group_norm, num_classes)
        except (ValueError, RuntimeError, TypeError, NotImplementedError):  # not scalable: one by one
            out = {}
    for r in resolutions:
        if r not in out:
            out[r] = build_profile(backbone, r, mode, group_norm=group_norm, num_classes=num_classes)
    return [out[r] for r in resolutions]


def _profiles_from_two_traces(
    backbone: str, resolutions: list[int], mode: str, group_norm: bool, num_classes: int
) -> dict[int, MemoryProfile]:
    prepared = _prepare(backbone, resolutions[0], mode, group_norm, num_classes)
    bases = {r: MemoryProfile(backbone, r, mode, group_norm, num_classes) for r in resolutions}
    if not prepared.result.applicable:  # the same at any size: the mode needs parts the model lacks
        return {r: _inapplicable(b, prepared.result.reason) for r, b in bases.items()}
    model, channels = prepared.model, prepared.data.input_size[0]
    q1, q2 = resolution_primes(model, num_classes)
    batch = 1 if group_norm else prime_batch(model, num_classes, q1, q2)
    first, second = (
        trace_model(model, (channels, RESOLUTION_STEP * q, RESOLUTION_STEP * q), batch) for q in (q1, q2)
    )
    if group_norm:
        scalable = ScalableTrace(first, (q1,), check=second, check_primes=(q2,))
        return {r: _fitted(bases[r], [scalable.at((r // RESOLUTION_STEP,))]) for r in resolutions}
    scalable = ScalableTrace(first, (batch, q1), batch_prime=batch, check=second, check_primes=(batch, q2))
    return {
        r: _fitted(bases[r], [scalable.at((b, r // RESOLUTION_STEP)) for b in LINEAR_BATCHES])
        for r in resolutions
    }


def _fitted(base: MemoryProfile, traces: list[Trace]) -> MemoryProfile:
    """The profile fitted to ``traces`` (batch 1 with GroupNorm, else :data:`LINEAR_BATCHES`)."""
    first = traces[0]
    params = first.params
    terms = [_terms(t) for t in traces]
    if base.group_norm:
        engine = [(v, 0) for v in terms[0].engine]
        stock = [(v, 0) for v in terms[0].stock]
        min_batch, max_batch = 1, 1
    else:
        if _structure(traces[0]) != _structure(traces[1]) or any(
            len(getattr(terms[0], k)) != len(getattr(terms[1], k)) for k in ("engine", "stock")
        ):
            raise RuntimeError(
                f"{base.backbone} ({base.mode}) traces differently at batch sizes {LINEAR_BATCHES}"
            )
        engine = _fit(terms[0].engine, terms[1].engine, *LINEAR_BATCHES)
        stock = _fit(terms[0].stock, terms[1].stock, *LINEAR_BATCHES)
        min_batch, max_batch = 2, None
    return replace(
        base,
        min_batch=min_batch,
        max_batch=max_batch,
        n_params=sum(p.numel for p in params),
        n_trainable=sum(p.numel for p in params if p.trainable),
        trainable_bytes=sum(p.nbytes for p in params if p.trainable),
        frozen_bytes=tuple(
            sum(acc.param_bytes(p, bits) for p in params if not p.trainable)
            for bits in range(1, MAX_FROZEN_BITS + 1)
        ),
        buffer_bytes=first.buffer_bytes,
        engine_lines=upper_envelope(engine),
        stock_lines=upper_envelope(stock),
    )


def _inapplicable(base: MemoryProfile, reason: str) -> MemoryProfile:
    return MemoryProfile(**{**asdict(base), "applicable": False, "reason": " ".join(reason.split())})


def cache_version() -> str:
    """The version every cache key holds: :data:`PROFILE_FORMAT`, :data:`TRACE_FORMAT`, torch and timm."""
    return f"p{PROFILE_FORMAT}-t{TRACE_FORMAT}-torch{torch.__version__}-timm{timm.__version__}"


ProfileRequest = tuple[str, int, str, bool, int]
"""One profile to build: (backbone, resolution, mode, group_norm, num_classes)."""
WORKERS_ENV = "TINYTL_PLANNER_WORKERS"
MIN_PARALLEL = {"fork": 4, "forkserver": 24, "spawn": 24}
"""Fewer missing profiles than this are traced in this process: a forked worker starts at once, a fork
server or a spawned worker first imports torch and timm (seconds)."""


def default_workers() -> int:
    """Processes that trace missing profiles: ``TINYTL_PLANNER_WORKERS`` if set (1: none), else one per
    core this process may use."""
    text = os.environ.get(WORKERS_ENV, "").strip()
    if text:
        try:
            return max(1, int(text))
        except ValueError:
            raise ValueError(f"{WORKERS_ENV} must be a whole number, got {text!r}") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _worker_init() -> None:
    torch.set_num_threads(1)  # one core per process: the traces are single-threaded Python anyway
    freeze_imported_objects()  # the collector no longer rescans the imports' objects (half a trace)


def _tasks(requests: list[ProfileRequest]) -> list[list[ProfileRequest]]:
    """``requests`` in the groups one :func:`build_profiles` call serves: the resolutions one pair of
    traces covers together (:func:`_shared_resolutions`), every other request on its own."""
    groups: dict[tuple, list[int]] = {}
    for backbone, resolution, mode, group_norm, num_classes in requests:
        groups.setdefault((backbone, mode, group_norm, num_classes), []).append(resolution)
    tasks = []
    for (backbone, mode, group_norm, num_classes), resolutions in groups.items():
        shared = _shared_resolutions(backbone, mode, resolutions)
        if shared:
            tasks.append([(backbone, r, mode, group_norm, num_classes) for r in shared])
        tasks.extend([(backbone, r, mode, group_norm, num_classes)] for r in resolutions if r not in shared)
    return tasks


def _trace_json(task: list[ProfileRequest]) -> list[dict]:
    """Build one task's profiles (same backbone, mode and normalisation) in a worker process; plain data
    back (no pickled tensors or models)."""
    backbone, _, mode, group_norm, num_classes = task[0]
    resolutions = [r for _, r, *_ in task]
    profiles = build_profiles(backbone, resolutions, mode, group_norm=group_norm, num_classes=num_classes)
    return [p.to_json() for p in profiles]


def _start_method() -> str:
    """``fork`` in a single-threaded process (the CLI: workers start at once, already warm); a fork
    server otherwise (the Streamlit server has threads, which a fork must not copy mid-work)."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _pool(workers: int, method: str) -> ProcessPoolExecutor:
    """Worker processes; a fork server imports this module once (the next pools start at once)."""
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload([__name__])
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init)


class ProfileCache:
    """Profiles in memory and on disk (one JSON file per profile under ``folder``).

    ``folder`` None: ``<data home>/planner-cache`` (:func:`tinytl_core.paths.cache_dir`), or no disk cache
    when ``TINYTL_PLANNER_CACHE=0``. A file that cannot be read (damaged, other version) is rebuilt.
    """

    def __init__(self, folder: str | Path | None = None, *, disk: bool | None = None) -> None:
        self.files = JsonFolder(CACHE_NAME, folder, disk=disk)
        self.folder = self.files.folder
        self.version = cache_version()
        self.memory: dict[str, MemoryProfile] = {}
        self.built = 0  # profiles traced (cache misses)
        self.loaded = 0  # profiles read from disk

    def key(self, backbone: str, resolution: int, mode: str, group_norm: bool, num_classes: int) -> str:
        """The cache key of one profile (a hash; the file name)."""
        return self.files.key(self.version, backbone, resolution, mode, group_norm, num_classes)

    def _load(self, key: str) -> MemoryProfile | None:
        """The profile from memory or disk (then kept in memory), or None."""
        profile = self.memory.get(key)
        if profile is not None:
            return profile
        data = self.files.read(key)
        if data is None:
            return None
        try:
            profile = MemoryProfile.from_json(data)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None  # of another form: traced again
        p = profile
        if self.key(p.backbone, p.resolution, p.mode, p.group_norm, p.num_classes) != key:
            return None  # another configuration's profile under this name: traced again
        self.loaded += 1
        self.memory[key] = profile
        return profile

    def put(self, profile: MemoryProfile) -> None:
        """Keep ``profile`` in memory and on disk (atomically: a reader never sees half a file)."""
        key = self.key(
            profile.backbone, profile.resolution, profile.mode, profile.group_norm, profile.num_classes
        )
        self.memory[key] = profile
        self.files.write(key, profile.to_json())

    def get(
        self, backbone: str, resolution: int, mode: str, *, group_norm: bool, num_classes: int = 10
    ) -> MemoryProfile:
        """The profile, from memory, disk or a fresh trace (then stored)."""
        profile = self._load(self.key(backbone, resolution, mode, group_norm, num_classes))
        if profile is None:
            profile = build_profile(
                backbone, resolution, mode, group_norm=group_norm, num_classes=num_classes
            )
            self.built += 1
            self.put(profile)
        return profile

    def missing(self, requests: Iterable[ProfileRequest]) -> list[ProfileRequest]:
        """The requests neither in memory nor on disk (loading those that are), each once, in order."""
        return [r for r in dict.fromkeys(requests) if self._load(self.key(*r)) is None]

    def fill(
        self,
        requests: Iterable[ProfileRequest],
        *,
        workers: int | None = None,
        progress: Callable[[int, int, ProfileRequest], None] | None = None,
    ) -> int:
        """Trace the profiles of ``requests`` that are not cached yet, in ``workers`` processes (None:
        :func:`default_workers`; 1: in this process), and store them; returns how many were traced.
        ``progress(done, total, request)`` is called before the first profile and after each task (the
        resolutions one pair of traces serves come together, :func:`build_profiles`)."""
        todo = self.missing(requests)
        if not todo:
            return 0
        tasks = _tasks(todo)
        workers = min(default_workers() if workers is None else max(1, workers), len(tasks))
        if progress is not None:
            progress(0, len(todo), todo[0])
        done = 0
        method = _start_method()
        if workers > 1 and len(todo) >= MIN_PARALLEL[method]:
            try:
                with _pool(workers, method) as pool:
                    futures = {pool.submit(_trace_json, task): task for task in tasks}
                    for future in as_completed(futures):
                        for data in future.result():
                            self.put(MemoryProfile.from_json(data))
                        self.built += len(futures[future])
                        done += len(futures[future])
                        if progress is not None:
                            progress(done, len(todo), futures[future][-1])
            except BrokenProcessPool:  # a worker died (e.g. out of memory): trace the rest here
                pass
        for task in tasks:
            task = [r for r in task if self._load(self.key(*r)) is None]
            if not task:
                continue
            for data in _trace_json(task):
                self.put(MemoryProfile.from_json(data))
            self.built += len(task)
            done += len(task)
            if progress is not None:
                progress(done, len(todo), task[-1])
        return done

    def clear(self) -> int:
        """Delete every cached file and forget the in-memory profiles; returns the files deleted."""
        self.memory.clear()
        return self.files.clear()
