"""Measured training memory: one real forward + backward + optimizer step, counting what autograd saves.

Saved tensors are counted with :class:`~tinytl_core.tracing.SavedTensorCounter` (each storage once,
parameters and buffers excluded, any dtype at its real size), attributed to the layer running, so the same
function measures stock PyTorch and a model whose layers were replaced by custom autograd functions (the
training engine). The step's peak -- what a user checks with the OS or ``torch.cuda.max_memory_allocated``
-- is measured too, with PyTorch's profiler (:mod:`tinytl_core.memory.timeline`). Before allocating, the
modelled memory of the step is compared with the memory available; :class:`MemoryLimitError` refuses a
step that would not fit.

The step leaves the model as it was: the optimizer runs with learning rate 0 (its state is still
allocated, so it shows in the CUDA peak), and training flags, buffers (BatchNorm running statistics) and
``.grad`` are restored.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from tinytl_core.memory import accounting as acc
from tinytl_core.memory.report import MEMORY, MemoryReport
from tinytl_core.memory.timeline import StepTimeline, phase, profile_step
from tinytl_core.quantities import format_bytes
from tinytl_core.tracing import (
    available_memory,
    check_input,
    default_loss,
    make_optimizer,
    model_device,
    model_dtype,
    optimizer_states,
    preserved_state,
    run_traced,
    trace_model,
)


class MemoryLimitError(ValueError):
    """The modelled memory of a measurement exceeds the memory available; nothing was allocated."""


def memory_problem(
    required_bytes: float, device: str | torch.device = "cpu", *, what: str = "this training step"
) -> str | None:
    """None when ``required_bytes`` fit in the memory free on ``device``; else a message saying by how much
    it does not fit. Unknown free memory counts as fitting."""
    free = available_memory(torch.device(device))
    if free is None or required_bytes <= free:
        return None
    return (
        f"{what} needs about {format_bytes(required_bytes)} by the model's own estimate, but only "
        f"{format_bytes(free)} are free on {device}. Lower the batch size or the resolution."
    )


@dataclass
class Measurement:
    """What one real training step saved for backward.

    ``saved_bytes``: distinct activation storages autograd kept for backward; ``per_layer``: a DataFrame
    (``layer``, ``call``, ``type``, ``kind``, ``activations_measured_bytes``) in execution order, or None;
    ``peak_cuda_bytes``: peak allocated CUDA memory during the step (None off CUDA); ``timeline``: the
    step's memory over time by category from PyTorch's profiler (:mod:`tinytl_core.memory.timeline`;
    None when not profiled), whose maximum is :attr:`peak_bytes`.
    """

    saved_bytes: int
    per_layer: pd.DataFrame | None
    peak_cuda_bytes: int | None
    device: str
    weight_saves: int
    input_size: tuple[int, int, int]
    batch_size: int
    optimizer: str
    required_bytes: int | None = None
    timeline: StepTimeline | None = None

    @property
    def peak_bytes(self) -> int | None:
        """The step's measured peak: the most bytes alive at once (weights, optimizer state, input batch,
        stored activations, gradients and temporaries), from the profiler; None when not profiled."""
        return None if self.timeline is None else self.timeline.peak_bytes

    @property
    def step_peak(self) -> int | None:
        """The peak a user checks: ``torch.cuda.max_memory_allocated`` on CUDA, else :attr:`peak_bytes`."""
        return self.peak_cuda_bytes if self.peak_cuda_bytes is not None else self.peak_bytes

    @property
    def peak_phase(self) -> str:
        """Where the peak happened: forward, backward or optimizer ('' when not profiled)."""
        return "" if self.timeline is None else self.timeline.peak_phase


def measure(
    model: nn.Module,
    *,
    input_size: tuple[int, int, int],
    batch_size: int,
    optimizer: str = "adam",
    device: str | torch.device | None = None,
    per_layer: bool = True,
    modelled: MemoryReport | None = None,
    profile: bool = True,
) -> Measurement:
    """Run one real training step of ``model`` and record what autograd saves for backward.

    Args:
        model: a model with real weights (not ``meta``); moved to ``device`` when one is given.
        input_size: ``(C, H, W)``; batch_size: samples in the step.
        optimizer: ``none``, ``sgd``, ``adam`` or ``adamw`` (its state is allocated; weights do not move).
        device: where to run (default: where the model is).
        per_layer: attribute saved bytes to layers (a ``per_layer`` table); False is a bit cheaper.
        profile: also run the step under PyTorch's profiler (after one step that allocates the optimizer
            state, as in training) for its memory timeline and peak: one more step.
        modelled: a complete-accounting :func:`~tinytl_core.memory.analysis.analyze` report of this model at
            this size, if already computed (used for the memory check).

    Raises:
        MemoryLimitError: the modelled step does not fit in the available memory (checked first).
        ValueError: a ``meta`` model, or nothing to train.
    """
    input_size, batch_size = check_input(input_size, batch_size)
    optimizer_states(optimizer)
    here = model_device(model)
    target = torch.device(device) if device is not None else here
    if "meta" in (target.type, here.type):
        raise ValueError(
            "measure() runs a real step: build the model on a real device (e.g. device='cpu'), "
            "or use analyze() for the modelled numbers"
        )
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("nothing to measure: no parameter of the model requires grad (apply a mode first)")

    required = _check_fits(model, modelled, input_size, batch_size, optimizer, here, target)
    if target != here:
        model.to(target)
    dtype = model_dtype(model)
    cuda = target.type == "cuda"
    with preserved_state(model):
        model.train()
        for p in trainable:
            p.grad = None
        x = torch.randn((batch_size, *input_size), device=target, dtype=dtype)
        opt = make_optimizer(optimizer, trainable)
        if cuda:
            torch.cuda.synchronize(target)
            torch.cuda.reset_peak_memory_stats(target)
        trace = run_traced(
            model, x, record_modules=per_layer, record_uses=False, after_forward=lambda loss: loss.backward()
        )
        opt.step()
        peak = None
        if cuda:
            torch.cuda.synchronize(target)
            peak = int(torch.cuda.max_memory_allocated(target))
        opt.zero_grad(set_to_none=True)
        timeline = _profiled_step(model, x, opt, target) if profile else None
        del opt, x
    table = None
    if per_layer:
        table = pd.DataFrame.from_records(
            [
                {
                    "layer": r.name,
                    "call": r.call,
                    "type": r.type,
                    "kind": r.kind,
                    MEMORY.activations_measured_bytes: r.saved_bytes,
                }
                for r in trace.rows
            ],
            columns=["layer", "call", "type", "kind", MEMORY.activations_measured_bytes],
        )
    return Measurement(
        saved_bytes=trace.saved_bytes,
        per_layer=table,
        peak_cuda_bytes=peak,
        device=str(target),
        weight_saves=trace.weight_saves,
        input_size=input_size,
        batch_size=batch_size,
        optimizer=optimizer.lower(),
        required_bytes=required,
        timeline=timeline,
    )


def _profiled_step(model: nn.Module, x: torch.Tensor, opt: torch.optim.Optimizer, device) -> StepTimeline:
    """One training step as a training loop runs it (optimizer state allocated by the step before,
    gradients set to None), profiled; gradients are cleared again afterwards."""

    def step() -> None:
        with phase("forward"):
            loss = default_loss(model(x))
        with phase("backward"):
            loss.backward()
        del loss
        with phase("optimizer"):
            opt.step()
        opt.zero_grad(set_to_none=True)

    return profile_step(step, device)


def _check_fits(model, modelled, input_size, batch_size, optimizer, here, target) -> int | None:
    """Refuse (before allocating) a step whose modelled memory exceeds what ``target`` has free."""
    if modelled is None:
        try:  # meta only: a fallback trace on the real device would allocate before the check
            trace = trace_model(model, input_size, batch_size, allow_real=False)
            modelled = acc.report_from_trace(
                trace,
                input_size=input_size,
                batch_size=batch_size,
                optimizer=optimizer,
                accounting="complete",
                frozen_weight_bits=32,
            )
        except ValueError as exc:  # a model the meta trace cannot run: measure without the check
            warnings.warn(f"memory check skipped: the model could not be analysed ({exc})", stacklevel=3)
            return None
    t = modelled.totals
    c, h, w = input_size
    required = (
        t.grads_optimizer_bytes
        + t.activations_stock_bytes
        + t.transient_stock_bytes
        + (batch_size * c * h * w * 4)
    )
    if target != here:
        required += t.weights_bytes
    free = available_memory(target)
    if free is not None and required > free:
        raise MemoryLimitError(
            f"measuring this step needs about {format_bytes(required)} on {target} (modelled: gradients + "
            f"optimizer state, activations stock PyTorch saves and its transient peak) but only "
            f"{format_bytes(free)} are free; lower the batch size or resolution, or use analyze(), which "
            "allocates nothing"
        )
    return int(required)
