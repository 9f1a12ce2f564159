"""Autograd functions that store only what their gradients need.

Every function keeps its tensors through ``ctx.save_for_backward`` and nothing else (shapes and
hyper-parameters, which are not data, are plain attributes), so a ``saved_tensors_hooks`` measurement
sees exactly what the engine stores. Forward outputs are computed by the same kernels as the stock
layers, and gradients by the same backward kernels wherever PyTorch exposes them.

What each function stores for backward:

============================  ==========================================================================
function                      stored
============================  ==========================================================================
:class:`FrozenConv2dFn`        the weight (a parameter, not an activation) when the input needs a gradient
:class:`FrozenNormFn`          nothing, or the input when the scale trains (its gradient needs x-hat);
                               in place over its input when no one reads that input afterwards
:class:`FrozenNormActFn`       the norm input only (trainable scale); the activation is recomputed
:class:`MaskedActivationFn`    a 1-bit packed mask (ReLU, ReLU6, Hardtanh, LeakyReLU, Hardsigmoid; with
                               ``approx``: Hardswish / SiLU / GELU's sign, MobileTL's approximate backward)
:class:`BitDropoutFn`          a 1-bit packed keep mask
:class:`MaxPool2dFn`           the arg-max offset inside each window, 4 bits per output for 3x3
:class:`AvgPool2dFn`           nothing
:class:`EdgePad2dFn`           nothing (reflect / replicate padding; stock keeps the input)
============================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.autograd import Function

from tinytl_core.engine.bitmask import bits_for, pack_bits, pack_uint, unpack_bits, unpack_uint
from tinytl_core.layer_kinds import ACTIVATIONS, MASKED, MaskRule

__all__ = [
    "AvgPool2dFn",
    "BitDropoutFn",
    "EdgePad2dFn",
    "FrozenConv2dFn",
    "FrozenNormActFn",
    "FrozenNormFn",
    "MASKED_KINDS",
    "MaskedActivationFn",
    "MaxPool2dFn",
]


_NHWC = (0, 2, 3, 1)  # channels-last memory order of an NCHW tensor
_NCHW = (0, 3, 1, 2)  # and back


def _memory_order(x: torch.Tensor) -> tuple[int, ...] | None:
    """``_NHWC`` when ``x`` is laid out channels-last (and not also plain contiguous), else None."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return _NHWC
    return None


def _unpack_in_order(
    packed: torch.Tensor, shape: Sequence[int], order: tuple[int, ...] | None, dtype: torch.dtype
) -> torch.Tensor:
    """Unpack a mask packed by :func:`pack_bits` in the memory order ``order`` into an NCHW-shaped view."""
    if order is None:
        return unpack_bits(packed, tuple(shape), dtype)
    n, c, h, w = shape
    return unpack_bits(packed, (n, h, w, c), dtype).permute(_NCHW)


def _channel_view(vec: torch.Tensor, ndim: int) -> torch.Tensor:
    """``(C,)`` -> ``(1, C, 1, ...)`` so it broadcasts over an ``ndim``-D activation."""
    return vec.view((1, -1) + (1,) * (ndim - 2))


# ----------------------------------------------------------------------------------------------------
# Convolution with a frozen weight
def _pointwise(weight: torch.Tensor, stride, padding, dilation, groups: int) -> bool:
    """A 1x1 convolution with stride 1, no padding and one group: a matrix product over channels."""
    return (
        groups == 1
        and tuple(weight.shape[-2:]) == (1, 1)
        and tuple(stride) == (1, 1)
        and tuple(padding) == (0, 0)
        and tuple(dilation) == (1, 1)
    )


def _pointwise_input_grad(grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Input gradient of a pointwise convolution as one matrix product written straight into a tensor in
    the output gradient's layout. (``conv_transpose2d`` takes a slow path for 1x1 kernels on one CPU
    thread at small batch sizes, which copies its input and output into contiguous buffers.)"""
    n, c_out, h, w = grad_out.shape
    w2 = weight.reshape(c_out, -1)  # (C_out, C_in)
    if _channels_last(grad_out):  # NHWC in memory: (N*H*W, C_out) @ (C_out, C_in)
        rows = grad_out.permute(0, 2, 3, 1).reshape(-1, c_out)
        return (rows @ w2).view(n, h, w, -1).permute(0, 3, 1, 2)
    return torch.matmul(w2.t(), grad_out.reshape(n, c_out, h * w)).view(n, -1, h, w)


# ----------------------------------------------------------------------------------------------------
class FrozenConv2dFn(Function):
    """``conv2d`` whose weight does not train: the input gradient needs only the weight, the bias
    gradient only the output gradient, so the input is not stored (stock autograd stores it)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):  # type: ignore[override]
        if ctx.needs_input_grad[1]:
            raise ValueError("FrozenConv2dFn is for frozen weights; use F.conv2d when the weight trains")
        ctx.conv_args = (tuple(stride), tuple(padding), tuple(dilation), int(groups))
        ctx.input_shape = tuple(x.shape)
        ctx.save_for_backward(weight if ctx.needs_input_grad[0] else None)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv_args
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0] and _pointwise(weight, stride, padding, dilation, groups):
            grad_x = _pointwise_input_grad(grad_out, weight)
        elif ctx.needs_input_grad[0]:
            # The input gradient is the transposed convolution of the output gradient. Computed directly:
            # aten.convolution_backward materialises its (unused) input for depthwise kernels on the CPU,
            # an extra input-sized buffer at the step's peak.
            out_hw, in_hw = grad_out.shape[-2:], ctx.input_shape[-2:]
            kernel = weight.shape[-2:]
            output_padding = tuple(
                i - ((o - 1) * s - 2 * p + d * (k - 1) + 1)
                for i, o, s, p, d, k in zip(in_hw, out_hw, stride, padding, dilation, kernel)
            )
            grad_x = F.conv_transpose2d(
                grad_out, weight, None, stride, padding, output_padding, groups, dilation
            )
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum((0, 2, 3))
        return grad_x, None, grad_bias, None, None, None, None


# ----------------------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------------------
MASKED_KINDS: frozenset[str] = MASKED
"""Activation kinds :class:`MaskedActivationFn` handles with a 1-bit mask (from the layer-kinds table)."""


class MaskedActivationFn(Function):
    """ReLU / ReLU6 (hardtanh 0..max) / LeakyReLU / Hardsigmoid storing a 1-bit packed mask.

    Their input gradients are ``grad * c1`` where the bit is set and ``grad * c0`` elsewhere, so one bit
    per element is all backward needs (stock autograd stores a 32-bit tensor). ``inplace`` overwrites the
    input like the stock ``inplace=True`` modules.

    ``keep_output``: store the output itself instead of the mask, for when a later layer stores that very
    tensor anyway (e.g. a conv whose weight trains): then it costs nothing extra, where a mask would cost
    1 bit per element more. The mask is recomputed from the output (``y > 0`` iff ``x > 0``, ``0 < y < max``
    iff ``0 < x < max``), so this is exact for ReLU, ReLU6 / Hardtanh(0, max) and LeakyReLU with a
    positive slope; other kinds ignore the flag.

    ``own_grad``: the output's one consumer is a convolution, whose backward hands this layer a gradient
    no one else holds; backward then masks that gradient in place instead of allocating another.

    ``approx``: MobileTL's approximate backward for a smooth activation (Hardswish, SiLU, GELU): the mask
    is the sign of the input (:attr:`tinytl_core.layer_kinds.Activation.sign_mask`) and the input gradient
    ``grad * (x > 0)`` -- not the exact derivative, by design. The forward output is exact.
    """

    @staticmethod
    def forward(ctx, x, kind, param, inplace, keep_output=False, own_grad=False, approx=False):  # type: ignore[override]
        ctx.kind, ctx.param, ctx.shape, ctx.own_grad = kind, float(param), x.shape, bool(own_grad)
        ctx.approx = bool(approx)
        rule = _rule(kind, ctx.approx)
        output_tells = (
            not ctx.approx and ACTIVATIONS[kind].mask_from_output and (kind != "leaky_relu" or param > 0)
        )
        ctx.from_output = bool(keep_output) and output_tells
        need = ctx.needs_input_grad[0]
        # The mask is taken before an in-place forward overwrites x, packed in x's memory order so that
        # backward unpacks it in the layout of the gradient (no channels-last <-> NCHW copies).
        ctx.order = _memory_order(x)
        bits = rule.bit(x, param) if need and not ctx.from_output else None
        mask = None if bits is None else pack_bits(bits if ctx.order is None else bits.permute(ctx.order))
        if inplace:
            ctx.mark_dirty(x)
            out = rule.forward_(x, param)
        else:
            out = ACTIVATIONS[kind].forward(x, param)
        ctx.save_for_backward(out if need and ctx.from_output else mask)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (saved,) = ctx.saved_tensors
        rest = (None,) * 6
        if ctx.from_output:  # the stock backward kernel, fed with the output: same region test
            return ACTIVATIONS[ctx.kind].backward(grad_out, saved, ctx.param), *rest
        rule = _rule(ctx.kind, ctx.approx)
        if ctx.own_grad and not rule.off_is_param:
            # grad_out is this layer's alone (its one consumer, a convolution, made it fresh): zero it
            # outside the mask in place, reading a 1-byte mask -- no activation-sized buffer at all.
            off = _unpack_in_order(saved, ctx.shape, ctx.order, torch.bool).logical_not_()
            grad = grad_out.masked_fill_(off, 0.0)
        else:
            bits = _unpack_in_order(saved, ctx.shape, ctx.order, grad_out.dtype)
            if rule.off_is_param:  # LeakyReLU's own backward kernel, written over the unpacked bits
                grad = torch.ops.aten.leaky_relu_backward.grad_input(
                    grad_out, bits, ctx.param, False, grad_input=bits
                )
                return grad, *rest
            # grad where the bit is set, else +0 (as stock; no NaN from inf * 0), written over the unpacked
            # bits: one activation-sized allocation, like the stock backward.
            grad = torch.ops.aten.threshold_backward.grad_input(grad_out, bits, 0.5, grad_input=bits)
        # The stock kernels compute grad * c with c rounded to the tensor's dtype: same here.
        return (grad if rule.on == 1.0 else grad.mul_(rule.on)), *rest


def _rule(kind: str, approx: bool) -> MaskRule:
    """The exact mask rule of a mask activation, or MobileTL's sign rule of a smooth one (``approx``)."""
    entry = ACTIVATIONS[kind]
    rule = entry.sign_mask if approx else entry.mask
    if rule is None:
        raise ValueError(f"activation {kind!r} has no {'sign-mask' if approx else 'mask'} rule")
    return rule


# ----------------------------------------------------------------------------------------------------
# Normalisation with frozen statistics
# ----------------------------------------------------------------------------------------------------
def _norm_backward(ctx, grad_y, x, weight, mean, var, eps, inplace=False):
    """Gradients of ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with fixed mean / var.
    The scale's gradient (``dot(g, x - mean) * invstd``) comes from PyTorch's own eval-mode
    ``batch_norm`` backward kernel asked for the parameter gradients only, which reduces per channel
    without an activation-sized temporary. ``inplace``: ``grad_y`` is this layer's alone; the input
    gradient is scaled over it (last)."""
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    invstd = None if var is None else 1.0 / torch.sqrt(var + eps)
    grad_x = grad_w = grad_b = None
    if need_w:
        _, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            grad_y, x, weight, mean, var, None, None, False, eps, [False, True, need_b]
        )
    elif need_b:
        grad_b = grad_y.sum([0] + list(range(2, grad_y.ndim)))
    if need_x:
        scale = _channel_view(invstd if weight is None else invstd * weight, grad_y.ndim)
        grad_x = grad_y.mul_(scale) if inplace else grad_y * scale
    return grad_x, grad_w, grad_b


class FrozenNormFn(Function):
    """BatchNorm with frozen (running) statistics = a per-channel scale and shift.

    Stores nothing when only the shift (bias) trains: the input gradient needs the scale (parameter and
    running variance, which are module state, not activations) and the bias gradient only the output
    gradient. When the scale (weight) trains its gradient needs the normalised input, so the input is
    stored: one activation-sized tensor, like a trainable conv weight needs its input.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps, inplace=False, own_grad=False):  # type: ignore[override]
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.eps, ctx.own_grad = float(eps), bool(own_grad)
        ctx.save_for_backward(
            x if need_w else None,
            weight if need_x else None,
            mean if need_w else None,
            var if (need_x or need_w) else None,
        )
        if inplace and not need_w:
            # Nobody reads the input after this layer (found by convert's trace) and backward does not
            # need it: normalise over it, the same CPU/CUDA kernel writing its output into x (identical
            # values), so the step never holds input and output at once.
            ctx.mark_dirty(x)
            # Two buffers: the CUDA kernel writes the mean into save_mean, then the inverse std into
            # save_invstd, and normalises with both; one buffer for both made it subtract the inverse std.
            torch.ops.aten.native_batch_norm.out(
                x,
                weight,
                bias,
                mean,
                var,
                False,
                0.0,
                eps,
                out=x,
                save_mean=x.new_empty(0),
                save_invstd=x.new_empty(0),
            )
            return x
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, mean, var = ctx.saved_tensors
        grads = _norm_backward(ctx, grad_out, x, weight, mean, var, ctx.eps, inplace=ctx.own_grad)
        return (*grads, None, None, None, None, None)


class FrozenNormActFn(Function):
    """Frozen-statistics BatchNorm followed by an activation, when the norm's scale trains.

    The scale gradient needs the norm input ``x`` anyway, and ``act'(y)`` can be recomputed exactly from
    ``y = norm(x)``, so only ``x`` is stored (stock autograd stores ``x`` for the norm *and* the
    activation's input or output). The recomputation is one extra scale-and-shift in backward.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps, kind, param):  # type: ignore[override]
        if not ctx.needs_input_grad[1]:
            raise ValueError("FrozenNormActFn is for a trainable scale; use FrozenNormFn otherwise")
        ctx.eps, ctx.kind, ctx.param = float(eps), kind, float(param)
        # weight and bias are parameters (needed to recompute y), mean / var module buffers.
        ctx.save_for_backward(x, weight, bias, mean, var)
        return ACTIVATIONS[kind].forward(F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps), param)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, bias, mean, var = ctx.saved_tensors
        y = F.batch_norm(x, mean, var, weight, bias, False, 0.0, ctx.eps)  # bit-identical to forward's
        # The activation's gradient written over y, and the input gradient scaled over that: one buffer.
        grad_y = ACTIVATIONS[ctx.kind].backward_into(grad_out, y, ctx.param)
        grads = _norm_backward(ctx, grad_y, x, weight, mean, var, ctx.eps, inplace=True)
        return (*grads, None, None, None, None, None)


# ----------------------------------------------------------------------------------------------------
# Dropout and pooling
# ----------------------------------------------------------------------------------------------------
class BitDropoutFn(Function):
    """Training-mode dropout storing its keep mask as 1 bit per element (stock CPU dropout stores the
    float noise tensor). Draws its randomness exactly like stock CPU dropout, so under the same seed the
    output is identical."""

    @staticmethod
    def forward(ctx, x, p):  # type: ignore[override]
        noise = torch.empty_like(x).bernoulli_(1.0 - p)
        ctx.p, ctx.shape, ctx.order = float(p), x.shape, _memory_order(x)
        keep = noise.bool()  # packed in x's memory order: backward unpacks it in the gradient's layout
        mask = pack_bits(keep if ctx.order is None else keep.permute(ctx.order))
        ctx.save_for_backward(mask if ctx.needs_input_grad[0] else None)
        return x * noise.div_(1.0 - p)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (packed,) = ctx.saved_tensors
        noise = _unpack_in_order(packed, ctx.shape, ctx.order, grad_out.dtype).div_(1.0 - ctx.p)
        return noise.mul_(grad_out), None  # over the unpacked mask: one buffer


class MaxPool2dFn(Function):
    """Max pooling storing, per output element, the arg-max position inside its window, bit-packed in
    ``ceil(log2(window))`` bits rounded up to 1, 2, 4 or 8 (4 bits for a 3x3 window; stock autograd
    stores the input and int64 indices: 16 + 8 bytes per output for a 3x3/2 pool)."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode):  # type: ignore[override]
        out, idx = F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
        ctx.args = (kernel_size, stride, padding, dilation, ceil_mode)
        ctx.input_shape, ctx.output_shape = tuple(x.shape), tuple(out.shape)
        ctx.bits = bits_for(kernel_size[0] * kernel_size[1])
        ctx.channels_last = _channels_last(x)
        if not ctx.needs_input_grad[0]:
            ctx.save_for_backward(None)
            return out
        # The offset inside the window, computed in place: at most two int64 tensors of the output's size.
        row0, col0 = _window_origins(out.shape[-2:], stride, padding, idx)
        offset = torch.div(idx, x.shape[-1], rounding_mode="floor")  # input row
        idx.sub_(offset, alpha=x.shape[-1])  # input column
        offset.sub_(row0).div_(dilation[0], rounding_mode="floor").mul_(kernel_size[1])
        offset.add_(idx.sub_(col0).div_(dilation[1], rounding_mode="floor"))
        del idx
        # packed in the output's memory order, so backward rebuilds the indices in the gradient's layout
        # (the kernel would otherwise copy NCHW-ordered indices into its channels-last order)
        ctx.save_for_backward(pack_uint(offset.permute(_NHWC) if ctx.channels_last else offset, ctx.bits))
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (packed,) = ctx.saved_tensors
        kernel_size, stride, padding, dilation, ceil_mode = ctx.args
        # Flat input indices rebuilt in place: at most two int64 tensors of the output's size at once.
        offsets = unpack_uint(packed, grad_out.numel(), ctx.bits)
        if ctx.channels_last:
            n, c, h, w = ctx.output_shape
            offsets = offsets.view(n, h, w, c).permute(_NCHW).long()  # .long() keeps channels-last
        else:
            offsets = offsets.view(ctx.output_shape).long()
        row0, col0 = _window_origins(grad_out.shape[-2:], stride, padding, offsets)
        index = torch.div(offsets, kernel_size[1], rounding_mode="floor")
        offsets.sub_(index, alpha=kernel_size[1])  # column offset inside the window
        index.mul_(dilation[0]).add_(row0).mul_(ctx.input_shape[-1])
        index.add_(offsets.mul_(dilation[1]).add_(col0))
        del offsets
        # The kernel reads only its input's sizes and memory format, never its values: the gradient's own
        # (not yet written) buffer stands in for the input, so no input-sized placeholder is allocated.
        grad_x = _shape_only(grad_out, ctx.input_shape, ctx.channels_last)
        torch.ops.aten.max_pool2d_with_indices_backward.grad_input(
            grad_out, grad_x, kernel_size, stride, padding, dilation, ceil_mode, index, grad_input=grad_x
        )
        return grad_x, None, None, None, None, None


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _shape_only(like: torch.Tensor, shape: Sequence[int], channels_last: bool) -> torch.Tensor:
    """An uninitialised tensor shaped like a pooling or padding layer's input, in its memory format. Their
    backward kernels read only the input's sizes and format, never its values: this buffer stands in for
    the input and receives the input gradient (the kernels' ``grad_input=`` variants), so no input-sized
    placeholder is allocated besides the gradient."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(tuple(shape), dtype=like.dtype, device=like.device, memory_format=fmt)


def _window_origins(out_hw, stride, padding, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left input coordinates of every pooling window, broadcastable to ``(N, C, H_out, W_out)``."""
    oh = torch.arange(out_hw[0], device=like.device).view(-1, 1) * stride[0] - padding[0]
    ow = torch.arange(out_hw[1], device=like.device).view(1, -1) * stride[1] - padding[1]
    return oh, ow


class AvgPool2dFn(Function):
    """Average pooling storing nothing (its gradient needs only the input's shape; stock autograd stores
    the input itself)."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):  # type: ignore[override]
        ctx.args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        ctx.input_shape = tuple(x.shape)
        ctx.channels_last = _channels_last(x)
        ctx.save_for_backward()
        return F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        grad_x = _shape_only(grad_out, ctx.input_shape, ctx.channels_last)
        torch.ops.aten.avg_pool2d_backward.grad_input(grad_out, grad_x, *ctx.args, grad_input=grad_x)
        return grad_x, None, None, None, None, None, None


_EDGE_PAD_BACKWARD = {
    "reflect": torch.ops.aten.reflection_pad2d_backward,
    "replicate": torch.ops.aten.replication_pad2d_backward,
}


class EdgePad2dFn(Function):
    """Reflect / replicate padding of a 4D tensor storing nothing (its gradient needs only the input's
    shape; stock autograd stores the input). Used in front of frozen convs with those padding modes."""

    @staticmethod
    def forward(ctx, x, padding, mode):  # type: ignore[override]
        if mode not in _EDGE_PAD_BACKWARD or x.dim() != 4:
            raise ValueError(f"EdgePad2dFn pads 4D tensors, mode reflect or replicate; got {mode!r}")
        ctx.padding, ctx.mode = tuple(padding), mode
        ctx.input_shape, ctx.channels_last = tuple(x.shape), _channels_last(x)
        ctx.save_for_backward()
        return F.pad(x, padding, mode=mode)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        grad_x = _shape_only(grad_out, ctx.input_shape, ctx.channels_last)
        _EDGE_PAD_BACKWARD[ctx.mode].grad_input(grad_out, grad_x, list(ctx.padding), grad_input=grad_x)
        return grad_x, None, None
