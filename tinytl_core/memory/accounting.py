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
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from tinytl_core.engine.convert import traced_flags
from tinytl_core.engine.layers import fused_activation
from tinytl_core.engine.partial import FROZEN_ROWS, TRAINED_ROWS
from tinytl_core.layer_kinds import LayerKind, activation_of, kind_of, uses_sign_mask
from tinytl_core.memory import rules
from tinytl_core.memory.report import TOTALS, MemoryReport, ReportTotals
from tinytl_core.norms import WSConv2d
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
    mask_free: list[bool]  # the row's mask is read off a tensor another layer stores in full


def necessary_rows(trace: Trace) -> NecessaryRows:
    """Apply :func:`tinytl_core.memory.rules.necessary` to every row, counting a stored tensor once."""
    verdicts = [rules.necessary(r) for r in trace.rows]
    full_keys = {n.key for v in verdicts for n in v.needs if not n.mask and n.key is not None}
    counted: set = set()
    out = NecessaryRows([], [], [], [], [])
    for verdict in verdicts:
        nbytes, notes, keys, temp, free = 0, [], set(), 0, False
        for need in verdict.needs:
            if need.mask and need.key in full_keys:
                notes.append("mask free: the tensor is stored in full")
                free = True
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
        out.mask_free.append(free)
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
        extra=[temp + forward_weight_temporaries(r) for temp, r in zip(necessary.packing, trace.rows)],
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
    engine += backward_peak_terms(
        trace.rows, necessary.nbytes, engine=True, trace=trace, mask_free=necessary.mask_free
    )
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


def backward_peak_terms(
    rows: list[Row],
    stored: list[int],
    *,
    engine: bool,
    trace: Trace | None = None,
    mask_free: list[bool] | None = None,
) -> list[int]:
    """The candidates of :func:`backward_peak` (one per row a gradient flows through).

    Peak activation memory of the backward pass, rows in reverse: what is still stored (the rows not
    yet processed, this one included), the row's working set (:func:`backward_working_bytes`), and the
    gradients of pending residual inputs waiting for the branch to finish. Only rows a gradient flows
    through count. ``engine``: the training engine's kernels; ``trace`` (the rows' trace) tells which of
    them may work on their output gradient in place, ``mask_free`` (one flag per row) which masks are read
    off an output stored in full (:attr:`NecessaryRows.mask_free`)."""
    own = owned_gradients(trace) if engine and trace is not None else set()
    free = list(mask_free) if mask_free is not None else [False] * len(rows)
    total = sum(stored)
    terms = []
    for row, nbytes, from_output in zip(reversed(rows), reversed(stored), reversed(free)):
        if row.needs_input_grad and row.kind in ("layer", "module"):
            working = backward_working_bytes(
                row, engine=engine, own_grad=id(row.module) in own, mask_free=from_output
            )
            terms.append(total + working + row.pending_bytes)
        total -= nbytes
    return terms


def owned_gradients(trace: Trace) -> set[int]:
    """Modules (by ``id``) whose output gradient is theirs alone on the engine, so their backward may
    overwrite it (:func:`tinytl_core.engine.convert.traced_flags`: the same test the engine makes)."""
    return {key for key, flags in traced_flags(trace).items() if flags["own_grad"]}


def backward_working_bytes(
    row: Row,
    *,
    engine: bool,
    channels_last: bool | None = None,
    own_grad: bool = False,
    mask_free: bool = False,
) -> int:
    """Bytes one layer's backward holds besides what is stored and the pending residual gradients: the
    gradients of its output and of its input, and, on the training engine (``engine``), what its kernel
    allocates besides them. ``tests/test_engine_working_set.py`` holds every engine kernel to this count.

    - Mask activations and frozen-statistics norms whose output gradient is their own (``own_grad``, see
      :func:`owned_gradients`) work on it in place: one buffer, plus a mask's bytes. Otherwise the input
      gradient is a new buffer, the mask unpacked into it. Unpacking reads an int32 copy of the packed
      bytes (half a byte per element); a mask read off the stored output (``mask_free``) runs the stock
      kernel instead. LeakyReLU is never in place (its kernel reads the mask beside the gradient).
    - A norm fused with its activation recomputes its output into the input gradient's buffer.
    - BatchNorm with batch statistics (stock PyTorch's CPU kernel) holds an input-sized temporary.
    - Max pooling rebuilds one int64 index per output from the stored arg-max; dropout unpacks its mask.
    - Convolutions (:func:`conv_backward_temporaries`): weight-sized copies, and on contiguous tensors
      (``channels_last`` False; default: the engine's channels-last layout, stock's contiguous one) the
      CPU's blocked reorders of activation-sized ones.
    """
    grad_out, grad_in = row.output_bytes, row.input_bytes
    if not engine:
        return grad_out + grad_in
    kind = kind_of(row.module)
    numel = row.outputs[0].numel if row.outputs else 0
    working = grad_out + grad_in
    if kind in (LayerKind.RELU, LayerKind.STEP) or uses_sign_mask(row.module):
        activation = activation_of(row.module)
        leaky = activation is not None and activation.mask is not None and activation.mask.off_is_param
        if mask_free and not uses_sign_mask(row.module):
            return working
        index = numel // 2  # the packed bytes as int32 indices into the unpacking table
        if own_grad and not leaky:
            return max(grad_out, grad_in) + numel + index  # the mask unpacked to bytes
        return working + index
    if kind is LayerKind.NORM and not row.batch_statistics:
        if own_grad and fused_activation(row.module) is None:
            return max(grad_out, grad_in)
        return working
    if kind is LayerKind.NORM and isinstance(row.module, _BatchNorm):  # batch statistics: stock CPU kernel
        return working + grad_in  # holds an input-sized temporary beside the input gradient
    if kind is LayerKind.MAXPOOL:
        return working + 8 * numel
    if kind is LayerKind.DROPOUT and row.training and getattr(row.module, "p", 0.0):
        return working + numel // 2
    if kind is LayerKind.LINEAR:
        layout = True if channels_last is None else channels_last  # the engine runs channels-last
        return working + conv_backward_temporaries(row, channels_last=layout)
    return working


_WEIGHT_TENSORS = ("weight", TRAINED_ROWS, FROZEN_ROWS, "weight_codes")
"""Where a layer keeps its weight: a parameter, a partial weight's two slices, or 8-bit codes."""


def _trains_weight(row: Row) -> bool:
    weight = row.param("weight") or row.param(TRAINED_ROWS)
    return weight is not None and weight.trainable


def _float_weight_bytes(row: Row) -> int:
    """Bytes of the layer's whole weight as floats of its input's precision."""
    module, size = row.module, row.inputs[0].nbytes // max(1, row.inputs[0].numel)
    tensors = (module._parameters.get(n, module._buffers.get(n)) for n in _WEIGHT_TENSORS)
    return size * sum(t.numel() for t in tensors if isinstance(t, torch.Tensor))


def forward_weight_temporaries(row: Row) -> int:
    """Bytes a layer's forward allocates for its weight on the training engine: a partial weight (sparse
    update, rule 2) concatenates its trained and frozen rows into one float weight, alive while the layer
    runs; 0 for every other layer."""
    module = row.module
    if row.kind != "layer" or not row.inputs or TRAINED_ROWS not in getattr(module, "_parameters", {}):
        return 0
    return _float_weight_bytes(row)


def _padded_input_bytes(row: Row) -> int:
    """Bytes of a convolution's input after the padding its kernel cannot take itself (reflect, replicate
    or circular modes, TensorFlow's 'SAME'), which is then a tensor of its own with its own gradient;
    0 when the kernel pads."""
    module, x = row.module, row.inputs[0]
    same = type(module).__name__ == "Conv2dSame" or getattr(module, "padding", None) == "same"
    if not same and getattr(module, "padding_mode", "zeros") == "zeros":
        return 0
    spatial = []
    for i, size in enumerate(x.shape[2:]):
        if same:  # padded just enough for the output: (out - 1) * stride + dilated kernel
            out = row.outputs[0].shape[2 + i]
            span = (out - 1) * module.stride[i] + module.dilation[i] * (module.kernel_size[i] - 1) + 1
            spatial.append(max(size, span))
        else:
            spatial.append(size + 2 * module.padding[i])
    return x.nbytes // max(1, math.prod(x.shape[2:])) * math.prod(spatial)


def conv_backward_temporaries(row: Row, *, channels_last: bool) -> int:
    """What a convolution or linear layer's backward allocates on the CPU besides its input and output
    gradients and its weight's gradient, as the engine runs it (a trainable whole weight: stock PyTorch):

    - a frozen 1x1 convolution (stride 1, no padding, one group) or linear layer: nothing (one product);
    - a convolution's kernel (oneDNN) takes the weight in its blocked layout: one weight-sized copy, two
      when the weight trains (the weight gradient comes back the same way);
    - on contiguous tensors (not ``channels_last``) it reorders activations into its blocked layout too:
      the larger of output and input gradient for the input gradient (twice the input gradient when
      strided), both for the weight gradient; channels-last, a strided one copies its output gradient;
    - padding the kernel cannot take: the padded input's gradient (:func:`_padded_input_bytes`);
    - a weight as 8-bit codes is dequantised (its float weight and the codes as int32 indices); a partial
      weight concatenated from its slices and copied to the layer's layout, and the trained rows' slice of
      the output gradient (and, for grouped convolutions, of the input) copied for their gradient;
    - a trainable weight-standardised weight is standardised again, with its gradient: five weight-sized
      tensors.
    """
    module = row.module
    if not row.inputs or not row.outputs:
        return 0
    weight = _float_weight_bytes(row)
    codes = "weight_codes" in module._buffers
    partial = TRAINED_ROWS in module._parameters
    trains = _trains_weight(row)
    rows_share = 1.0
    if partial:
        trained = module._parameters[TRAINED_ROWS]
        rows_share = trained.shape[0] / (trained.shape[0] + module._parameters[FROZEN_ROWS].shape[0])
    extra = 2 * weight if codes else 0
    conv = len(row.outputs[0].shape) == 4 and hasattr(module, "kernel_size")
    if not conv:  # linear: a product with the (dequantised or concatenated) weight
        if partial:
            extra += weight + (math.ceil(row.output_bytes * rows_share) if trains else 0)
        return extra
    padded = _padded_input_bytes(row)
    extra += padded
    if trains and not partial:  # stock (or the standardised conv's) convolution backward: both at once
        extra += 2 * weight + (0 if channels_last else row.output_bytes + row.input_bytes)
        return extra + (5 * weight if isinstance(module, WSConv2d) else 0)
    pointwise = (
        tuple(module.kernel_size) == (1, 1)
        and tuple(module.stride) == (1, 1)
        and tuple(module.dilation) == (1, 1)
        and module.groups == 1
        and not padded
        and tuple(module.padding) == (0, 0)
    )
    if not pointwise:  # the input gradient: a transposed convolution
        grad_x, strided = padded or row.input_bytes, any(s > 1 for s in module.stride)
        if channels_last:
            extra += weight + (row.output_bytes if strided else 0)
        else:
            extra += weight + (2 * grad_x if strided else max(row.output_bytes, grad_x))
    if partial:
        extra += 2 * weight  # the slices concatenated, then in the layer's layout
    if partial and trains:  # the trained rows' gradient, from slices of the output gradient and input
        share_in = rows_share if module.groups > 1 else 1.0
        extra += math.ceil(row.output_bytes * rows_share)
        extra += math.ceil(row.input_bytes * share_in) if module.groups > 1 or not channels_last else 0
    return extra


def backward_peak(
    rows: list[Row],
    stored: list[int],
    *,
    engine: bool,
    trace: Trace | None = None,
    mask_free: list[bool] | None = None,
) -> int:
    """Peak activation memory of the backward pass: the largest of :func:`backward_peak_terms` (0 without
    any)."""
    return max(backward_peak_terms(rows, stored, engine=engine, trace=trace, mask_free=mask_free), default=0)


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
