"""Modelled training memory of one model, from shapes traced on the ``meta`` device."""

from __future__ import annotations

import threading

from torch import nn

from tinytl_core.engine import is_converted, stock_layers
from tinytl_core.memory import accounting as acc
from tinytl_core.memory.report import MemoryReport
from tinytl_core.memory.stock_vs_engine import measure_stock_and_engine
from tinytl_core.quantities import RunMemory
from tinytl_core.tracing import Trace, check_input, optimizer_states, trace_model
from tinytl_core.tracing.scaling import ScalableTrace, prime_batch


def analyze(
    model: nn.Module,
    *,
    input_size: tuple[int, int, int],
    batch_size: int,
    optimizer: str = "adam",
    accounting: str = "complete",
    frozen_weight_bits: int = 32,
) -> MemoryReport:
    """Model where the training memory of ``model`` goes, layer by layer, without allocating activations.

    The model's ``requires_grad`` flags and normalisation modes (as set by a fine-tuning mode) decide what
    trains. It is traced in training mode on the ``meta`` device (a model already on ``meta`` costs
    nothing; a real one is traced with meta stand-ins for its weights: same numbers), then accounted.
    A model converted to the training engine is traced with its stock layers (restored afterwards), so
    the stock column is always stock PyTorch's; what the engine saves is measured
    (:func:`~tinytl_core.memory.stock_vs_engine.measure_stock_and_engine`).

    Args:
        model: any ``nn.Module`` taking a ``(batch, C, H, W)`` tensor.
        input_size: ``(C, H, W)``.
        batch_size: samples per step.
        optimizer: ``none`` (plain SGD), ``sgd`` (with momentum), ``adam`` or ``adamw``.
        accounting: ``complete`` or ``paper`` (see :mod:`tinytl_core.memory.accounting`).
        frozen_weight_bits: bits per frozen weight in the complete accounting (8 = quantised as in the
            paper; the paper accounting always uses 8).

    Returns:
        a :class:`MemoryReport` (``.layers`` DataFrame, ``.totals``
        :class:`~tinytl_core.memory.ReportTotals`, ``.summary()``).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"analyze expects a torch.nn.Module, got {type(model).__name__}")
    input_size, batch_size = _checked(input_size, batch_size, optimizer, accounting, frozen_weight_bits)
    with stock_layers(model):
        trace = trace_model(model, input_size, batch_size)
    return acc.report_from_trace(
        trace,
        input_size=input_size,
        batch_size=batch_size,
        optimizer=optimizer,
        accounting=accounting,
        frozen_weight_bits=frozen_weight_bits,
    )


def _checked(
    input_size: tuple[int, int, int],
    batch_size: int,
    optimizer: str,
    accounting: str,
    frozen_weight_bits: int,
) -> tuple[tuple[int, int, int], int]:
    input_size, batch_size = check_input(input_size, batch_size)
    optimizer_states(optimizer)
    acc.check_accounting(accounting)
    if not isinstance(frozen_weight_bits, int) or not 1 <= frozen_weight_bits <= 64:
        raise ValueError(f"frozen_weight_bits must be an integer in 1..64, got {frozen_weight_bits!r}")
    return input_size, batch_size


TRACES_KEPT = 4
"""Traces :class:`BatchAnalysis` keeps at the batch sizes they were taken at (the first, batch 1, ...)."""


class BatchAnalysis:
    """:func:`analyze` of one model at any batch size, optimizer and accounting, from one trace.

    The model is traced once on the ``meta`` device at a prime batch size and every batch size is that
    trace rewritten (:mod:`tinytl_core.tracing.scaling`: the same rows, storages and sizes as a trace at
    that batch), so a page that changes its batch size, optimizer or accounting re-accounts what it traced
    (rewriting costs a tenth of a trace). Batch size 1 (where BatchNorm refuses a single value per
    channel) and a model whose sizes do not scale with the batch are traced at each new batch size, as
    :func:`analyze` does; the figures are the same either way. The model must not change afterwards (its
    ``requires_grad`` flags included).
    """

    def __init__(self, model: nn.Module, *, input_size: tuple[int, int, int]) -> None:
        self.model = model
        self.input_size, _ = check_input(input_size, 1)
        self._lock = threading.Lock()  # a trace hooks the model's modules: one at a time
        self._traces: dict[int, Trace] = {}  # batch size -> its own trace (batch 1; a model not scalable)
        self._scalable: ScalableTrace | None | bool = None  # False: tried, the sizes do not scale

    def trace(self, batch_size: int) -> Trace:
        """The model's trace at ``batch_size``: rewritten from the prime batch's, or its own (batch 1; a
        model whose sizes do not scale)."""
        found = self._traces.get(batch_size)
        if found is not None:
            return found
        with self._lock:
            if batch_size > 1 and self._scalable is None:
                prime = prime_batch(self.model, *self.input_size)
                try:
                    with stock_layers(self.model):
                        trace = trace_model(self.model, self.input_size, prime)
                    self._scalable = ScalableTrace(trace, (prime,), batch_prime=prime)
                except (ValueError, RuntimeError):  # not scalable (or refused): trace each batch size
                    self._scalable = False
            if batch_size > 1 and self._scalable:
                return self._scalable.at((batch_size,))
            with stock_layers(self.model):
                trace = trace_model(self.model, self.input_size, batch_size)
            if len(self._traces) < TRACES_KEPT:
                self._traces.setdefault(batch_size, trace)
            return trace

    def report(
        self,
        batch_size: int,
        *,
        optimizer: str = "adam",
        accounting: str = "complete",
        frozen_weight_bits: int = 32,
    ) -> MemoryReport:
        """The report :func:`analyze` gives at ``batch_size`` (same arguments, same figures)."""
        settings = dict(optimizer=optimizer, accounting=accounting, frozen_weight_bits=frozen_weight_bits)
        input_size, batch_size = _checked(self.input_size, batch_size, **settings)
        trace = self.trace(batch_size)
        return acc.report_from_trace(trace, input_size=input_size, batch_size=batch_size, **settings)


def training_memory_figures(
    model: nn.Module,
    *,
    input_size: tuple[int, int, int],
    batch_size: int,
    optimizer: str,
    measure: bool = True,
    report: MemoryReport | None = None,
) -> RunMemory:
    """The memory figures a training run records (:class:`~tinytl_core.quantities.RunMemory`): modelled
    (complete accounting) and measured.

    Modelled: the report's weights, gradients + optimizer state, necessary and stock activations and
    ``total_modelled_bytes`` (weights + grads/optimizer + necessary activations + transient).

    Measured (None when ``measure`` is False), in one real step each, on this very model
    (:func:`~tinytl_core.memory.stock_vs_engine.measure_stock_and_engine`; weights unchanged):
    ``activations_measured_stock_bytes`` with stock PyTorch layers, ``activations_measured_engine_bytes``
    with the training engine's (None if the engine cannot run the model), and the figures of the model *as
    it trains* -- converted to the engine (:func:`tinytl_core.engine.is_converted`) or stock:
    ``activations_measured_bytes`` and ``total_measured_bytes``, the step's measured peak (on CUDA
    ``torch.cuda.max_memory_allocated``; elsewhere the peak of PyTorch's profiler memory timeline, see
    :mod:`tinytl_core.memory.timeline`). The second step costs
    less than the first (the engine stores less) and is a small part of any run, so both are always taken:
    a run records what it used and what the other layers would have stored.
    """
    if report is None:  # (the caller's own analysis of this very configuration, when it made one)
        report = analyze(model, input_size=input_size, batch_size=batch_size, optimizer=optimizer)
    t = report.totals
    figures = RunMemory(
        weights_bytes=float(t.weights_bytes),
        grads_optimizer_bytes=float(t.grads_optimizer_bytes),
        activations_necessary_bytes=float(t.activations_necessary_bytes),
        activations_stock_bytes=float(t.activations_stock_bytes),
        total_modelled_bytes=float(t.total_modelled_bytes),
    )
    if measure:
        converted = is_converted(model)
        both = measure_stock_and_engine(
            model,
            input_size=input_size,
            batch_size=batch_size,
            optimizer=optimizer,
            per_layer=False,
            modelled=report,
            profile=(not converted, converted),  # the peak recorded is that of the layers it trains with
        )
        if converted and both.engine is None:
            raise RuntimeError(f"the engine could not measure this model: {both.engine_error}")
        trained = both.engine if converted else both.stock
        figures.activations_measured_stock_bytes = float(both.stock_bytes)
        figures.activations_measured_engine_bytes = (
            None if both.engine_bytes is None else float(both.engine_bytes)
        )
        figures.activations_measured_bytes = float(trained.saved_bytes)
        figures.total_measured_bytes = None if trained.step_peak is None else float(trained.step_peak)
    return figures
