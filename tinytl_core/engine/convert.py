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
from contextlib import contextmanager
from dataclasses import dataclass

import torch.nn as nn

from tinytl_core.engine.layers import (
    ENGINE_CLASSES,
    EngineModule,
    MaskedActivation,
    stock_class,
)
from tinytl_core.layer_kinds import is_frozen, stock_rule
from tinytl_core.norms import freeze_statistics, unfreeze_statistics
from tinytl_core.tracing import trace_model

__all__ = ["EngineLayer", "EngineReport", "convert", "describe", "engine_enabled", "is_converted", "revert"]


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


def convert(model: nn.Module, *, input_size: tuple[int, int, int] | None = None) -> EngineReport:
    """Turn every supported layer of ``model`` into its engine layer, in place; returns the report.

    Forward outputs are unchanged and gradients equal stock PyTorch's. Unsupported layers (any class the
    engine has no exact rule for, including subclasses of supported ones) stay stock.

    ``input_size`` ``(C, H, W)``: also trace one forward on the ``meta`` device (nothing allocated) to find
    the ReLU-like activations whose output a later layer stores in full anyway (a conv whose weight trains,
    a squeeze-excitation multiply); those keep that shared output instead of a 1-bit mask, which then
    costs nothing. Without it every such activation keeps a mask (exact, 1 bit per element more there).
    The finding reflects the current mode: convert again after changing what trains.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"convert expects a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        _swap(module, lambda m: ENGINE_CLASSES.get(type(m)))
        if isinstance(module, MaskedActivation):
            module.keep_output = False  # a finding of an earlier conversion may not hold any more
    if input_size is not None:
        _share_stored_outputs(model, input_size)
    return describe(model)


def _share_stored_outputs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Set ``keep_output`` on masked activations all of whose calls' outputs are stored in full by other
    layers (found by a meta-device trace of one training forward); returns how many."""
    activations = [m for m in model.modules() if isinstance(m, MaskedActivation)]
    if not activations:
        return 0
    try:
        trace = trace_model(model, tuple(input_size), 2, allow_real=False)  # 2: BatchNorm needs > 1 value
    except ValueError as exc:  # cannot run on meta: masks everywhere are exact, just not always minimal
        warnings.warn(f"engine: could not trace the model to share stored outputs ({exc}); "
                      "ReLU-like layers keep 1-bit masks", stacklevel=3)
        return 0
    stored = {(s.key, s.version) for s in trace.records}  # every (layer, tensor) stored
    verdict: dict[int, bool] = {}
    for row in trace.rows:
        if isinstance(row.module, MaskedActivation) and row.outputs:
            out = row.outputs[0]
            verdict[id(row.module)] = verdict.get(id(row.module), True) and (out.key, out.version) in stored
    for module in activations:
        module.keep_output = verdict.get(id(module), False)
    return sum(module.keep_output for module in activations)


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
    return sum(
        _swap(module, lambda m: stock_class(m) if isinstance(m, EngineModule) else None)
        for module in model.modules()
    )


def is_converted(model: nn.Module) -> bool:
    """Whether any layer of ``model`` runs on the engine."""
    return any(isinstance(module, EngineModule) for module in model.modules())


@contextmanager
def engine_enabled(
    model: nn.Module, enabled: bool = True, *, input_size: tuple[int, int, int] | None = None
) -> Iterator[EngineReport]:
    """Run a block with ``model`` converted (``enabled=True``; ``input_size`` as in :func:`convert`) or
    stock (``False``), then restore every layer's previous class and output-sharing flag."""
    before = {module: type(module) for module in model.modules()}
    flags = {module: module.__dict__["keep_output"] for module in before if "keep_output" in module.__dict__}
    try:
        if enabled:
            yield convert(model, input_size=input_size)
        else:
            revert(model)
            yield describe(model)
    finally:
        for module, cls in before.items():
            module.__class__ = cls
            if module in flags:
                module.keep_output = flags[module]
            else:
                module.__dict__.pop("keep_output", None)
