"""Partial-channel weight updates (the sparse update of Lin et al., NeurIPS 2022), exactly.

A weight trained on ``k`` of its ``O`` output channels is split into two parameters: ``weight_train``
(the first ``k`` rows, trainable) and ``weight_frozen`` (the other ``O - k`` rows, frozen). Only the slice
is a trainable parameter, so only its gradient and its optimizer state exist (``k / O`` of the full
weight's bytes); ``weight`` is a read-only view of both, concatenated, for code that reads it.

:func:`split_weight` turns a stock ``nn.Conv2d`` or ``nn.Linear`` into :class:`PartialConv2d` /
:class:`PartialLinear` in place (its ``__class__`` is swapped, the bias and every other attribute stay).
Their stock forward runs through autograd on the concatenated weight (it keeps the input and that
weight, and computes the whole weight's gradient before keeping the slice's rows); the training engine's
versions (:class:`EnginePartialConv2d`, :class:`EnginePartialLinear`, swapped in by
:func:`tinytl_core.engine.convert`) store the input once and compute the input gradient and only the
trained rows of the weight gradient.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import Function

from tinytl_core.engine.functions import FrozenConv2dFn, _channels_last
from tinytl_core.engine.layers import ENGINE_CLASSES, EngineModule, stock_class

__all__ = [
    "EnginePartialConv2d",
    "EnginePartialLinear",
    "PartialConv2d",
    "PartialLinear",
    "PartialUpdateError",
    "TRAINED_ROWS",
    "partial_rows",
    "split_weight",
]

TRAINED_ROWS = "weight_train"
"""Name of the trainable slice parameter (the memory rules read it as a trainable weight)."""
FROZEN_ROWS = "weight_frozen"


class PartialUpdateError(ValueError):
    """A layer cannot be updated on part of its output channels; the message says why."""


def partial_rows(module: nn.Module, ratio: float) -> int:
    """Output channels trained at update ``ratio`` of ``module``'s weight: ``ceil(ratio * O)``, rounded up
    to whole groups of a grouped convolution (each group's rows read their own input channels)."""
    out = module.weight.shape[0]
    groups = max(1, getattr(module, "groups", 1))
    rows = max(1, math.ceil(ratio * out))
    if groups > 1:
        per_group = out // groups
        rows = math.ceil(rows / per_group) * per_group
    return min(out, rows)


class _PartialWeight:
    """Mixin: ``weight`` is the trainable slice and the frozen rows, concatenated (read-only)."""

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return torch.cat((getattr(self, TRAINED_ROWS), getattr(self, FROZEN_ROWS)))

    @property
    def trained_rows(self) -> int:
        """How many output channels (the first ones) train."""
        return getattr(self, TRAINED_ROWS).shape[0]


class PartialConv2d(_PartialWeight, nn.Conv2d):
    """``nn.Conv2d`` whose first ``trained_rows`` output channels train (stock autograd)."""


class PartialLinear(_PartialWeight, nn.Linear):
    """``nn.Linear`` whose first ``trained_rows`` output features train (stock autograd)."""


_PARTIAL_OF = {nn.Conv2d: PartialConv2d, nn.Linear: PartialLinear}


def split_problem(module: nn.Module, rows: int) -> str | None:
    """Why :func:`split_weight` would refuse ``module`` and ``rows`` (None: it would not), without
    changing anything: a whole scheme is checked before any layer is split."""
    if isinstance(module, _PartialWeight):
        return "the layer is already split into trained and frozen rows"
    base = stock_class(module)
    if base not in _PARTIAL_OF:
        return f"a partial update needs a plain Conv2d or Linear layer, not {base.__name__}"
    if base is nn.Conv2d and (module.padding_mode != "zeros" or isinstance(module.padding, str)):
        return "a partial update needs a convolution with numeric zero padding"
    out = module.weight.shape[0]
    if isinstance(rows, bool) or not isinstance(rows, numbers.Integral) or not 0 < rows < out:
        return f"rows to train must be a whole number between 1 and {out - 1}, got {rows!r}"
    groups = max(1, getattr(module, "groups", 1))
    per_group = out // groups
    if groups > 1 and rows % per_group:
        return f"rows to train must be whole groups of {per_group} output channels"
    return None


def split_weight(module: nn.Module, rows: int) -> nn.Module:
    """Make ``module`` (an ``nn.Conv2d`` or ``nn.Linear``, stock or engine) train only the first ``rows``
    of its weight's output channels, in place; returns it. The bias (if any) keeps its ``requires_grad``.

    Raises :class:`PartialUpdateError` for other layers, non-zero padding modes, or ``rows`` out of range
    (:func:`split_problem`).
    """
    problem = split_problem(module, rows)
    if problem is not None:
        raise PartialUpdateError(problem)
    rows = int(rows)  # (a NumPy integer too)
    base = stock_class(module)
    data = module.weight.detach()
    module.__class__ = base  # an engine layer back to stock first; convert() swaps it again
    del module._parameters["weight"]
    module.register_parameter(TRAINED_ROWS, nn.Parameter(data[:rows].clone(), requires_grad=True))
    module.register_parameter(FROZEN_ROWS, nn.Parameter(data[rows:].clone(), requires_grad=False))
    module.__class__ = _PARTIAL_OF[base]
    return module


def _layout_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` in ``like``'s memory format (the concatenated weight keeps the slices' channels-last)."""
    return t.contiguous(
        memory_format=torch.channels_last if _channels_last(like) else torch.contiguous_format
    )


@dataclass(frozen=True)
class _FrozenCtx:
    """What :meth:`FrozenConv2dFn.backward` reads from its context: the input gradient of a convolution is
    the same whether its weight trains or not, so the frozen conv's own backward computes it."""

    saved_tensors: tuple[torch.Tensor]
    conv_args: tuple
    input_shape: tuple[int, ...]
    needs_input_grad: tuple[bool, ...] = (True, False, False)


def _frozen_input_grad(grad_out: torch.Tensor, weight: torch.Tensor, ctx) -> torch.Tensor:
    return FrozenConv2dFn.backward(_FrozenCtx((weight,), ctx.conv_args, ctx.input_shape), grad_out)[0]


class PartialConv2dFn(Function):
    """``conv2d`` whose weight trains on its first ``k`` output channels: stores the input once (the
    trained rows' gradient reads it) and computes only those rows of the weight gradient."""

    @staticmethod
    def forward(ctx, x, w_train, w_frozen, bias, stride, padding, dilation, groups):  # type: ignore[override]
        ctx.conv_args = (tuple(stride), tuple(padding), tuple(dilation), int(groups))
        ctx.input_shape = tuple(x.shape)
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, w_train, w_frozen)
        weight = _layout_like(torch.cat((w_train, w_frozen)), w_train)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, w_train, w_frozen = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv_args
        grad_x = grad_w = grad_bias = None
        if ctx.needs_input_grad[0]:
            weight = _layout_like(torch.cat((w_train, w_frozen)), w_train)
            grad_x = _frozen_input_grad(grad_out, weight, ctx)
        if ctx.needs_input_grad[1]:
            rows = w_train.shape[0]
            per_group = (rows + w_frozen.shape[0]) // groups
            trained_groups = rows // per_group if groups > 1 else 1  # rows read only their groups' inputs
            channels = x.shape[1] // groups * trained_groups
            _, grad_w, _ = torch.ops.aten.convolution_backward(
                grad_out[:, :rows],
                x[:, :channels],
                w_train,
                None,
                stride,
                padding,
                dilation,
                False,
                [0, 0],
                trained_groups,
                [False, True, False],
            )
        if ctx.needs_input_grad[3]:
            grad_bias = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, None, grad_bias, None, None, None, None


class PartialLinearFn(Function):
    """``linear`` whose weight trains on its first ``k`` output features: stores the input once and
    computes only those rows of the weight gradient."""

    @staticmethod
    def forward(ctx, x, w_train, w_frozen, bias):  # type: ignore[override]
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, w_train, w_frozen)
        return F.linear(x, torch.cat((w_train, w_frozen)), bias)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, w_train, w_frozen = ctx.saved_tensors
        grad_x = grad_w = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ torch.cat((w_train, w_frozen))
        if ctx.needs_input_grad[1]:
            rows = w_train.shape[0]
            grad_w = grad_out[..., :rows].reshape(-1, rows).t() @ x.reshape(-1, x.shape[-1])
        if ctx.needs_input_grad[3]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, grad_w, None, grad_bias


def _rule(module: _PartialWeight) -> str:
    out = module.trained_rows + getattr(module, FROZEN_ROWS).shape[0]
    if not getattr(module, TRAINED_ROWS).requires_grad:
        return f"nothing (partial weight, {module.trained_rows} of {out} rows, frozen now)"
    return f"input once; gradient and optimizer state for {module.trained_rows} of {out} output rows"


class EnginePartialConv2d(EngineModule, PartialConv2d):
    """:class:`PartialConv2d` on the engine: input stored once, gradient of the trained rows only."""

    _stock_class = PartialConv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return super().forward(x)
        if not getattr(self, TRAINED_ROWS).requires_grad:  # frozen for now: the frozen conv's rule
            return FrozenConv2dFn.apply(
                x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
            )
        w_train, w_frozen = getattr(self, TRAINED_ROWS), getattr(self, FROZEN_ROWS)
        return PartialConv2dFn.apply(
            x, w_train, w_frozen, self.bias, self.stride, self.padding, self.dilation, self.groups
        )

    def engine_rule(self) -> str:
        return _rule(self)


class EnginePartialLinear(EngineModule, PartialLinear):
    """:class:`PartialLinear` on the engine: input stored once, gradient of the trained rows only."""

    _stock_class = PartialLinear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or not getattr(self, TRAINED_ROWS).requires_grad:
            return super().forward(x)
        return PartialLinearFn.apply(x, getattr(self, TRAINED_ROWS), getattr(self, FROZEN_ROWS), self.bias)

    def engine_rule(self) -> str:
        return _rule(self)


for _cls in (EnginePartialConv2d, EnginePartialLinear):
    ENGINE_CLASSES[_cls._stock_class] = _cls
    _cls.__name__ = _cls._stock_class.__name__  # tables read the same, as for the other engine layers
