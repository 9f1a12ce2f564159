"""Kernel shims: where the ``meta`` kernels differ from the CPU ones, the shape trace follows the CPU, so
modelled stock bytes equal measured ones.

- Scaled dot-product attention takes the kernel the CPU would pick (flash attention when possible, not the
  math path the meta device always takes).
- Batch norm on running statistics does not count the per-channel statistics the meta kernel returns (CPU
  and CUDA return empty ones): :func:`drop_meta_only_saves`.
- BatchNorm training on one value per channel (batch size 1), which PyTorch refuses, is still traced, to
  give per-sample memory.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

from tinytl_core.layer_kinds import is_batch_norm
from tinytl_core.tracing.records import Row
from tinytl_core.tracing.saved import SavedTensor


def follow_cpu(func: Callable, args: tuple, kwargs: dict):
    """Call ``func(*args, **kwargs)`` as the CPU would compute it (shape-wise) when on ``meta``."""
    if func is F.scaled_dot_product_attention:
        return attention_as_on_cpu(args, kwargs)
    if func is F.batch_norm and _on_meta(args):
        return batch_norm_unchecked(args, kwargs)
    return func(*args, **kwargs)


_FLASH = 1  # torch._fused_sdp_choice: 0 math, 1 flash attention


def attention_as_on_cpu(args: tuple, kwargs: dict) -> torch.Tensor:
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
        q,
        k,
        v,
        bound.get("dropout_p", 0.0),
        bound.get("is_causal", False),
        attn_mask=mask,
        scale=bound.get("scale"),
    )[0]


def _row_stand_in(t: torch.Tensor) -> torch.Tensor:
    stride = (0,) * (t.dim() - 1) + (1,)
    like = torch.empty_strided(tuple(t.shape), stride, dtype=t.dtype, device="cpu")
    return like.requires_grad_(t.requires_grad)


def _on_meta(args: tuple) -> bool:
    return bool(args) and isinstance(args[0], torch.Tensor) and args[0].device.type == "meta"


def batch_norm_unchecked(args: tuple, kwargs: dict) -> torch.Tensor:
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
        b["input"],
        b["weight"],
        b["bias"],
        b["running_mean"],
        b["running_var"],
        b["training"],
        b["momentum"],
        b["eps"],
        torch.backends.cudnn.enabled,
    )


def drop_meta_only_saves(rows: Callable[[int], Row | None], saved: list[SavedTensor]) -> list[SavedTensor]:
    """Drop what only the meta kernels save, so meta numbers equal real ones.

    The meta kernel of batch norm on running statistics returns per-channel ``save_mean`` /
    ``save_invstd`` tensors where the CPU and CUDA kernels return empty ones. ``rows(owner)`` gives the
    row that saved a tensor (None for the loss).
    """
    kept = []
    for s in saved:
        row = rows(s.owner) if s.owner >= 0 else None
        if (
            row is not None
            and is_batch_norm(row.module)
            and not row.batch_statistics
            and s.shape == (row.module.num_features,)
        ):
            continue
        kept.append(s)
    return kept


# --- Fast meta kernels -------------------------------------------------------------------------------
# Some ``meta`` kernels are Python decompositions into dozens of primitive ops (bilinear upsampling,
# batch/group/layer norm, ReLU, hardtanh/ReLU6, hardswish, hardsigmoid, GELU, in-place SiLU, weight init,
# 2-D convolutions, and adds and products of two tensors laid out alike, e.g. residual adds): a slow
# call that only computes a shape. What a trace records does not depend on the kernel: autograd (a layer
# above ``Meta`` in the dispatcher) decides which tensors a node saves, and marks mutated arguments, before
# the kernel runs. So these replacements return empty tensors of the shape, dtype and layout the original
# meta kernels return (``tests/test_tracing_meta_kernels.py`` compares them op by op) and the traces stay
# exact, several times faster.


def _opmath(dtype: torch.dtype) -> torch.dtype:
    """The dtype PyTorch accumulates statistics in (float32 for half precision)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.preserve_format)


def _unary(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return _like(x)


def _unary_(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return x


def _native_batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps):
    if not training and (running_mean is None or running_var is None):
        raise RuntimeError("running_mean and running_var must not be None in eval mode")
    channels = x.shape[1] if x.dim() > 1 else 0
    stat = _opmath(x.dtype)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device).contiguous(
        memory_format=suggest_memory_format(x)
    )
    return (
        out,
        torch.empty(channels, dtype=stat, device=x.device),
        torch.empty(channels, dtype=stat, device=x.device),
    )


def _native_group_norm(x, weight, bias, n, c, hw, group, eps):
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous, as PyTorch's meta kernel
    return (
        out,
        torch.empty((n, group), dtype=x.dtype, device=x.device),
        torch.empty((n, group), dtype=x.dtype, device=x.device),
    )


def _native_layer_norm(x, normalized_shape, weight, bias, eps):
    stat = _opmath(x.dtype)
    axis = x.dim() - len(normalized_shape)
    stat_shape = (*x.shape[:axis], *([1] * len(normalized_shape)))
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return (
        out,
        torch.empty(stat_shape, dtype=stat, device=x.device),
        torch.empty(stat_shape, dtype=stat, device=x.device),
    )


def _upsample_2d(x, output_size, align_corners=None, scales_h=None, scales_w=None):
    shape = (*x.shape[:-2], *output_size)
    return torch.empty(shape, dtype=x.dtype, device=x.device).contiguous(
        memory_format=suggest_memory_format(x)
    )


def _reduced(x: torch.Tensor, dim, keepdim: bool, dtype: torch.dtype) -> torch.Tensor:
    dims = {d % max(x.dim(), 1) for d in dim} if dim else set(range(x.dim()))
    shape = [1 if i in dims else n for i, n in enumerate(x.shape) if keepdim or i not in dims]
    return torch.empty(shape, dtype=dtype, device=x.device)


def _mean_dim(x, dim, keepdim=False, *, dtype=None):
    return _reduced(x, dim, keepdim, dtype or x.dtype)


def _std_correction(x, dim=None, *, correction=None, keepdim=False):
    real = {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(x.dtype, x.dtype)
    return _reduced(x, dim, keepdim, real)


def _same_layout(a: object, b: object) -> bool:
    """Two floating tensors of one shape, dtype and dense layout: an elementwise op's output is then laid
    out as they are, with no broadcasting or type promotion to work out."""
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.is_floating_point()
        and a.dtype == b.dtype
        and a.shape == b.shape
        and a.stride() == b.stride()
        and (a.is_contiguous() or (a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last)))
    )


def _add(a, b, *, alpha=1):
    if _same_layout(a, b):  # a residual add; anything else takes PyTorch's own reference kernel
        return _like(a)
    return torch._refs.add(a, b, alpha=alpha)


def _mul(a, b):
    if _same_layout(a, b):
        return _like(a)
    return torch._refs.mul(a, b)


def _convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    """A 2-D convolution's output: the size formula, contiguous as PyTorch's meta kernel leaves it; any
    other convolution (transposed, 1-D/3-D, empty or mismatched channels, an input smaller than the
    kernel) takes PyTorch's own kernel, which also raises the errors."""
    if not transposed and x.dim() == 4 and weight.dim() == 4 and x.shape[1] == weight.shape[1] * groups > 0:
        size = [
            (x.shape[2 + i] + 2 * padding[i] - dilation[i] * (weight.shape[2 + i] - 1) - 1) // stride[i] + 1
            for i in (0, 1)
        ]
        if min(size) > 0:
            return x.new_empty((x.shape[0], weight.shape[0], *size))
    return _pytorch_meta_conv(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups)


def _pytorch_meta_conv(*args):
    from torch._meta_registrations import meta_conv

    return meta_conv(*args)


FAST_META_KERNELS: dict[str, Callable] = {
    "convolution": _convolution,
    "relu": _unary,
    "relu_": _unary_,
    "silu_": _unary_,
    "add.Tensor": _add,
    "mul.Tensor": _mul,
    "mean.dim": _mean_dim,
    "std.correction": _std_correction,
    "hardtanh": _unary,
    "hardtanh_": _unary_,
    "hardswish": _unary,
    "hardswish_": _unary_,
    "hardsigmoid": _unary,
    "hardsigmoid_": _unary_,
    "gelu": _unary,
    "gelu_": _unary_,
    "normal_": _unary_,
    "native_batch_norm": _native_batch_norm,
    "native_group_norm": _native_group_norm,
    "native_layer_norm": _native_layer_norm,
    "upsample_bilinear2d": _upsample_2d,
}
"""aten op (default overload) -> its fast ``meta`` kernel."""

_FAST_META: list[torch.library.Library] = []
_FAST_META_LOCK = threading.Lock()


def enable_fast_meta_kernels() -> None:
    """Register :data:`FAST_META_KERNELS` for the ``meta`` device (once per process; idempotent). Only the
    ``meta`` device changes: real tensors run PyTorch's kernels as before."""
    with _FAST_META_LOCK:
        if _FAST_META:
            return
        lib = torch.library.Library("aten", "IMPL")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "overriding a previously registered kernel": intended
            for name, kernel in FAST_META_KERNELS.items():
                try:
                    lib.impl(name, kernel, "Meta")
                except RuntimeError:
                    # Older PyTorch (2.11, as on the GPU machines' image where the CUDA checks run) refuses
                    # to override a meta kernel it registered in Python (convolution's): that op keeps
                    # PyTorch's kernel, slower on meta but the same shapes.
                    continue
        _FAST_META.append(lib)


def disable_fast_meta_kernels() -> None:
    """Restore PyTorch's own ``meta`` kernels (the tests compare both)."""
    with _FAST_META_LOCK:
        while _FAST_META:
            _FAST_META.pop()._destroy()
