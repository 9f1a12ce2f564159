"""One instrumented forward pass: layers in execution order, their shapes, and what autograd saves.

The same tracer serves the model (on the ``meta`` device: shapes only, nothing allocated) and the
measurement (real tensors). Every module call is followed with forward (pre-)hooks; a row is kept for

- each call of a leaf module (``kind="layer"``),
- each call of a non-leaf module holding parameters of its own, e.g. timm's ``BatchNormAct2d`` whose
  normalisation runs in its own ``forward`` (``kind="module"``),
- each call of any other non-leaf module whose own code (a residual add, attention matmuls, an
  interpolation) saved tensors (``kind="ops"``),
- the loss (``kind="loss"``).

Saved tensors (:class:`~tinytl_core.memory.stock.SavedTensorCounter`) are attributed to the innermost
module running: ``Row.saved`` holds the storages a row saved first (stock PyTorch's bytes, each storage
once), ``Row.saved_all`` every tensor the row's autograd nodes keep, also those an earlier row saved first
(what the row's backward reads, for the rules). With ``record_uses`` a ``TorchFunctionMode`` notes the
last forward use of every storage: a block's input that is still used after a layer ran (the pending
residual) is live while that layer runs.

Where the ``meta`` kernels differ from the CPU ones, the shape trace follows the CPU (so the modelled
stock bytes equal the measured ones): scaled dot-product attention takes the kernel the CPU would pick
(flash attention when possible, not the math path); batch norm on running statistics does not count the
per-channel statistics the meta kernel returns (CPU and CUDA return empty ones); and BatchNorm training on
one value per channel (batch size 1), which PyTorch refuses, is still traced, to give per-sample memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from tinytl_core.memory.stock import SavedTensor, SavedTensorCounter, storage_key, storage_of
from tinytl_core.norms import uses_batch_statistics


@dataclass(frozen=True)
class TensorRef:
    """What the model needs to know about a tensor: which storage (and version), shape, bytes."""

    key: int
    version: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int
    requires_grad: bool

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorRef:
        return cls(
            storage_key(tensor),
            tensor._version,
            tuple(tensor.shape),
            tensor.dtype,
            tensor.numel() * tensor.element_size(),
            tensor.requires_grad,
        )

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class ParamRef:
    """A parameter a row owns: qualified name, size, element size and whether it trains."""

    name: str
    local_name: str
    numel: int
    element_size: int
    trainable: bool

    @property
    def nbytes(self) -> int:
        return self.numel * self.element_size


@dataclass
class Row:
    """One row of the per-layer table (see the module docstring for the kinds)."""

    name: str
    type: str
    kind: str
    call: int
    module: nn.Module | None
    inputs: list[TensorRef] = field(default_factory=list)
    outputs: list[TensorRef] = field(default_factory=list)
    params: list[ParamRef] = field(default_factory=list)
    start: int = 0
    end: int = 0
    anchor: int = 0
    batch_statistics: bool = False
    training: bool = False
    saved: list[SavedTensor] = field(default_factory=list)  # storages first saved here (stock bytes)
    saved_all: list[SavedTensor] = field(default_factory=list)  # everything its backward keeps
    pending: list[TensorRef] = field(default_factory=list)  # enclosing blocks' inputs needed later

    @property
    def needs_input_grad(self) -> bool:
        """True when a gradient must flow back through this row (something upstream trains)."""
        return any(t.requires_grad for t in self.inputs)

    @property
    def input_bytes(self) -> int:
        return _distinct_bytes(self.inputs)

    @property
    def output_bytes(self) -> int:
        return _distinct_bytes(self.outputs)

    @property
    def pending_bytes(self) -> int:
        """Bytes of the pending residual inputs (live while this row runs, though not its own)."""
        return _distinct_bytes(self.pending)

    @property
    def live(self) -> list[TensorRef]:
        """Tensors live while this row runs: its inputs, outputs and the pending residual inputs."""
        return [*self.inputs, *self.outputs, *self.pending]

    @property
    def saved_bytes(self) -> int:
        return sum(s.nbytes for s in self.saved)

    def param(self, local_name: str) -> ParamRef | None:
        """The row's parameter called ``local_name`` (e.g. ``"weight"``), if any."""
        return next((p for p in self.params if p.local_name == local_name), None)


@dataclass
class Trace:
    """Result of :func:`run_traced`."""

    rows: list[Row]
    saved: list[SavedTensor]
    weight_saves: int
    params: list[ParamRef]
    buffer_bytes: int
    output_shape: tuple[int, ...] | None
    records: list[SavedTensor] = field(default_factory=list)  # every (row, stored tensor) pair

    @property
    def saved_bytes(self) -> int:
        return sum(s.nbytes for s in self.saved)


def _distinct_bytes(refs: list[TensorRef]) -> int:
    seen: dict[int, int] = {}
    for r in refs:
        seen[r.key] = max(seen.get(r.key, 0), r.nbytes)
    return sum(seen.values())


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
        tensors = [t for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]
        for t in tensors:
            self.key(t)
        return [TensorRef.of(t) for t in tensors]


class _Uses(TorchFunctionMode):
    """Remembers, per storage, the event number of its last use by a tensor-producing function."""

    def __init__(self, clock: Callable[[], int], pins: _Pins) -> None:
        super().__init__()
        self.clock = clock
        self.pins = pins
        self.last_use: dict[int, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            result = _attention_as_on_cpu(args, kwargs)
        elif func is F.batch_norm and _on_meta(args):
            result = _batch_norm_unchecked(args, kwargs)
        else:
            result = func(*args, **kwargs)
        if any(isinstance(t, torch.Tensor) for t in tree_leaves(result)):
            now = self.clock()
            for t in tree_leaves((args, kwargs)):
                if isinstance(t, torch.Tensor):
                    self.last_use[self.pins.key(t)] = now
        return result


_FLASH = 1  # torch._fused_sdp_choice: 0 math, 1 flash attention


def _attention_as_on_cpu(args: tuple, kwargs: dict) -> torch.Tensor:
    """Scaled dot-product attention on ``meta`` tensors with the kernel PyTorch would pick on the CPU.

    The meta device always takes the math path (which saves the attention matrix); the CPU takes flash
    attention when it can (which saves queries, keys, values, output and log-sum-exp). The choice is asked
    of PyTorch with zero-stride CPU stand-ins (no allocation beyond one row).
    """
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    bound = dict(zip(names, args)) | kwargs
    q, k, v = bound["query"], bound["key"], bound["value"]
    mask = bound.get("attn_mask")
    if q.device.type != "meta" or bound.get("enable_gqa") or q.dim() != 4:
        return F.scaled_dot_product_attention(*args, **kwargs)
    choice_args = {n: bound[n] for n in ("dropout_p", "is_causal", "scale") if n in bound}
    stand_in = [_row_stand_in(t) for t in (q, k, v)]
    mask_in = _row_stand_in(mask) if isinstance(mask, torch.Tensor) else mask
    if torch._fused_sdp_choice(*stand_in, attn_mask=mask_in, **choice_args) != _FLASH:
        return F.scaled_dot_product_attention(*args, **kwargs)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, bound.get("dropout_p", 0.0), bound.get("is_causal", False), attn_mask=mask,
        scale=bound.get("scale"),
    )[0]


def _row_stand_in(t: torch.Tensor) -> torch.Tensor:
    stride = (0,) * (t.dim() - 1) + (1,)
    like = torch.empty_strided(tuple(t.shape), stride, dtype=t.dtype, device="cpu")
    return like.requires_grad_(t.requires_grad)


def _on_meta(args: tuple) -> bool:
    return bool(args) and isinstance(args[0], torch.Tensor) and args[0].device.type == "meta"


def _batch_norm_unchecked(args: tuple, kwargs: dict) -> torch.Tensor:
    """``F.batch_norm`` without its Python check that training sees more than one value per channel.

    PyTorch refuses to train BatchNorm on one value per channel (batch size 1 after global pooling); the
    memory of such a step is still well defined, and the paper counts memory per sample, so the shape
    trace computes it (the same ``torch.batch_norm`` call, so the same saved tensors).
    """
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    defaults = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5}
    b = defaults | dict(zip(names, args)) | kwargs
    x = b["input"]
    if b["training"] and x.numel() == x.shape[1]:  # one value per channel: skip the running update
        b["running_mean"] = b["running_var"] = None  # (buffers: not activations, so nothing changes)
    return torch.batch_norm(
        b["input"], b["weight"], b["bias"], b["running_mean"], b["running_var"], b["training"],
        b["momentum"], b["eps"], torch.backends.cudnn.enabled,
    )


@dataclass
class _Call:
    row: Row
    leaf: bool
    own_params: bool
    parents: tuple[int, ...]


def default_loss(output: Any) -> torch.Tensor:
    """A training loss for any model output: cross-entropy for ``(B, classes)`` logits, else mean square."""
    tensors = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not tensors:
        raise ValueError("the model returned no floating-point tensor to train on")
    out = tensors[0]
    if out.ndim == 2:
        target = torch.zeros(out.shape[0], dtype=torch.long, device=out.device)
        return F.cross_entropy(out.float(), target)
    return out.float().square().mean()


def param_refs(model: nn.Module) -> list[ParamRef]:
    """Every parameter of ``model`` once (tied parameters once), in registration order."""
    return [
        ParamRef(name, name.rsplit(".", 1)[-1], p.numel(), p.element_size(), p.requires_grad)
        for name, p in model.named_parameters()
    ]


def run_traced(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    forward: Callable[[torch.Tensor], Any] | None = None,
    weights: list[torch.Tensor] | None = None,
    record_modules: bool = True,
    record_uses: bool = True,
    after_forward: Callable[[torch.Tensor], None] | None = None,
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
    clock = [0]

    def tick() -> int:
        clock[0] += 1
        return clock[0]

    def owner() -> int:
        return stack[-1] if stack else -1

    def pre_hook(module: nn.Module, args, kwargs) -> None:
        name = names.get(id(module), "")
        counts[id(module)] = counts.get(id(module), 0) + 1
        leaf = next(module.children(), None) is None
        own = [by_name[f"{name}.{n}" if name else n] for n, _ in module.named_parameters(recurse=False)
               if (f"{name}.{n}" if name else n) in by_name]
        now = tick()
        row = Row(
            name=name or "(model)",
            type=type(module).__name__,
            kind="layer" if leaf else ("module" if own else "ops"),
            call=counts[id(module)],
            module=module,
            inputs=pins.refs((args, kwargs)),
            params=own,
            start=now,
            anchor=now,
            batch_statistics=uses_batch_statistics(module),
            training=module.training,
        )
        calls.append(_Call(row, leaf, bool(own), tuple(stack)))
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
    uses = _Uses(tick, pins) if record_uses else None
    counter = SavedTensorCounter(weights, owner, tick)
    output_shape = None
    try:
        with counter:
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
        saved, records = _drop_meta_only_saves(calls, saved), _drop_meta_only_saves(calls, records)
    rows = _select_rows(calls, saved, records, loss_row)
    if uses is not None:
        _set_pending(calls, uses.last_use)
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    return Trace(rows, saved, weight_saves, all_params, buffer_bytes, output_shape, records)


def _drop_meta_only_saves(calls: list[_Call], saved: list[SavedTensor]) -> list[SavedTensor]:
    """Drop what only the meta kernels save, so meta numbers equal real ones.

    The meta kernel of batch norm on running statistics returns per-channel ``save_mean`` /
    ``save_invstd`` tensors where the CPU and CUDA kernels return empty ones.
    """
    kept = []
    for s in saved:
        row = calls[s.owner].row if s.owner >= 0 else None
        if (
            row is not None
            and isinstance(row.module, _BatchNorm)
            and not row.batch_statistics
            and s.shape == (row.module.num_features,)
        ):
            continue
        kept.append(s)
    return kept


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
    """For each kept row: bytes of enclosing calls' inputs that are used again after the row ends."""
    for c in calls:
        row = c.row
        own = {t.key for t in row.inputs}
        pending: dict[int, TensorRef] = {}
        for p in c.parents:
            for t in calls[p].row.inputs:
                if t.key not in own and last_use.get(t.key, -1) > row.end:
                    pending.setdefault(t.key, t)
        row.pending = list(pending.values())


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore training flags, buffers (e.g. BatchNorm running statistics) and ``.grad`` afterwards."""
    flags = {m: m.training for m in model.modules()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers() if b is not None}
    grads = {p: p.grad for p in model.parameters()}
    try:
        yield
    finally:
        for m, training in flags.items():
            m.training = training
        live = dict(model.named_buffers())
        with torch.no_grad():
            for name, value in buffers.items():
                if name in live and live[name].shape == value.shape and live[name].device == value.device:
                    live[name].copy_(value)
        for p, g in grads.items():
            p.grad = g


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a model without tensors)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """Floating dtype of the model's first floating parameter (float32 without one)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def check_input(input_size: tuple[int, ...], batch_size: int) -> tuple[tuple[int, int, int], int]:
    """Validate ``input_size`` (C, H, W) and ``batch_size``; ValueError with a hint otherwise."""
    size = tuple(input_size) if isinstance(input_size, (tuple, list)) else None
    if size is None or len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"input_size must be (channels, height, width) of positive ints, not {input_size!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return size, batch_size  # type: ignore[return-value]


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
        with preserved_state(model), torch.device("meta"):
            model.train()
            if device.type == "meta":
                return run_traced(model, torch.empty(shape, device="meta", dtype=dtype))
            params = {n: _meta_like(p) for n, p in model.named_parameters()}
            buffers = {n: _meta_like(b) for n, b in model.named_buffers() if b is not None}

            def forward(x: torch.Tensor) -> Any:
                return torch.func.functional_call(model, (params, buffers), (x,), strict=False)

            try:
                return run_traced(
                    model,
                    torch.empty(shape, device="meta", dtype=dtype),
                    forward=forward,
                    weights=[*params.values(), *buffers.values()],
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
