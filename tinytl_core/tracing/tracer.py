"""One instrumented forward pass: layers in execution order, their shapes, and what autograd saves.

The same tracer serves the model (on the ``meta`` device: shapes only, nothing allocated) and the
measurement (real tensors). Every module call is followed with forward (pre-)hooks; a row is kept for

- each call of a leaf module (``kind="layer"``),
- each call of a non-leaf module holding parameters of its own, e.g. timm's ``BatchNormAct2d`` whose
  normalisation runs in its own ``forward`` (``kind="module"``),
- each call of any other non-leaf module whose own code (a residual add, attention matmuls, an
  interpolation) saved tensors (``kind="ops"``),
- the loss (``kind="loss"``).

Saved tensors (:class:`~tinytl_core.tracing.saved.SavedTensorCounter`) are attributed to the innermost
module running: ``Row.saved`` holds the storages a row saved first (stock PyTorch's bytes, each storage
once), ``Row.saved_all`` every tensor the row's autograd nodes keep, also those an earlier row saved first
(what the row's backward reads, for the rules). With ``record_uses`` a ``TorchFunctionMode`` notes the
last forward use of every storage: a block's input that is still used after a layer ran (the pending
residual) is live while that layer runs.

Where the ``meta`` kernels differ from the CPU ones, the shape trace follows the CPU
(:mod:`tinytl_core.tracing.shims`), so the modelled stock bytes equal the measured ones.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors
from torch.utils._pytree import tree_leaves

from tinytl_core.layer_kinds import adds_block_input, uses_batch_statistics
from tinytl_core.tracing.records import ParamRef, Row, TensorRef, Trace, param_refs
from tinytl_core.tracing.saved import SavedTensor, SavedTensorCounter, storage_key, storage_of
from tinytl_core.tracing.shims import drop_meta_only_saves, follow_cpu
from tinytl_core.tracing.step import check_input, default_loss, model_device, model_dtype, preserved_state

_NO_TORCH_FUNCTION = torch._C.DisableTorchFunction
"""Turns off torch-function modes (the ``meta`` device mode, :class:`_Uses`) while the tracer reads tensor
metadata in its hooks: those reads are bookkeeping, not the model's ops."""
_NO_TENSORS = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size, slice)


def _tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors in ``obj``, in ``tree_leaves`` order: a hand-rolled walk of tuples, lists and dicts (the
    containers module calls and ops pass around), ``tree_leaves`` for anything else -- the tracer calls it
    for every op, where pytree's generic walk was a tenth of a trace."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, _NO_TENSORS):
        return []
    if type(obj) in (tuple, list):
        out: list[torch.Tensor] = []
        for item in obj:
            out.extend(_tensors(item))
        return out
    if type(obj) is dict:
        out = []
        for value in obj.values():  # insertion order, as pytree
            out.extend(_tensors(value))
        return out
    return [t for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]


class _Pins:
    """Keeps storages alive while tracing, so a freed storage's address (its key) is not reused by
    another tensor in the same trace. Disabled (nothing kept) when measuring memory for real."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.storages: dict[int, torch.UntypedStorage | torch.Tensor] = {}

    def key(self, tensor: torch.Tensor) -> int:
        """The tensor's storage key; its storage is kept alive from now on (when enabled)."""
        key = storage_key(tensor)
        if self.enabled and key not in self.storages:
            self.storages[key] = storage_of(tensor) or tensor
        return key

    def refs(self, obj: Any) -> list[TensorRef]:
        with _NO_TORCH_FUNCTION():  # metadata reads: 5x faster without the active modes' dispatch
            tensors = _tensors(obj)
            for t in tensors:
                self.key(t)
            return [TensorRef.of(t) for t in tensors]


class _Uses(TorchFunctionMode):
    """Remembers, per storage, the event number of its last use by a tensor-producing function; with
    ``device``, also puts tensors created without a device there (what ``with torch.device(...)`` does,
    without a second mode every op would pass through)."""

    def __init__(self, clock: Callable[[], int], pins: _Pins, device: torch.device | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.pins = pins
        self.device = device
        self.last_use: dict[int, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.device is not None and kwargs.get("device") is None and func in _device_constructors():
            kwargs["device"] = self.device
        result = follow_cpu(func, args, kwargs)
        if _tensors(result):
            now = self.clock()
            with _NO_TORCH_FUNCTION():  # metadata reads need no dispatch through the device mode
                for t in _tensors((args, kwargs)):
                    self.last_use[self.pins.key(t)] = now
        return result


@dataclass(frozen=True)
class _Static:
    name: str
    type: str
    leaf: bool
    own: tuple[ParamRef, ...]


@dataclass
class _Call:
    row: Row
    leaf: bool
    own_params: bool
    parents: tuple[int, ...]


def run_traced(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    forward: Callable[[torch.Tensor], Any] | None = None,
    weights: list[torch.Tensor] | None = None,
    record_modules: bool = True,
    record_uses: bool = True,
    after_forward: Callable[[torch.Tensor], None] | None = None,
    default_device: torch.device | None = None,
) -> Trace:
    """Run ``forward(inputs)`` (default ``model(inputs)``) and its loss, recording rows and saved tensors.

    Args:
        model: the model whose modules are followed (hooks are removed afterwards).
        inputs: the input batch.
        forward: how to call the model (e.g. a ``functional_call`` with meta tensors in place of weights).
        weights: the parameters and buffers the call really uses (default: the model's own).
        record_modules: follow module calls (rows); without it only the saved totals are recorded.
        record_uses: note last uses of storages to find pending residual inputs.
        after_forward: called with the loss once the forward is done and the hooks are off (e.g.
            ``loss.backward()``); the trace's references to storages are dropped before.
        default_device: where tensors the forward creates without naming a device go (``meta`` for a
            shape trace), as ``with torch.device(...)`` would put them.
    """
    forward = forward or model
    if weights is None:
        weights = [*model.parameters(), *model.buffers()]
    names = {id(m): n for n, m in model.named_modules()}
    all_params = param_refs(model)
    by_name = {p.name: p for p in all_params}
    calls: list[_Call] = []
    stack: list[int] = []
    counts: dict[int, int] = {}
    statics: dict[int, _Static] = {}
    clock = [0]

    def tick() -> int:
        clock[0] += 1
        return clock[0]

    def owner() -> int:
        return stack[-1] if stack else -1

    def static(module: nn.Module) -> _Static:
        """What a module's rows share across its calls (computed at its first call)."""
        name = names.get(id(module), "")
        own = tuple(
            by_name[f"{name}.{n}" if name else n]
            for n in module._parameters
            if module._parameters[n] is not None and (f"{name}.{n}" if name else n) in by_name
        )
        leaf = all(m is None for m in module._modules.values())  # as children(): None entries skipped
        return _Static(name or "(model)", type(module).__name__, leaf, own)

    def pre_hook(module: nn.Module, args, kwargs) -> None:
        info = statics.get(id(module))
        if info is None:
            info = statics[id(module)] = static(module)
        counts[id(module)] = counts.get(id(module), 0) + 1
        now = tick()
        row = Row(
            name=info.name,
            type=info.type,
            kind="layer" if info.leaf else ("module" if info.own else "ops"),
            call=counts[id(module)],
            module=module,
            inputs=pins.refs((args, kwargs)),
            params=list(info.own),
            start=now,
            anchor=now,
            batch_statistics=uses_batch_statistics(module),
            training=module.training,
        )
        calls.append(_Call(row, info.leaf, bool(info.own), tuple(stack)))
        stack.append(len(calls) - 1)

    def post_hook(module: nn.Module, args, kwargs, output) -> None:
        index = stack.pop()
        row = calls[index].row
        row.outputs = pins.refs(output)
        row.end = tick()

    handles = []
    if record_modules:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
    loss_row = Row(name="(loss)", type="loss", kind="loss", call=1, module=None)
    pins = _Pins(record_uses)
    uses = _Uses(tick, pins, default_device) if record_uses else None
    place = torch.device(default_device) if default_device is not None and uses is None else nullcontext()
    counter = SavedTensorCounter(weights, owner, tick)
    output_shape = None
    try:
        with counter, place:
            if uses is not None:
                with uses:
                    output = forward(inputs)
            else:
                output = forward(inputs)
            loss_row.start = loss_row.anchor = tick()
            loss = default_loss(output)
            loss_row.end = tick()
        first = next((t for t in tree_leaves(output) if isinstance(t, torch.Tensor)), None)
        output_shape = tuple(first.shape) if first is not None else None
        loss_row.inputs = pins.refs(output)
        loss_row.outputs = pins.refs(loss)
        del output
    finally:
        for h in handles:
            h.remove()
    saved, records, weight_saves = list(counter.saved), list(counter.records), counter.weight_saves
    counter.release()
    pins.storages.clear()
    if after_forward is not None:
        after_forward(loss)
    del loss

    if inputs.device.type == "meta":

        def row_of(owner: int) -> Row:
            return calls[owner].row

        saved, records = drop_meta_only_saves(row_of, saved), drop_meta_only_saves(row_of, records)
    rows = _select_rows(calls, saved, records, loss_row)
    if uses is not None:
        _set_pending(calls, uses.last_use)
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    last_use = dict(uses.last_use) if uses is not None else {}
    return Trace(rows, saved, weight_saves, all_params, buffer_bytes, output_shape, records, last_use)


def _select_rows(
    calls: list[_Call], saved: list[SavedTensor], records: list[SavedTensor], loss_row: Row
) -> list[Row]:
    """Keep leaf calls, calls owning parameters and calls whose own code saved tensors; attach saves
    (``saved``: first sightings, ``records``: every tensor each call keeps)."""
    for s in records:
        target = calls[s.owner].row if s.owner >= 0 else loss_row
        if not target.saved_all and target.kind == "ops":
            target.anchor = s.event  # its own code ran between its children: place it where it saved
        target.saved_all.append(s)
    for s in saved:
        (calls[s.owner].row if s.owner >= 0 else loss_row).saved.append(s)
    first_use: set[int] = set()
    rows = []
    for c in calls:
        keep = c.leaf or c.own_params or bool(c.row.saved_all)
        if not keep:
            continue
        # A parameter reused by several calls (or tied) is counted on its first row only.
        c.row.params = [p for p in c.row.params if p.name not in first_use]
        first_use.update(p.name for p in c.row.params)
        rows.append(c.row)
    if loss_row.saved_all or loss_row.inputs:
        rows.append(loss_row)
    rows.sort(key=lambda r: r.anchor)
    return rows


def _set_pending(calls: list[_Call], last_use: dict[int, int]) -> None:
    """For each kept row: enclosing calls' inputs that are used again after the row ends (``pending``, the
    residual inputs), those of them that are residual blocks' inputs (``residual``, see
    :func:`~tinytl_core.layer_kinds.adds_block_input`) and all of them (``held``: the callers' frames keep a
    reference to each, used or not)."""
    blocks: dict[int, bool] = {}  # call index -> residual block (asked once per enclosing call)
    for c in calls:
        row = c.row
        own = {t.key for t in row.inputs}
        pending: dict[int, TensorRef] = {}
        residual: dict[int, TensorRef] = {}
        held: dict[int, TensorRef] = {}
        for p in c.parents:
            block = blocks.get(p)
            if block is None:
                block = blocks[p] = adds_block_input(calls[p].row.module)
            for t in calls[p].row.inputs:
                if t.key not in own:
                    held.setdefault(t.key, t)
                    if last_use.get(t.key, -1) > row.end:
                        pending.setdefault(t.key, t)
                        if block:
                            residual.setdefault(t.key, t)
        row.pending = list(pending.values())
        row.residual = list(residual.values())
        row.held = list(held.values())


def trace_model(
    model: nn.Module, input_size: tuple[int, int, int], batch_size: int, *, allow_real: bool = True
) -> Trace:
    """Trace one training forward of ``model`` (train mode) on the ``meta`` device: shapes, no allocation.

    A model on a real device is traced through ``torch.func.functional_call`` with ``meta`` stand-ins for
    its parameters and buffers, so it is not copied; ``meta`` is the default device meanwhile, so tensors
    the forward creates without naming a device land there too. If an architecture cannot run on ``meta``
    (a tensor kept outside its parameters and buffers), it is traced on its own device at the requested
    size when ``allow_real`` (allocating its activations), else the error is raised. The model's training
    flags and buffers are restored afterwards.
    """
    input_size, batch_size = check_input(input_size, batch_size)
    shape = (batch_size, *input_size)
    dtype = model_dtype(model)
    device = model_device(model)
    try:
        # meta as the default device too: tensors a forward creates without a device land there
        meta = torch.device("meta")
        with preserved_state(model):
            model.train()
            if device.type == "meta":
                return run_traced(model, torch.empty(shape, device=meta, dtype=dtype), default_device=meta)
            params = {n: _meta_like(p) for n, p in model.named_parameters()}
            buffers = {n: _meta_like(b) for n, b in model.named_buffers() if b is not None}

            def forward(x: torch.Tensor) -> Any:
                return torch.func.functional_call(model, (params, buffers), (x,), strict=False)

            try:
                return run_traced(
                    model,
                    torch.empty(shape, device=meta, dtype=dtype),
                    forward=forward,
                    weights=[*params.values(), *buffers.values()],
                    default_device=meta,
                )
            except Exception:
                if not allow_real:
                    raise
            with torch.device(device):
                return run_traced(model, torch.randn(shape, device=device, dtype=dtype))
    except Exception as exc:
        raise ValueError(
            f"{type(model).__name__} cannot run a training step on input {tuple(shape)}: {exc}"
        ) from exc


def _meta_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t, device="meta").requires_grad_(t.requires_grad)
