"""Modelled training memory of one model, from shapes traced on the ``meta`` device."""

from __future__ import annotations

from torch import nn

from tinytl_core.memory import accounting as acc
from tinytl_core.memory.report import MemoryReport
from tinytl_core.memory.trace import Trace, check_input, trace_model


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

    Args:
        model: any ``nn.Module`` taking a ``(batch, C, H, W)`` tensor.
        input_size: ``(C, H, W)``.
        batch_size: samples per step.
        optimizer: ``none`` (plain SGD), ``sgd`` (with momentum), ``adam`` or ``adamw``.
        accounting: ``complete`` or ``paper`` (see :mod:`tinytl_core.memory.accounting`).
        frozen_weight_bits: bits per frozen weight in the complete accounting (8 = quantised as in the
            paper; the paper accounting always uses 8).

    Returns:
        a :class:`MemoryReport` (``.layers`` DataFrame, ``.totals`` dict, ``.summary()``).
    """
    input_size, batch_size = check_input(input_size, batch_size)
    acc.optimizer_states(optimizer)
    acc.check_accounting(accounting)
    if not isinstance(frozen_weight_bits, int) or not 1 <= frozen_weight_bits <= 64:
        raise ValueError(f"frozen_weight_bits must be an integer in 1..64, got {frozen_weight_bits!r}")
    return report_from_trace(
        trace_model(model, input_size, batch_size), input_size=input_size, batch_size=batch_size,
        optimizer=optimizer, accounting=accounting, frozen_weight_bits=frozen_weight_bits,
    )


def report_from_trace(
    trace: Trace,
    *,
    input_size: tuple[int, int, int],
    batch_size: int,
    optimizer: str,
    accounting: str,
    frozen_weight_bits: int,
) -> MemoryReport:
    """Account a :func:`~tinytl_core.memory.trace.trace_model` trace (see :func:`analyze`)."""
    if accounting == "paper":
        layers, totals = acc.paper(trace)
    else:
        layers, totals = acc.complete(trace, optimizer=optimizer, frozen_weight_bits=frozen_weight_bits)
    totals.update(
        accounting=accounting,
        input_size=tuple(input_size),
        batch_size=batch_size,
        optimizer=optimizer.lower(),
        frozen_weight_bits=acc.PAPER_FROZEN_BITS if accounting == "paper" else frozen_weight_bits,
        output_shape=trace.output_shape,
    )
    return MemoryReport(layers, totals)


def training_memory_figures(
    model: nn.Module,
    *,
    input_size: tuple[int, int, int],
    batch_size: int,
    optimizer: str,
    measure: bool = True,
) -> dict[str, float | None]:
    """The memory figures a training run records: modelled (complete accounting) and measured.

    Keys: ``weights_bytes``, ``grads_optimizer_bytes``, ``activations_necessary_bytes``,
    ``activations_stock_bytes``, ``total_modelled_bytes`` (weights + grads/optimizer + necessary
    activations + transient), ``activations_measured_bytes`` (bytes autograd really saved in one step) and
    ``total_measured_bytes`` (on CUDA the peak allocated memory of the step; elsewhere the measured saved
    bytes plus the modelled weights, gradients/optimizer state and stock transient). The measured ones are
    None when ``measure`` is False. Measuring runs one real step (weights unchanged, see
    :func:`~tinytl_core.memory.measure.measure`).
    """
    from tinytl_core.memory.measure import measure as measure_step

    report = analyze(model, input_size=input_size, batch_size=batch_size, optimizer=optimizer)
    t = report.totals
    figures: dict[str, float | None] = {
        "weights_bytes": float(t["weights_bytes"]),
        "grads_optimizer_bytes": float(t["grads_optimizer_bytes"]),
        "activations_necessary_bytes": float(t["activations_necessary_bytes"]),
        "activations_stock_bytes": float(t["activations_stock_bytes"]),
        "total_modelled_bytes": float(t["total_bytes"]),
        "activations_measured_bytes": None,
        "total_measured_bytes": None,
    }
    if measure:
        m = measure_step(model, input_size=input_size, batch_size=batch_size, optimizer=optimizer,
                         per_layer=False, modelled=report)
        figures["activations_measured_bytes"] = float(m.saved_bytes)
        figures["total_measured_bytes"] = float(
            m.peak_cuda_bytes if m.peak_cuda_bytes is not None
            else t["weights_bytes"] + t["grads_optimizer_bytes"] + m.saved_bytes + t["transient_stock_bytes"]
        )
    return figures
