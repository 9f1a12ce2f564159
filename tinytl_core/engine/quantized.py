"""8-bit frozen weights for real: frozen conv and linear weights as 8-bit codes, dequantised on the fly.

TinyTL stores its frozen weights at 8 bits (k-means with 256 centroids per layer, as Deep Compression) and
counts them as one byte each. :func:`quantize_frozen_weights` does it to a model, in place: each frozen
weight of a Conv2d or Linear (:func:`tinytl_core.layer_kinds.quantizable_weight`) is replaced by a
``weight_codes`` buffer (``uint8``, the weight's shape and layout) and a small ``weight_table`` buffer, and
the float weight is dropped (nothing references it any more, so its memory is freed). Two schemes:

=====================  ================================================================================
scheme                 codes and table
=====================  ================================================================================
``kmeans`` (default)   one 256-entry codebook per layer (1 KB), centroids from a 1-D k-means: initial
                       centroids half at quantiles of the weights, half evenly spread over their range
                       (so outliers keep a centroid), then Lloyd iterations
``linear``             per output channel, 256 evenly spaced levels between its min and max (table: scale
                       and offset per channel, 8 bytes); error at most half a level, range / 510
=====================  ================================================================================

The engine layers (:class:`EngineQuantizedConv2d`, :class:`EngineQuantizedLinear`) dequantise in forward
and again in backward (the input gradient needs the weight) through autograd functions that store only the
codes (already resident) and no float weight. The stock classes (:class:`QuantizedConv2d`,
:class:`QuantizedLinear`, what ``revert`` gives) dequantise in forward through plain autograd, which keeps
each layer's float weight alive until backward. Biases, norms, the classifier and every trainable
parameter stay float. Quantising is one-way: a quantised weight cannot train again (prepare a new model).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import Function

from tinytl_core.engine.layers import ENGINE_CLASSES, EngineModule
from tinytl_core.layer_kinds import quantizable_weight
from tinytl_core.norms import sync_standardization

__all__ = [
    "KMEANS_ITERATIONS",
    "EngineQuantizedConv2d",
    "EngineQuantizedLinear",
    "LayerQuantization",
    "QuantizationReport",
    "QuantizedConv2d",
    "QuantizedLinear",
    "WeightQuantization",
    "dequantize",
    "kmeans_codes",
    "linear_codes",
    "model_weight_bytes",
    "quantize_frozen_weights",
]

BITS = 8
LEVELS = 2**BITS
KMEANS_ITERATIONS = 20
"""Lloyd iterations at most (they stop earlier once no centroid moves)."""


class WeightQuantization(str, enum.Enum):
    """How frozen weights are coded in 8 bits (see the module docstring)."""

    KMEANS = "kmeans"
    LINEAR = "linear"

    @classmethod
    def parse(cls, value: str | WeightQuantization) -> WeightQuantization:
        """The scheme called ``value``; ``ValueError`` naming the choices otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"unknown weight quantization {value!r}; choose one of {', '.join(s.value for s in cls)}"
            ) from None


def check_weight_bits(bits: int) -> int:
    """Frozen-weight bits a run can use: 32 (float, no quantisation) or 8 (8-bit codes)."""
    if bits not in (BITS, 32):
        raise ValueError(f"frozen weight bits must be 8 (8-bit codes) or 32 (float), got {bits!r}")
    return bits


# ----------------------------------------------------------------------------------------------------
# Codes
# ----------------------------------------------------------------------------------------------------
def kmeans_codes(
    weight: torch.Tensor, iterations: int = KMEANS_ITERATIONS
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D k-means with 256 centroids over all of ``weight``'s values: ``(codes, centroids)`` with
    ``codes`` uint8 shaped and laid out like ``weight`` and ``centroids`` float32 ``(256,)``, sorted.

    Centroids start half at quantiles of the values and half evenly over their range; each Lloyd
    iteration assigns every value to its nearest centroid (a search among the midpoints) and moves each
    centroid to the mean of its values (an empty one stays put)."""
    values = weight.detach().float().contiguous().view(-1)
    ordered = values.sort().values
    n = ordered.numel()
    ranks = ((torch.arange(LEVELS // 2, device=values.device) + 0.5) * n / (LEVELS // 2)).long()
    spread = torch.linspace(float(ordered[0]), float(ordered[-1]), LEVELS - LEVELS // 2, device=values.device)
    centroids = torch.cat([ordered[ranks.clamp(max=n - 1)], spread]).sort().values
    # The values are sorted, so each centroid's cell is a run of them: its sum is a difference of prefix
    # sums (float64 for accuracy), and an iteration costs a search per centroid, not a pass over the values.
    prefix = torch.cat([ordered.new_zeros(1, dtype=torch.float64), ordered.double().cumsum(0)])
    for _ in range(iterations):
        starts = torch.searchsorted(ordered, (centroids[1:] + centroids[:-1]) / 2, right=True)
        starts = torch.cat([starts.new_zeros(1), starts])
        ends = torch.cat([starts[1:], starts.new_full((1,), n)])
        counts = ends - starts
        means = ((prefix[ends] - prefix[starts]) / counts.clamp(min=1)).to(centroids.dtype)
        moved = torch.where(counts > 0, means, centroids).sort().values
        if torch.equal(moved, centroids):
            break
        centroids = moved
    cells = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2).view(weight.shape)
    return torch.empty_like(weight, dtype=torch.uint8).copy_(cells), centroids


def linear_codes(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel, 256 evenly spaced levels from its min to its max: ``(codes, table)`` with
    ``table`` float32 ``(out_channels, 2)`` holding each channel's scale and offset."""
    w = weight.detach().float()
    flat = w.reshape(w.shape[0], -1)
    low, high = flat.min(1).values, flat.max(1).values
    scale = ((high - low) / (LEVELS - 1)).clamp(min=torch.finfo(torch.float32).tiny)
    view = (-1,) + (1,) * (w.dim() - 1)
    codes = ((w - low.view(view)) / scale.view(view)).round_().clamp_(0, LEVELS - 1)
    return codes.to(torch.uint8), torch.stack([scale, low], 1)


def dequantize(codes: torch.Tensor, table: torch.Tensor, scheme: WeightQuantization) -> torch.Tensor:
    """The float weight the codes stand for (a new tensor, freed when the caller drops it)."""
    if scheme is WeightQuantization.KMEANS:
        flat = table.index_select(0, codes.reshape(-1).int())
        return flat.view(codes.shape)
    view = (-1,) + (1,) * (codes.dim() - 1)
    return torch.addcmul(table[:, 1].view(view), codes.to(table.dtype), table[:, 0].view(view))


def _empty_codes(weight: torch.Tensor, scheme: WeightQuantization) -> tuple[torch.Tensor, torch.Tensor]:
    # meta device (shape-only analysis): the buffers' shapes without computing anything
    codes = torch.empty_like(weight, dtype=torch.uint8)
    rows = LEVELS if scheme is WeightQuantization.KMEANS else weight.shape[0]
    table = weight.new_empty(
        (rows,) if scheme is WeightQuantization.KMEANS else (rows, 2), dtype=torch.float32
    )
    return codes, table


# ----------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------
class _QuantizedWeight:
    """Mixin: ``weight`` is read from the ``weight_codes`` and ``weight_table`` buffers (dequantised at each
    read, so no float copy stays resident)."""

    weight_scheme: WeightQuantization = WeightQuantization.KMEANS

    @property
    def weight(self) -> torch.Tensor:
        return dequantize(self.weight_codes, self.weight_table, self.weight_scheme)  # type: ignore[attr-defined]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weight=8-bit {self.weight_scheme.value}"  # type: ignore[misc]


class QuantizedConv2d(_QuantizedWeight, nn.Conv2d):
    """A Conv2d whose frozen weight is stored as 8-bit codes (stock autograd: the dequantised weight is
    kept for backward)."""


class QuantizedLinear(_QuantizedWeight, nn.Linear):
    """A Linear whose frozen weight is stored as 8-bit codes (stock autograd: the dequantised weight is
    kept for backward)."""


class QuantizedConv2dFn(Function):
    """``conv2d`` with a weight given by its 8-bit codes: stores the codes and table (resident buffers, no
    float weight) and dequantises again in backward for the input gradient."""

    @staticmethod
    def forward(ctx, x, codes, table, scheme, bias, stride, padding, dilation, groups):  # type: ignore[override]
        ctx.conv_args = (tuple(stride), tuple(padding), tuple(dilation), int(groups))
        ctx.input_shape, ctx.scheme = tuple(x.shape), scheme
        ctx.save_for_backward(codes, table)
        return F.conv2d(x, dequantize(codes, table, scheme), bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        codes, table = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv_args
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            weight = dequantize(codes, table, ctx.scheme)
            out_hw, in_hw = grad_out.shape[-2:], ctx.input_shape[-2:]
            output_padding = tuple(
                i - ((o - 1) * s - 2 * p + d * (k - 1) + 1)
                for i, o, s, p, d, k in zip(in_hw, out_hw, stride, padding, dilation, weight.shape[-2:])
            )
            grad_x = F.conv_transpose2d(
                grad_out, weight, None, stride, padding, output_padding, groups, dilation
            )
        if ctx.needs_input_grad[4]:
            grad_bias = grad_out.sum((0, 2, 3))
        return grad_x, None, None, None, grad_bias, None, None, None, None


class QuantizedLinearFn(Function):
    """``linear`` with a weight given by its 8-bit codes: stores codes and table only."""

    @staticmethod
    def forward(ctx, x, codes, table, scheme, bias):  # type: ignore[override]
        ctx.scheme = scheme
        ctx.save_for_backward(codes, table)
        return F.linear(x, dequantize(codes, table, scheme), bias)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        codes, table = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ dequantize(codes, table, ctx.scheme)
        if ctx.needs_input_grad[4]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, None, None, None, grad_bias


def _recording(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


class EngineQuantizedConv2d(EngineModule, QuantizedConv2d):
    """:class:`QuantizedConv2d` on the engine: stores no input and no float weight."""

    _stock_class = QuantizedConv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias_trains = self.bias is not None and self.bias.requires_grad
        if not torch.is_grad_enabled() or not (x.requires_grad or bias_trains):
            return super().forward(x)
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)  # rare paddings: stock path (exact, keeps the dequantised weight)
        args = (self.stride, self.padding, self.dilation, self.groups)
        return QuantizedConv2dFn.apply(
            x, self.weight_codes, self.weight_table, self.weight_scheme, self.bias, *args
        )

    def engine_rule(self) -> str:
        return f"nothing (frozen weight as 8-bit {self.weight_scheme.value} codes, dequantised on the fly)"


class EngineQuantizedLinear(EngineModule, QuantizedLinear):
    """:class:`QuantizedLinear` on the engine: stores no float weight."""

    _stock_class = QuantizedLinear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias_trains = self.bias is not None and self.bias.requires_grad
        if not torch.is_grad_enabled() or not (_recording(x) or bias_trains):
            return super().forward(x)
        return QuantizedLinearFn.apply(x, self.weight_codes, self.weight_table, self.weight_scheme, self.bias)

    def engine_rule(self) -> str:
        return f"nothing (frozen weight as 8-bit {self.weight_scheme.value} codes, dequantised on the fly)"


ENGINE_CLASSES[QuantizedConv2d] = EngineQuantizedConv2d
ENGINE_CLASSES[QuantizedLinear] = EngineQuantizedLinear
for _cls in (EngineQuantizedConv2d, EngineQuantizedLinear):
    _cls.__name__ = _cls._stock_class.__name__


# ----------------------------------------------------------------------------------------------------
# Quantising a model
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerQuantization:
    """One quantised weight: its layer, size, bytes before and after (codes + table), and the error of the
    dequantised weight relative to the weight's range (largest and root-mean-square; NaN on ``meta``)."""

    layer: str
    numel: int
    float_bytes: int
    quantized_bytes: int
    max_error: float
    rms_error: float


@dataclass(frozen=True)
class QuantizationReport:
    """What :func:`quantize_frozen_weights` did."""

    scheme: WeightQuantization
    layers: tuple[LayerQuantization, ...]

    @property
    def float_bytes(self) -> int:
        """Bytes the quantised weights took as floats."""
        return sum(layer.float_bytes for layer in self.layers)

    @property
    def quantized_bytes(self) -> int:
        """Bytes they take now (codes and tables)."""
        return sum(layer.quantized_bytes for layer in self.layers)

    @property
    def max_error(self) -> float:
        """Largest error of any dequantised weight, relative to its layer's weight range."""
        return max((layer.max_error for layer in self.layers), default=0.0)

    def __str__(self) -> str:
        mb = 1e6
        return (
            f"{len(self.layers)} frozen weights as 8-bit {self.scheme.value} codes: "
            f"{self.float_bytes / mb:.2f} MB -> {self.quantized_bytes / mb:.2f} MB; largest error "
            f"{100 * self.max_error:.2f}% of a layer's weight range"
        )


def quantized_table_bytes(weight_shape: tuple[int, ...], scheme: WeightQuantization) -> int:
    """Bytes of one quantised weight's table: 256 float32 centroids (k-means) or scale and offset per
    output channel (linear)."""
    return 4 * (LEVELS if scheme is WeightQuantization.KMEANS else 2 * weight_shape[0])


def quantize_frozen_weights(
    model: nn.Module,
    scheme: WeightQuantization | str = WeightQuantization.KMEANS,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> QuantizationReport:
    """Store every frozen Conv2d / Linear weight of ``model`` as 8-bit codes, in place (see the module
    docstring); trainable parameters are untouched. Engine layers stay engine layers (their quantised
    engine class), stock ones stock. A frozen weight-standardised conv is folded first, so its codes
    stand for the standardised weight it convolves with. ``progress(done, total)`` after each layer.
    On the ``meta`` device only the buffers' shapes are made (for memory analysis)."""
    scheme = WeightQuantization.parse(scheme)
    sync_standardization(model)
    todo = [
        (name, m)
        for name, m in model.named_modules()
        if quantizable_weight(m)
        and isinstance(m._parameters.get("weight"), torch.Tensor)
        and not m.weight.requires_grad
        and m.weight.is_floating_point()
    ]
    layers = []
    for done, (name, module) in enumerate(todo, 1):
        weight = module._parameters["weight"]
        if weight.is_meta:
            codes, table = _empty_codes(weight, scheme)
            errors = (math.nan, math.nan)
        else:
            codes, table = (kmeans_codes if scheme is WeightQuantization.KMEANS else linear_codes)(weight)
            errors = _errors(weight, dequantize(codes, table, scheme))
        layers.append(
            LayerQuantization(
                name,
                weight.numel(),
                weight.numel() * weight.element_size(),
                codes.numel() * codes.element_size() + table.numel() * table.element_size(),
                *errors,
            )
        )
        engine = isinstance(module, EngineModule)
        del module._parameters["weight"]  # the float weight is no longer referenced: freed
        del weight
        module.register_buffer("weight_codes", codes)
        module.register_buffer("weight_table", table)
        stock = QuantizedLinear if isinstance(module, nn.Linear) else QuantizedConv2d
        module.__class__ = ENGINE_CLASSES[stock] if engine else stock
        module.weight_scheme = scheme
        if progress is not None:
            progress(done, len(todo))
    return QuantizationReport(scheme, tuple(layers))


def _errors(weight: torch.Tensor, restored: torch.Tensor) -> tuple[float, float]:
    span = float(weight.max() - weight.min()) or 1.0
    diff = (weight.detach().float() - restored).abs()
    return float(diff.max()) / span, float(diff.pow(2).mean().sqrt()) / span


def model_weight_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers, each storage once: what its weights keep resident."""
    seen: dict[int, int] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr() or id(storage)] = storage.nbytes()
    return sum(seen.values())
