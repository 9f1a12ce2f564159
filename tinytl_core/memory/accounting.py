"""Turn a traced forward into the per-layer table and totals, in the *complete* or the *paper* accounting.

Complete (default): weights (fp32, or frozen conv / linear weights at ``frozen_weight_bits`` with their
codebooks, as 8-bit runs store them: :func:`param_bytes`) and buffers, gradients and
optimizer state of trainable parameters, the activations stored for backward (TinyTL's necessary bytes,
and stock PyTorch's saved bytes beside them), and the transient part of the step's peak: at its worst
layer a step holds what earlier layers stored plus that layer's working set (input, output and the pending
residual inputs of enclosing blocks; in the backward pass, gradients of the same shapes), see
:func:`step_peak`. ``transient_bytes`` = peak - stored activations. ``total_modelled_bytes`` uses the
necessary activations, ``total_stock_bytes`` the stock ones (with their own transient,
``transient_stock_bytes``).

Paper: see :mod:`tinytl_core.memory.rules`. The activation figure is the peak (stored so far + working
set), so ``transient_bytes`` is 0 and ``total_modelled_bytes = weights + peak``; gradients and optimizer
state are not counted.

The totals are a :class:`~tinytl_core.memory.report.ReportTotals`; per-layer columns of the same
quantities carry its field names (per layer, ``activations_necessary_bytes`` sums to the total's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pandas as pd

from tinytl_core.layer_kinds import LayerKind, kind_of, uses_sign_mask
from tinytl_core.memory import rules
from tinytl_core.memory.report import TOTALS, MemoryReport, ReportTotals
from tinytl_core.tracing import ParamRef, Row, Trace, optimizer_states

ACCOUNTINGS = ("complete", "paper")

PAPER_FROZEN_BITS = 8
LAYER_COLUMNS = (
    "layer",
    "call",
    "type",
    "kind",
    "rule",
    "input_shape",
    "output_shape",
    "input_bytes",
    "output_bytes",
    "param_bytes",
    "trainable_param_bytes",
    TOTALS.grads_optimizer_bytes,
    TOTALS.activations_necessary_bytes,
    "necessary_reason",
    TOTALS.activations_stock_bytes,
    "pending_residual_bytes",
    "working_bytes",
)


def check_accounting(accounting: str) -> str:
    """Validate an accounting name."""
    if accounting not in ACCOUNTINGS:
        raise ValueError(f"unknown accounting {accounting!r}; choose one of {', '.join(ACCOUNTINGS)}")
    return accounting


def param_bytes(p: ParamRef, frozen_bits: int) -> int:
    """Bytes of one parameter as the engine stores it: a frozen conv or linear weight at ``frozen_bits`` if
    fewer than its own, plus its codebook (``2**bits`` float32 centroids: 1 KB at 8 bits), as
    :func:`tinytl_core.engine.quantize_frozen_weights` stores it (k-means; the linear scheme's table is 8
    bytes per output channel instead); every other parameter (trainable, norm, bias) at its own precision."""
    if p.trainable or not p.quantizable or frozen_bits >= 8 * p.element_size:
        return p.nbytes
    table = 4 * 2**frozen_bits if frozen_bits <= 8 else 0
    return math.ceil(p.numel * frozen_bits / 8) + table


def _shape(row: Row, which: str) -> str:
    refs = row.inputs if which == "in" else row.outputs
    return ", ".join("x".join(str(s) for s in t.shape) or "scalar" for t in refs)


def _base(row: Row, states: int, frozen_bits: int, paper: bool) -> dict:
    trainable = [p for p in row.params if p.trainable]
    return {
        "layer": row.name,
        "call": row.call,
        "type": row.type,
        "kind": row.kind,
        "rule": rules.classify(row).value if row.kind in ("layer", "module") else row.kind,
        "input_shape": _shape(row, "in"),
        "output_shape": _shape(row, "out"),
        "input_bytes": row.input_bytes,
        "output_bytes": row.output_bytes,
        "param_bytes": sum(
            (4 * p.numel if p.trainable else math.ceil(p.numel * frozen_bits / 8))
            if paper
            else param_bytes(p, frozen_bits)
            for p in row.params
        ),
        "trainable_param_bytes": sum(p.nbytes for p in trainable),
        TOTALS.grads_optimizer_bytes: 0 if paper else sum(p.nbytes for p in trainable) * (1 + states),
        TOTALS.activations_stock_bytes: row.saved_bytes,
        "pending_residual_bytes": row.pending_bytes,
        "working_bytes": row.input_bytes + row.output_bytes + row.pending_bytes,
    }


def _common_totals(trace: Trace, states: int) -> ReportTotals:
    trainable = [p for p in trace.params if p.trainable]
    return ReportTotals(
        n_params=sum(p.numel for p in trace.params),
        n_trainable=sum(p.numel for p in trainable),
        grads_optimizer_bytes=sum(p.nbytes for p in trainable) * (1 + states),
        activations_stock_bytes=trace.saved_bytes,
        n_rows=len(trace.rows),
    )


@dataclass(frozen=True)
class NecessaryRows:
    """TinyTL's necessary activations of a trace, row by row (rule verdicts, each storage counted once)."""

    nbytes: list[int]  # bytes each row stores
    reasons: list[str]  # why (the rule's reason and de-duplication notes)
    keys: list[set[int]]  # storages each row keeps in full (for the peak)
    packing: list[int]  # bytes a row allocates to compute its bit-packed mask (for the peak)


def necessary_rows(trace: Trace) -> NecessaryRows:
    """Apply :func:`tinytl_core.memory.rules.necessary` to every row, counting a stored tensor once."""
    verdicts = [rules.necessary(r) for r in trace.rows]
    full_keys = {n.key for v in verdicts for n in v.needs if not n.mask and n.key is not None}
    counted: set = set()
    out = NecessaryRows([], [], [], [])
    for verdict in verdicts:
        nbytes, notes, keys, temp = 0, [], set(), 0
        for need in verdict.needs:
            if need.mask and need.key in full_keys:
                notes.append("mask free: the tensor is stored in full")
            elif not need.mask and need.key is not None and need.key in counted:
                notes.append("already stored by an earlier layer")
            else:
                nbytes += need.nbytes
                if need.key is not None and not need.mask:
                    counted.add(need.key)
                    keys.add(need.key[0])
                if need.mask:  # a byte per element, then packed 8 to a byte
                    temp += 8 * need.nbytes
        out.nbytes.append(nbytes)
        out.reasons.append(verdict.reason + (f" ({'; '.join(dict.fromkeys(notes))})" if notes else ""))
        out.keys.append(keys)
        out.packing.append(temp)
    return out


@dataclass(frozen=True)
class PeakTerms:
    """The candidates of a step's peak activation memory: the peak is the largest of them. Every candidate
    is a sum of tensor sizes, so a planner can follow each one across batch sizes
    (:mod:`tinytl_core.planner`)."""

    engine: list[int]  # with the necessary activations and the engine's working sets
    stock: list[int]  # with what stock PyTorch stores and its working sets

    @property
    def engine_peak(self) -> int:
        return max(self.engine, default=0)

    @property
    def stock_peak(self) -> int:
        return max(self.stock, default=0)


def peak_terms(trace: Trace, necessary: NecessaryRows) -> PeakTerms:
    """Forward (:func:`step_peak_terms`) and backward (:func:`backward_peak_terms`) candidates of the
    step's peak, for the engine and for stock PyTorch."""
    all_necessary = set().union(*necessary.keys) if necessary.keys else set()
    engine = step_peak_terms(
        trace.rows,
        necessary.nbytes,
        necessary.keys,
        extra=necessary.packing,
        overwritten=[overwritten_inputs(r, trace, all_necessary) for r in trace.rows],
    )
    stock_stored = [r.saved_bytes for r in trace.rows]
    stock = step_peak_terms(
        trace.rows,
        stock_stored,
        [{s.key for s in r.saved} for r in trace.rows],
        extra=[stock_temporaries(r) for r in trace.rows],
    )
    # The backward pass: its own peak where residual gradients wait beside a block's branch.
    engine += backward_peak_terms(trace.rows, necessary.nbytes, engine=True)
    stock += backward_peak_terms(trace.rows, stock_stored, engine=False)
    return PeakTerms(engine, stock)


def weights_bytes(trace: Trace, frozen_weight_bits: int) -> int:
    """Weights (frozen ones at ``frozen_weight_bits``, see :func:`param_bytes`) and buffers of a trace."""
    return sum(param_bytes(p, frozen_weight_bits) for p in trace.params) + trace.buffer_bytes


def complete(trace: Trace, *, optimizer: str, frozen_weight_bits: int) -> tuple[pd.DataFrame, ReportTotals]:
    """The complete accounting of a trace: per-layer table and totals."""
    states = optimizer_states(optimizer)
    nec = necessary_rows(trace)
    records = []
    for row, nbytes, reason in zip(trace.rows, nec.nbytes, nec.reasons):
        rec = _base(row, states, frozen_weight_bits, paper=False)
        rec[TOTALS.activations_necessary_bytes] = nbytes
        rec["necessary_reason"] = reason
        records.append(rec)
    layers = pd.DataFrame.from_records(records, columns=list(LAYER_COLUMNS))
    totals = _common_totals(trace, states)
    weights = weights_bytes(trace, frozen_weight_bits)
    necessary = sum(nec.nbytes)
    stock = totals.activations_stock_bytes
    terms = peak_terms(trace, nec)
    peak, peak_stock = terms.engine_peak, terms.stock_peak
    fixed = weights + totals.grads_optimizer_bytes
    totals = replace(
        totals,
        weights_bytes=weights,
        activations_necessary_bytes=necessary,
        transient_bytes=peak - necessary,
        transient_stock_bytes=peak_stock - stock,
        total_modelled_bytes=fixed + peak,
        total_stock_bytes=fixed + peak_stock,
    )
    return layers, totals


def step_peak_terms(
    rows: list[Row],
    stored: list[int],
    stored_keys: list[set[int]],
    extra: list[int] | None = None,
    overwritten: list[set[int]] | None = None,
) -> list[int]:
    """The candidates of :func:`step_peak` (one per row, then everything stored).

    Peak activation memory of a training step: the largest, over rows in execution order, of what is
    stored for backward before the row plus the row's live tensors not among them (input, output, pending
    residual inputs, less the ``overwritten`` inputs a layer writes its output over) plus the row's
    ``extra`` temporaries, and at least everything stored. The backward pass has the same peak: at each
    layer it holds what earlier layers stored plus gradients shaped like the layer's input and output."""
    extra = extra or [0] * len(rows)
    overwritten = overwritten or [set()] * len(rows)
    so_far, keys, gone, terms = 0, set(), set(), []
    for row, nbytes, row_keys, temp, written_over in zip(rows, stored, stored_keys, extra, overwritten):
        gone |= written_over  # from this layer on, its output lives in that memory
        live = {t.key: t.nbytes for t in row.live if t.key not in keys and t.key not in gone}
        terms.append(so_far + sum(live.values()) + temp)
        so_far += nbytes
        keys |= row_keys
    terms.append(so_far)
    return terms


def step_peak(
    rows: list[Row],
    stored: list[int],
    stored_keys: list[set[int]],
    extra: list[int] | None = None,
    overwritten: list[set[int]] | None = None,
) -> int:
    """Peak activation memory of a training step's forward: the largest of :func:`step_peak_terms`."""
    return max(step_peak_terms(rows, stored, stored_keys, extra, overwritten))


def backward_peak_terms(rows: list[Row], stored: list[int], *, engine: bool) -> list[int]:
    """The candidates of :func:`backward_peak` (one per row a gradient flows through).

    Peak activation memory of the backward pass, rows in reverse: what is still stored (the rows not
    yet processed, this one included), the gradient of the row's output and of its input, and the gradients
    of pending residual inputs waiting for the branch to finish. Only rows a gradient flows through count.
    ``engine``: frozen-statistics norms and mask activations scale the output gradient in place (their
    input gradient takes its memory), as the training engine does."""
    total = sum(stored)
    terms = []
    for row, nbytes in zip(reversed(rows), reversed(stored)):
        if row.needs_input_grad and row.kind in ("layer", "module"):
            grad_out, grad_in = row.output_bytes, row.input_bytes
            kind = kind_of(row.module)
            in_place = engine and (
                kind in (LayerKind.RELU, LayerKind.STEP)
                or (kind is LayerKind.NORM and not row.batch_statistics)
                or uses_sign_mask(row.module)  # MobileTL's sign mask: masked like a ReLU
            )
            working = max(grad_out, grad_in) if in_place else grad_out + grad_in
            if engine and kind is LayerKind.MAXPOOL:  # int64 indices rebuilt from the stored argmax
                working += 2 * grad_out
            terms.append(total + working + row.pending_bytes)
        total -= nbytes
    return terms


def backward_peak(rows: list[Row], stored: list[int], *, engine: bool) -> int:
    """Peak activation memory of the backward pass: the largest of :func:`backward_peak_terms` (0 without
    any)."""
    return max(backward_peak_terms(rows, stored, engine=engine), default=0)


def stock_temporaries(row: Row) -> int:
    """Bytes a stock layer allocates besides its output while it runs, on the CPU: oneDNN convolutions on
    (default) contiguous tensors reorder the larger of their input and output into a blocked copy. (The
    training engine runs channels-last, where they need no copy.)"""
    if kind_of(row.module) is LayerKind.LINEAR and row.kind == "layer" and row.outputs and row.inputs:
        if len(row.outputs[0].shape) == 4:
            return max(row.inputs[0].nbytes, row.outputs[0].nbytes)
    return 0


def overwritten_inputs(row: Row, trace: Trace, stored_keys: set[int]) -> set[int]:
    """Inputs the training engine overwrites with a layer's output: a frozen-statistics norm whose scale
    does not train, reading a tensor no one reads after it and no one stores (see
    :func:`tinytl_core.engine.convert`)."""
    if kind_of(row.module) is not LayerKind.NORM or row.batch_statistics or not row.inputs:
        return set()
    weight = row.param("weight")
    x = row.inputs[0]
    if (weight is not None and weight.trainable) or x.key in stored_keys:
        return set()
    return {x.key} if trace.last_use.get(x.key, -1) <= row.end else set()


def paper(trace: Trace) -> tuple[pd.DataFrame, ReportTotals]:
    """The paper's accounting of a trace: per-layer table (stored bytes per rule) and totals (peak), see
    rules P1-P3 in :mod:`tinytl_core.memory.rules`."""
    records = []
    stored_so_far = peak = stored_total = 0
    # P1: one switch, as the profiler's require_backward: does a gradient flow into the backbone at all?
    backward = any(r.needs_input_grad for r in trace.rows if r.kind in ("layer", "module"))
    for row in trace.rows:
        cost = rules.paper(row, backward=backward)
        rec = _base(row, 0, PAPER_FROZEN_BITS, paper=True)
        rec[TOTALS.activations_necessary_bytes] = cost.stored
        rec["necessary_reason"] = cost.reason
        rec["working_bytes"] = cost.working + row.residual_bytes if cost.counted else 0
        if cost.counted:
            peak = max(peak, cost.working + stored_so_far + row.residual_bytes)
            stored_so_far += cost.stored
        stored_total += cost.stored
        records.append(rec)
    layers = pd.DataFrame.from_records(records, columns=list(LAYER_COLUMNS))
    totals = _common_totals(trace, 0)
    weights = sum(
        4 * p.numel if p.trainable else math.ceil(p.numel * PAPER_FROZEN_BITS / 8) for p in trace.params
    )
    totals = replace(
        totals,
        grads_optimizer_bytes=0,
        weights_bytes=weights,
        activations_necessary_bytes=peak,
        activations_stored_bytes=stored_total,
        transient_bytes=0,
        total_modelled_bytes=weights + peak,
        total_stock_bytes=weights + totals.activations_stock_bytes,
    )
    return layers, totals


def report_from_trace(
    trace: Trace,
    *,
    input_size: tuple[int, int, int],
    batch_size: int,
    optimizer: str,
    accounting: str,
    frozen_weight_bits: int,
) -> MemoryReport:
    """Account a :func:`~tinytl_core.tracing.trace_model` trace (see :func:`tinytl_core.memory.analyze`)."""
    if accounting == "paper":
        layers, totals = paper(trace)
    else:
        layers, totals = complete(trace, optimizer=optimizer, frozen_weight_bits=frozen_weight_bits)
    totals = replace(
        totals,
        accounting=accounting,
        input_size=tuple(input_size),
        batch_size=batch_size,
        optimizer=optimizer.lower(),
        frozen_weight_bits=PAPER_FROZEN_BITS if accounting == "paper" else frozen_weight_bits,
        output_shape=trace.output_shape,
    )
    return MemoryReport(layers, totals)
