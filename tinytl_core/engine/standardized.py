"""The engine's weight-standardised convolution (GroupNorm + WS: the public TinyTL code's batch-1 recipe).

A frozen :class:`~tinytl_core.norms.WSConv2d` is folded (its parameter holds the standardised weight,
computed once), so it runs as any frozen conv: :class:`~tinytl_core.engine.functions.FrozenConv2dFn`, no
input stored. A trainable one runs :class:`StandardizedConv2dFn`: it stores the conv's input (its weight
gradient needs it, rule 2) and nothing weight-sized besides the parameter itself; the standardised weight is
recomputed in backward. Stock autograd through ``standardize_weight`` would keep the standardised weight
and its centred copy alive until backward, for every such conv.
"""

from __future__ import annotations

import torch
from torch.autograd import Function

from tinytl_core.engine.functions import FrozenConv2dFn
from tinytl_core.engine.layers import ENGINE_CLASSES, EngineConv2d
from tinytl_core.norms import WSConv2d, standardize_weight

__all__ = ["EngineWSConv2d", "StandardizedConv2dFn"]


class StandardizedConv2dFn(Function):
    """``conv2d(x, standardize_weight(W))`` with a trainable ``W``: stores ``x`` (and ``W``, a parameter);
    backward recomputes the standardised weight and takes the gradient through the standardisation."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, eps):  # type: ignore[override]
        ctx.conv_args = (tuple(stride), tuple(padding), tuple(dilation), int(groups))
        ctx.eps = float(eps)
        ctx.has_bias = bias is not None
        with torch.no_grad():
            standardized = standardize_weight(weight, eps)
        ctx.save_for_backward(x, weight)
        return torch.nn.functional.conv2d(x, standardized, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv_args
        with torch.enable_grad():
            w = weight.detach().requires_grad_(True)
            standardized = standardize_weight(w, ctx.eps)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x, grad_std, grad_b = torch.ops.aten.convolution_backward(
            grad_out,
            x,
            standardized.detach(),
            [standardized.shape[0]] if ctx.has_bias else None,
            list(stride),
            list(padding),
            list(dilation),
            False,
            [0, 0],
            groups,
            [need_x, need_w, need_b and ctx.has_bias],
        )
        grad_w = None
        if need_w:
            (grad_w,) = torch.autograd.grad(standardized, w, grad_std)
        return grad_x, grad_w, grad_b, None, None, None, None, None


class EngineWSConv2d(EngineConv2d, WSConv2d):
    """:class:`~tinytl_core.norms.WSConv2d` on the engine: frozen (folded) as a frozen conv storing nothing;
    trainable through :class:`StandardizedConv2dFn` (its input only)."""

    _stock_class = WSConv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return WSConv2d.forward(self, x)
        x, padding = self._pad(x)
        if self.weight.requires_grad:
            args = (self.stride, padding, self.dilation, self.groups, self.ws_eps)
            return StandardizedConv2dFn.apply(x, self.weight, self.bias, *args)
        with torch.no_grad():  # folded: the parameter itself (not yet folded: standardised here)
            weight = self.standardized_weight()
        return FrozenConv2dFn.apply(x, weight, self.bias, self.stride, padding, self.dilation, self.groups)

    def engine_rule(self) -> str:
        if self.weight.requires_grad:
            return "input (trainable standardised weight: recomputed in backward)"
        return "nothing (frozen weight, standardised once)"


ENGINE_CLASSES[WSConv2d] = EngineWSConv2d
EngineWSConv2d.__name__ = WSConv2d.__name__
