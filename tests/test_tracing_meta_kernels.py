"""The fast ``meta`` kernels (tinytl_core.tracing.shims) give what PyTorch's own meta kernels give: the same
shapes, dtypes and strides, and autograd saves the same tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinytl_core.tracing.saved import SavedTensorCounter
from tinytl_core.tracing.shims import FAST_META_KERNELS, disable_fast_meta_kernels, enable_fast_meta_kernels


def _x(*shape, dtype=torch.float32, channels_last=False):
    x = torch.empty(shape, device="meta", dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


def _w(c, dtype=torch.float32):
    return torch.empty(c, device="meta", dtype=dtype).requires_grad_()


def _stats(c, dtype=torch.float32):
    return torch.empty(c, device="meta", dtype=dtype), torch.empty(c, device="meta", dtype=dtype)


def _conv(x_shape, w_shape, d, cl, **kwargs):
    return F.conv2d(_x(*x_shape, dtype=d, channels_last=cl), _x(*w_shape, dtype=d), **kwargs)


CASES = {
    "conv": lambda d, cl: _conv((2, 8, 9, 9), (16, 8, 3, 3), d, cl, padding=1),
    "conv_bias_stride": lambda d, cl: F.conv2d(
        _x(2, 8, 9, 9, dtype=d, channels_last=cl), _x(16, 8, 3, 3, dtype=d), _w(16, d), stride=2
    ),
    "conv_depthwise": lambda d, cl: _conv((2, 8, 9, 9), (8, 1, 5, 5), d, cl, padding=2, groups=8),
    "conv_dilated_odd": lambda d, cl: _conv((2, 6, 11, 7), (4, 3, 3, 1), d, cl, dilation=2, groups=2),
    "conv_1x1": lambda d, cl: _conv((2, 8, 1, 1), (4, 8, 1, 1), d, cl),
    "conv_same": lambda d, cl: _conv((2, 8, 9, 8), (4, 8, 5, 3), d, cl, padding="same"),
    "conv_channels_last_weight": lambda d, cl: F.conv2d(
        _x(2, 8, 9, 9, dtype=d), _x(4, 8, 3, 3, dtype=d, channels_last=True)
    ),
    "conv_transposed": lambda d, cl: F.conv_transpose2d(
        _x(2, 8, 5, 5, dtype=d, channels_last=cl), _x(8, 4, 3, 3, dtype=d), stride=2, output_padding=1
    ),
    "conv_1d": lambda d, cl: F.conv1d(_x(2, 8, 9, dtype=d), _x(4, 8, 3, dtype=d)),
    "relu": lambda d, cl: F.relu(_x(2, 8, 5, 5, dtype=d, channels_last=cl)),
    "relu_": lambda d, cl: F.relu(_x(2, 8, 5, 5, dtype=d, channels_last=cl) * 1, inplace=True),
    "silu_": lambda d, cl: F.silu(_x(2, 8, 5, 5, dtype=d, channels_last=cl) * 1, inplace=True),
    "add_residual": lambda d, cl: torch.add(*[_x(2, 8, 5, 5, dtype=d, channels_last=cl) for _ in "ab"]),
    "add_alpha": lambda d, cl: torch.add(_x(2, 8, 5, 5, dtype=d), _x(2, 8, 5, 5, dtype=d), alpha=0.5),
    "add_pooled": lambda d, cl: torch.add(*[_x(2, 8, 1, 1, dtype=d, channels_last=cl) for _ in "ab"]),
    "add_broadcast": lambda d, cl: _x(2, 8, 5, 5, dtype=d, channels_last=cl) + _x(8, 1, 1, dtype=d),
    "add_scalar": lambda d, cl: _x(2, 8, 5, 5, dtype=d, channels_last=cl) + 1,
    "add_mixed_dtypes": lambda d, cl: _x(2, 8, 5, 5, dtype=d) + _x(2, 8, 5, 5, dtype=torch.float64),
    "add_mixed_layouts": lambda d, cl: _x(2, 8, 5, 5, dtype=d) + _x(2, 8, 5, 5, dtype=d, channels_last=True),
    "add_transposed": lambda d, cl: _x(4, 6, dtype=d).t() + _x(4, 6, dtype=d).t(),
    "add_ints": lambda d, cl: torch.add(*[torch.empty(2, 3, device="meta", dtype=torch.int64)] * 2),
    "mul_same": lambda d, cl: torch.mul(*[_x(2, 8, 5, 5, dtype=d, channels_last=cl) for _ in "ab"]),
    "mul_gate": lambda d, cl: _x(2, 8, 5, 5, dtype=d, channels_last=cl) * _x(2, 8, 1, 1, dtype=d),
    "mul_scalar": lambda d, cl: _x(2, 8, 5, 5, dtype=d, channels_last=cl) * 0.5,
    "relu6_": lambda d, cl: F.relu6(_x(2, 8, 5, 5, dtype=d, channels_last=cl) * 1, inplace=True),
    "hardtanh": lambda d, cl: F.hardtanh(_x(2, 8, 5, 5, dtype=d, channels_last=cl), -2.0, 2.0),
    "hardswish": lambda d, cl: F.hardswish(_x(2, 8, 5, 5, dtype=d, channels_last=cl)),
    "hardswish_": lambda d, cl: F.hardswish(_x(2, 8, 5, 5, dtype=d, channels_last=cl) * 1, inplace=True),
    "hardsigmoid": lambda d, cl: F.hardsigmoid(_x(2, 8, 1, 1, dtype=d, channels_last=cl)),
    "hardsigmoid_": lambda d, cl: F.hardsigmoid(_x(2, 8, 5, 5, dtype=d, channels_last=cl) * 1, inplace=True),
    "gelu": lambda d, cl: F.gelu(_x(2, 7, 16, dtype=d)),
    "gelu_tanh": lambda d, cl: F.gelu(_x(2, 7, 16, dtype=d), approximate="tanh"),
    "bn_train": lambda d, cl: F.batch_norm(
        _x(2, 8, 5, 5, dtype=d, channels_last=cl), *_stats(8, d), _w(8, d), _w(8, d), training=True
    ),
    "bn_eval": lambda d, cl: F.batch_norm(
        _x(2, 8, 5, 5, dtype=d, channels_last=cl), *_stats(8, d), _w(8, d), _w(8, d), training=False
    ),
    "bn_no_stats_no_affine": lambda d, cl: F.batch_norm(_x(3, 8, dtype=d), None, None, training=True),
    "bn_1d": lambda d, cl: F.batch_norm(_x(3, 8, 11, dtype=d), *_stats(8, d), _w(8, d), None, training=True),
    "group_norm": lambda d, cl: F.group_norm(
        _x(2, 8, 5, 5, dtype=d, channels_last=cl), 4, _w(8, d), _w(8, d)
    ),
    "layer_norm": lambda d, cl: F.layer_norm(_x(2, 7, 16, dtype=d), (16,), _w(16, d), _w(16, d)),
    "layer_norm_2d": lambda d, cl: F.layer_norm(_x(2, 7, 4, 4, dtype=d), (4, 4)),
    "bilinear": lambda d, cl: F.interpolate(
        _x(2, 8, 5, 5, dtype=d, channels_last=cl), size=(10, 9), mode="bilinear", align_corners=False
    ),
    "bilinear_scale": lambda d, cl: F.interpolate(
        _x(2, 8, 5, 5, dtype=d, channels_last=cl), scale_factor=2.0, mode="bilinear", align_corners=True
    ),
    "mean": lambda d, cl: _x(2, 8, 5, 5, dtype=d, channels_last=cl).mean((2, 3), keepdim=True),
    "mean_flat": lambda d, cl: _x(2, 8, 5, 5, dtype=d, channels_last=cl).mean(-1),
    "mean_all": lambda d, cl: _x(2, 8, dtype=d).mean(),
    "std": lambda d, cl: _x(8, 3, 3, 3, dtype=d, channels_last=cl).reshape(8, -1).std(1, keepdim=True),
    "std_all": lambda d, cl: _x(8, 3, dtype=d).std(),
    "normal_init": lambda d, cl: torch.nn.init.kaiming_normal_(
        torch.empty(4, 3, 3, 3, device="meta", dtype=d)
    ),
}


def _describe(case, dtype, channels_last):
    counter = SavedTensorCounter([])
    with counter:
        out = CASES[case](dtype, channels_last)
    outs = out if isinstance(out, tuple) else (out,)
    node = outs[0].grad_fn
    return (
        [(tuple(t.shape), t.dtype, t.stride()) for t in outs],
        type(node).__name__ if node is not None else None,
        [(s.shape, s.dtype, s.nbytes) for s in counter.records],
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_meta_kernels_match_pytorchs(case):
    results = {}
    try:
        for fast in (False, True):
            (enable_fast_meta_kernels if fast else disable_fast_meta_kernels)()
            results[fast] = [
                _describe(case, dtype, cl)
                for dtype in (torch.float32, torch.bfloat16)
                for cl in (False, True)
            ]
    finally:
        enable_fast_meta_kernels()
    assert results[True] == results[False]


def test_every_fast_kernel_is_covered():
    covered = {
        "convolution", "relu", "relu_", "silu_", "add.Tensor", "mul.Tensor",
        "hardtanh", "hardtanh_", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "gelu",
        "normal_", "mean.dim", "std.correction", "native_batch_norm", "native_group_norm",
        "native_layer_norm", "upsample_bilinear2d",
    }  # fmt: skip
    assert set(FAST_META_KERNELS) - covered <= {"gelu_"}
