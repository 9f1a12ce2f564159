"""Switch a model between stock PyTorch layers and the engine's memory-lean layers, in place.

Conversion swaps each supported module's ``__class__`` for its engine subclass: no new modules, the same
``Parameter`` and buffer objects, the same ``state_dict`` keys, so optimizers built before or after keep
working. Engine layers pick their storage rule at every forward from the current ``requires_grad`` flags
and norm modes, so convert *after* a mode has attached its modules (lite residual branches); converting
again is harmless and picks up modules added since.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn

from tinytl_core.engine.layers import (
    ENGINE_CLASSES,
    INPLACE_PRODUCERS,
    EngineModule,
    FrozenNorm,
    MaskedActivation,
    stock_class,
)
from tinytl_core.layer_kinds import LayerKind, is_frozen, kind_of, stock_rule
from tinytl_core.norms import freeze_statistics, unfreeze_statistics
from tinytl_core.tracing import Trace, check_input, trace_model

__all__ = [
    "EngineLayer",
    "EngineReport",
    "convert",
    "describe",
    "engine_enabled",
    "is_converted",
    "revert",
    "stock_layers",
    "traced_flags",
]


@dataclass(frozen=True)
class EngineLayer:
    """One layer of a model and what its backward keeps under the engine (or stock, if not converted)."""

    name: str
    stock_type: str
    converted: bool
    stores: str


@dataclass(frozen=True)
class EngineReport:
    """What :func:`convert` did (or :func:`describe` found): one row per leaf-level layer."""

    layers: tuple[EngineLayer, ...]

    @property
    def converted(self) -> list[EngineLayer]:
        """Layers running as engine layers."""
        return [layer for layer in self.layers if layer.converted]

    @property
    def n_converted(self) -> int:
        return len(self.converted)

    def rows(self) -> list[dict[str, object]]:
        """The layers as plain dicts (for a table: name, stock_type, converted, stores)."""
        return [layer.__dict__.copy() for layer in self.layers]

    def __str__(self) -> str:
        width = max((len(layer.name) for layer in self.layers), default=4)
        lines = [f"{'layer':<{width}}  {'type':<16} {'engine':<6} stores for backward"]
        for layer in self.layers:
            flag = "yes" if layer.converted else "-"
            lines.append(f"{layer.name:<{width}}  {layer.stock_type:<16} {flag:<6} {layer.stores}")
        lines.append(f"{self.n_converted} of {len(self.layers)} layers run on the engine")
        return "\n".join(lines)


def _leaf_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules without children, plus engine-convertible composites (timm's BatchNormAct2d)."""
    for name, module in model.named_modules():
        if next(module.children(), None) is None or stock_class(module) in ENGINE_CLASSES:
            yield name or type(module).__name__, module


def describe(model: nn.Module) -> EngineReport:
    """Report, without changing anything, what each layer of ``model`` keeps for backward right now."""
    rows = []
    for name, module in _leaf_layers(model):
        converted = isinstance(module, EngineModule)
        stores = module.engine_rule() if converted else stock_rule(module)
        rows.append(EngineLayer(name, stock_class(module).__name__, converted, stores))
    return EngineReport(tuple(rows))


def convert(
    model: nn.Module, *, input_size: tuple[int, int, int] | None = None, channels_last: bool = False
) -> EngineReport:
    """Turn every supported layer of ``model`` into its engine layer, in place; returns the report.

    Forward outputs are unchanged and gradients equal stock PyTorch's. Unsupported layers (any class the
    engine has no exact rule for, including subclasses of supported ones) stay stock.

    ``input_size`` ``(C, H, W)``: also trace one forward on the ``meta`` device (nothing allocated) to find
    the ReLU-like activations whose output a later layer stores in full anyway (a conv whose weight trains,
    a squeeze-excitation multiply); those keep that shared output instead of a 1-bit mask, which then
    costs nothing. Without it every such activation keeps a mask (exact, 1 bit per element more there).
    The finding reflects the current mode: convert again after changing what trains.

    ``channels_last``: also lay the model's 4-D weights out channels-last (same ``Parameter`` objects), so
    its activations and gradients flow channels-last: the CPU's oneDNN convolutions then need no
    reordered copy of their input (a depthwise convolution's copy is an activation-sized buffer at the
    step's peak). Values equal the contiguous layout's up to float rounding; :func:`revert` restores it.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"convert expects a torch.nn.Module, got {type(model).__name__}")
    if input_size is not None:  # checked before any layer changes (a bad size used to only warn)
        input_size, _ = check_input(input_size, 1)
    if not isinstance(channels_last, bool):
        raise ValueError(f"channels_last must be True or False, got {channels_last!r}")
    for module in model.modules():
        _swap(module, lambda m: ENGINE_CLASSES.get(type(m)))
        for flag in _TRACED_FLAGS:  # a finding of an earlier conversion may not hold any more
            module.__dict__.pop(flag, None)
    if channels_last:
        _set_channels_last(model, True)
    if input_size is not None:
        _apply_trace_findings(model, input_size)
    return describe(model)


_LAYOUT_FLAG = "_engine_channels_last"


def _set_channels_last(model: nn.Module, on: bool) -> None:
    """Lay the model's 4-D parameters and buffers out channels-last (``on``) or back to contiguous."""
    if on == bool(model.__dict__.get(_LAYOUT_FLAG)):
        return
    four_d = [t for t in (*model.parameters(), *model.buffers()) if t.dim() == 4]
    if on and four_d and all(t.is_contiguous(memory_format=torch.channels_last) for t in four_d):
        return  # channels-last already, the model's own choice: nothing to undo later
    model.to(memory_format=torch.channels_last if on else torch.contiguous_format)
    if on:
        model.__dict__[_LAYOUT_FLAG] = True
    else:
        model.__dict__.pop(_LAYOUT_FLAG, None)


_TRACED_FLAGS = ("keep_output", "own_grad", "inplace_input", INPLACE_PRODUCERS)
"""Per-module flags set from a trace of the model (reset by every conversion, restored by
:func:`engine_enabled`)."""


# Layers whose backward returns an input gradient of their own (a new buffer, or the one they own):
# the layer before them may then work on that gradient in place.
_FRESH_GRADIENT = frozenset(
    {LayerKind.LINEAR, LayerKind.NORM, LayerKind.RELU, LayerKind.STEP, LayerKind.SMOOTH}
)


def _apply_trace_findings(model: nn.Module, input_size: tuple[int, int, int]) -> None:
    """Trace one training forward on ``meta`` (nothing allocated) and set, where every call allows it:

    - ``keep_output`` on masked activations whose output another layer stores in full anyway (the mask
      is then read off that tensor: 0 extra bytes);
    - ``inplace_input`` on frozen-statistics norms whose input no one reads afterwards (a conv output used
      only by the norm): the norm overwrites it, so input and output are never alive together;
    - ``own_grad`` on both when their output has one reader whose backward returns a gradient of its own:
      their backward then works on that gradient in place instead of allocating another.
    """
    modules = [m for m in model.modules() if isinstance(m, (MaskedActivation, FrozenNorm))]
    if not modules:
        return
    try:
        trace = trace_model(model, tuple(input_size), 2, allow_real=False)  # 2: BatchNorm needs > 1 value
    except ValueError as exc:  # cannot run on meta: masks everywhere, norms out of place: exact, not minimal
        warnings.warn(
            f"engine: could not trace the model to share stored outputs ({exc}); "
            "ReLU-like layers keep 1-bit masks",
            stacklevel=3,
        )
        return
    verdict = traced_flags(trace)
    returned: dict[tuple[int, int], list[nn.Module]] = {}  # tensor -> every module that returned it
    for row in trace.rows:
        for t in row.outputs:
            returned.setdefault((t.key, t.version), []).append(row.module)
    names = {id(m): name for name, m in model.named_modules()}
    for module in modules:
        flags = (
            ("keep_output", "own_grad")
            if isinstance(module, MaskedActivation)
            else ("inplace_input", "own_grad")
        )
        for flag in flags:
            if verdict.get(id(module), {}).get(flag, False):
                setattr(module, flag, True)
        if getattr(module, "inplace_input", False):
            # whose forward hooks are handed the tensor the norm overwrites (FrozenNorm.writes_in_place):
            # the modules that returned it, and the containers around them that may return it too (a
            # deep stem's Sequential ending in the conv) -- those that hold the norm as well return its
            # output, written in place: what a hook there is handed stays right
            inputs = [row.inputs[0] for row in trace.rows if row.module is module and row.inputs]
            found = {id(m): m for x in inputs for m in returned.get((x.key, x.version), [])}
            norm_name = names.get(id(module), "")
            for producer in list(found.values()):
                parts = names.get(id(producer), "").split(".")
                for depth in range(1, len(parts)):
                    ancestor = ".".join(parts[:depth])
                    if not norm_name.startswith(ancestor + "."):
                        container = model.get_submodule(ancestor)
                        found[id(container)] = container
            module.__dict__[INPLACE_PRODUCERS] = tuple(found.values())  # not registered: no state


def traced_flags(trace: Trace) -> dict[int, dict[str, bool]]:
    """Per module (by ``id``), the flags of :data:`_TRACED_FLAGS` that hold on every one of its calls in
    ``trace`` (see :func:`_apply_trace_findings`). ``own_grad`` reads only the trace's structure (who reads
    a tensor, and until when), so the memory model asks it of a stock model's trace too."""
    stored = {(s.key, s.version) for s in trace.records}  # every (layer, tensor) stored
    produced = {t.key for row in trace.rows for t in row.outputs}  # the model's input is not among them
    leaves = [r for r in trace.rows if r.kind == "layer"]
    readers: dict[tuple[int, int], list] = {}  # (storage, version) -> leaf layers reading it
    for row in leaves:
        for t in row.inputs:
            readers.setdefault((t.key, t.version), []).append(row)
    verdict: dict[int, dict[str, bool]] = {}
    for row in trace.rows:
        if not row.inputs or not row.outputs:
            continue
        found = verdict.setdefault(id(row.module), dict.fromkeys(_TRACED_FLAGS, True))
        out, x = row.outputs[0], row.inputs[0]
        found["keep_output"] &= (out.key, out.version) in stored
        # one reader whose backward hands back a gradient no one else holds, and no later use
        read_by = readers.get((out.key, out.version), [])
        found["own_grad"] &= (
            len(read_by) == 1
            and kind_of(read_by[0].module) in _FRESH_GRADIENT
            and trace.last_use.get(out.key, -1) <= read_by[0].end
        )
        found["inplace_input"] &= (
            x.key in produced
            and trace.last_use.get(x.key, -1) <= row.end
            and (x.key, x.version) not in stored
        )
    return verdict


def _swap(module: nn.Module, target: Callable[[nn.Module], type[nn.Module] | None]) -> bool:
    """Set ``module``'s class to ``target(module)`` (if not None), keeping frozen statistics frozen.

    A norm frozen by :func:`tinytl_core.norms.freeze_statistics` has a derived class; the swap is made
    on its base class and the freeze re-applied on top of the new one.
    """
    frozen = is_frozen(module)
    if frozen:
        unfreeze_statistics(module)
    cls = target(module)
    if cls is not None:
        module.__class__ = cls
    if frozen:
        freeze_statistics(module)
    return cls is not None


def revert(model: nn.Module) -> int:
    """Turn engine layers of ``model`` back into their stock classes, in place; returns how many."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"revert expects a torch.nn.Module, got {type(model).__name__}")
    _set_channels_last(model, False)
    return sum(
        _swap(module, lambda m: stock_class(m) if isinstance(m, EngineModule) else None)
        for module in model.modules()
    )


def is_converted(model: nn.Module) -> bool:
    """Whether any layer of ``model`` runs on the engine."""
    return any(isinstance(module, EngineModule) for module in model.modules())


def stock_layers(model: nn.Module) -> AbstractContextManager:
    """``engine_enabled(model, False)``, or nothing to do for a model that is stock PyTorch already (no
    engine layer, weights in their own layout): the shape-only models the pages analyse by the dozen."""
    if is_converted(model) or model.__dict__.get(_LAYOUT_FLAG):
        return engine_enabled(model, False)
    return nullcontext()


@contextmanager
def engine_enabled(
    model: nn.Module,
    enabled: bool = True,
    *,
    input_size: tuple[int, int, int] | None = None,
    channels_last: bool = False,
) -> Iterator[EngineReport]:
    """Run a block with ``model`` converted (``enabled=True``; ``input_size`` and ``channels_last`` as in
    :func:`convert`) or stock (``False``), then restore every layer's previous class, the flags found by
    tracing and the weights' layout."""
    layout = bool(model.__dict__.get(_LAYOUT_FLAG))
    before = {module: type(module) for module in model.modules()}
    flags = {
        (module, flag): module.__dict__[flag]
        for module in before
        for flag in _TRACED_FLAGS
        if flag in module.__dict__
    }
    try:
        if enabled:
            yield convert(model, input_size=input_size, channels_last=channels_last)
        else:
            revert(model)
            yield describe(model)
    finally:
        _set_channels_last(model, layout)
        for module, cls in before.items():
            module.__class__ = cls
            for flag in _TRACED_FLAGS:
                if (module, flag) in flags:
                    setattr(module, flag, flags[module, flag])
                else:
                    module.__dict__.pop(flag, None)
