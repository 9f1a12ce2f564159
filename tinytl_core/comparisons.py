"""Per-mode memory of one backbone: every fine-tuning mode analysed on the ``meta`` device.

The memory model's comparisons live here, above :mod:`tinytl_core.modes` (which prepares each mode) and
:mod:`tinytl_core.memory` (which analyses one prepared model).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, replace

import pandas as pd

from tinytl_core.memory import MemoryReport, analyze
from tinytl_core.memory.analysis import BatchAnalysis
from tinytl_core.memory.report import SUMMARY_FIELDS, TOTALS
from tinytl_core.modes import Mode, ModeNotApplicable, prepare_model, resolve_modes
from tinytl_core.quantities import format_bytes, format_ratio

TABLE_COLUMNS: tuple[str, ...] = SUMMARY_FIELDS
"""The :class:`~tinytl_core.memory.ReportTotals` fields of a :func:`compare_modes` row, in order: those a
report's summary lists."""


ANALYSES_KEPT = 24
"""Traced (backbone, mode, resolution, normalisation) settings kept in memory per process
(:func:`mode_analysis`): three settings of every mode, the one a page shows and the last ones it showed.
Each holds a shape-only model and its trace, 1-3 MB for a mobile CNN."""
_analyses: OrderedDict[tuple, BatchAnalysis | str] = OrderedDict()
_analyses_lock = threading.Lock()


def mode_analysis(
    backbone: str, mode: Mode, *, resolution: int | None, group_norm: bool = False
) -> BatchAnalysis | str:
    """``backbone`` prepared in ``mode`` on the ``meta`` device and traced, ready to report at any batch
    size, optimizer and accounting (:class:`~tinytl_core.memory.analysis.BatchAnalysis`), or the reason
    the mode does not apply. Kept per process (the last :data:`ANALYSES_KEPT`): a page that changes only
    its batch size, optimizer or accounting re-accounts the traces it has."""
    try:
        key: tuple | None = (backbone, mode, resolution, group_norm)
        hash(key)
    except TypeError:  # a mode carrying a scheme that cannot be hashed: traced, not kept
        key = None
    with _analyses_lock:
        found = _analyses.get(key) if key is not None else None
        if found is not None:
            _analyses.move_to_end(key)
            return found
    try:
        prepared = prepare_model(  # analysis models stock layers: no engine conversion to trace
            backbone, mode, resolution=resolution, group_norm=group_norm, device="meta", engine=False
        )
        found = BatchAnalysis(prepared.model, input_size=prepared.data.input_size)
    except ModeNotApplicable as exc:
        found = str(exc)
    if key is None:
        return found
    with _analyses_lock:
        _analyses[key] = found
        while len(_analyses) > ANALYSES_KEPT:
            _analyses.popitem(last=False)
    return found


def clear_mode_analyses() -> None:
    """Forget the traces :func:`mode_analysis` keeps (benchmarks time a first look with it)."""
    with _analyses_lock:
        _analyses.clear()


def mode_reports(
    backbone: str,
    *,
    resolution: int | None,
    batch_size: int,
    optimizer: str = "adam",
    accounting: str = "complete",
    modes: str | Iterable[str] | None = None,
    group_norm: bool = False,
) -> dict[str, MemoryReport | str]:
    """Analyse ``backbone`` in each mode (:func:`mode_analysis`: each traced once per process, whatever the
    batch size, optimizer and accounting); a mode that does not apply maps to the reason (a string)."""
    out: dict[str, MemoryReport | str] = {}
    for mode in resolve_modes(modes):
        analysis = mode_analysis(backbone, mode, resolution=resolution, group_norm=group_norm)
        if isinstance(analysis, str):
            out[mode.name] = analysis
            continue
        report = analysis.report(batch_size, optimizer=optimizer, accounting=accounting)
        report.totals = replace(report.totals, mode=mode.name, backbone=backbone)
        out[mode.name] = report
    return out


def compare_modes(
    backbone: str,
    *,
    resolution: int | None,
    batch_size: int,
    optimizer: str = "adam",
    accounting: str = "complete",
    modes: str | Iterable[str] | None = None,
    group_norm: bool = False,
) -> pd.DataFrame:
    """One row per mode: weights, gradients + optimizer state, activations (necessary and stock PyTorch),
    transient, totals (bytes), ``ratio_to_full`` (total / total of ``full``, NaN without ``full``),
    ``applicable`` and ``reason`` (why a mode does not apply). Built on the ``meta`` device.
    ``resolution`` None means the backbone's default input size.
    """
    return table_from_reports(
        mode_reports(
            backbone,
            resolution=resolution,
            batch_size=batch_size,
            optimizer=optimizer,
            accounting=accounting,
            modes=modes,
            group_norm=group_norm,
        )
    )


def table_from_reports(reports: dict[str, MemoryReport | str]) -> pd.DataFrame:
    """The :func:`compare_modes` table from :func:`mode_reports` output."""
    records = []
    for name, report in reports.items():
        if isinstance(report, str):
            records.append({"mode": name, "applicable": False, "reason": report})
            continue
        t = report.totals
        records.append(
            {
                "mode": name,
                "applicable": True,
                "reason": "",
                "trainable_params": t.n_trainable,
                "params": t.n_params,
                **{k: getattr(t, k) for k in TABLE_COLUMNS},
            }
        )
    table = pd.DataFrame.from_records(
        records, columns=["mode", "applicable", "reason", "trainable_params", "params", *TABLE_COLUMNS]
    )
    total = table[TOTALS.total_modelled_bytes]
    full = total[(table["mode"] == "full") & table["applicable"]]
    table["ratio_to_full"] = total / float(full.iloc[0]) if len(full) else float("nan")
    return table


@dataclass(frozen=True)
class SignMaskSaving:
    """What MobileTL's sign mask saves against exact bias-only training (the same trainable parameters)
    on one backbone, from a :func:`compare_modes` table (bytes)."""

    bias_activations: int
    mobiletl_activations: int
    bias_total: int
    mobiletl_total: int
    approximated: bool  # False: no smooth activation to approximate (a ReLU-family network)

    def sentence(self, backbone: str) -> str:
        """One line for the pages: by how much MobileTL is cheaper here, and at what price."""
        if not self.approximated:
            return (
                f"MobileTL on {backbone} is TinyTL-B: its activations are ReLU-like, whose 1-bit masks are "
                "exact already (MobileTL's sign mask helps networks with smooth activations: h-swish, SiLU, "
                "GELU)."
            )
        less = 1 - self.mobiletl_activations / max(1, self.bias_activations)
        return (
            f"MobileTL on {backbone}: stored activations {format_bytes(self.mobiletl_activations)} "
            f"instead of {format_bytes(self.bias_activations)} for TinyTL-B ({less:.0%} less), training "
            f"memory {format_ratio(self.mobiletl_total, self.bias_total, 'TinyTL-B')}; its smooth "
            "activations keep 1-bit sign masks, so its gradients are approximate."
        )


def sign_mask_saving(table: pd.DataFrame) -> SignMaskSaving | None:
    """MobileTL against exact bias-only training in a :func:`compare_modes` table (complete accounting),
    or None when either mode is missing or does not apply."""
    rows = table[table["applicable"]].set_index("mode")
    if not {"bias", "mobiletl"} <= set(rows.index):
        return None
    act, total = TOTALS.activations_necessary_bytes, TOTALS.total_modelled_bytes
    bias, mobiletl = rows.loc["bias"], rows.loc["mobiletl"]
    return SignMaskSaving(
        bias_activations=int(bias[act]),
        mobiletl_activations=int(mobiletl[act]),
        bias_total=int(bias[total]),
        mobiletl_total=int(mobiletl[total]),
        approximated=int(mobiletl[act]) < int(bias[act]),
    )


@dataclass(frozen=True)
class WeightMemory:
    """A backbone's weight memory in one mode with float frozen weights and with 8-bit ones, measured.

    ``fp32_bytes`` / ``quantized_bytes``: parameters and buffers of the model before and after
    :func:`~tinytl_core.engine.quantize_frozen_weights` (each storage once); ``modelled_bytes``: the memory
    model's figure for the float model with ``frozen_weight_bits=8``; ``process_freed_bytes``: how much this
    process's resident memory fell when the float weights were dropped (Linux, after a garbage collection
    and ``malloc_trim``; None elsewhere; the allocator may keep some pages, so it can be lower);
    ``max_error``: the largest error of a dequantised weight relative to its layer's weight range."""

    backbone: str
    mode: str
    scheme: str
    fp32_bytes: int
    quantized_bytes: int
    modelled_bytes: int
    process_freed_bytes: int | None
    max_error: float

    @property
    def ratio(self) -> float:
        """How many times less the weights take at 8 bits."""
        return self.fp32_bytes / max(1, self.quantized_bytes)


def _resident_bytes() -> int | None:
    """This process's resident memory after returning freed pages to the OS (Linux), else None."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/status", encoding="ascii") as status:
            line = next(x for x in status if x.startswith("VmRSS:"))
    except (OSError, StopIteration, AttributeError):
        return None
    return int(line.split()[1]) * 1024


def frozen_weight_memory(
    backbone: str,
    mode: str = "bias",
    *,
    resolution: int | None = None,
    scheme: str = "kmeans",
    pretrained: bool = False,
) -> WeightMemory:
    """Build ``backbone`` in ``mode`` (CPU), measure its weight memory, store its frozen weights as 8-bit
    codes and measure again (see :class:`WeightMemory`)."""
    from tinytl_core.engine import model_weight_bytes, quantize_frozen_weights

    prepared = prepare_model(backbone, mode, resolution=resolution, pretrained=pretrained)
    model = prepared.model
    modelled = analyze(model, input_size=prepared.data.input_size, batch_size=1, frozen_weight_bits=8)
    fp32 = model_weight_bytes(model)
    before = _resident_bytes()
    report = quantize_frozen_weights(model, scheme)
    after = _resident_bytes()
    freed = before - after if before is not None and after is not None else None
    return WeightMemory(
        backbone,
        prepared.mode.name,
        report.scheme.value,
        fp32,
        model_weight_bytes(model),
        modelled.totals.weights_bytes,
        freed,
        report.max_error,
    )
