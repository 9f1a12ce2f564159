"""The engine's backward kernels allocate what the memory model says, and no more.

Measured with PyTorch's profiler (``memory.timeline.profile_step``) around one layer's backward: the bytes
allocated at the peak above what existed before (the stored tensors and the output gradient). A stand-in
input, a contiguous copy or an extra index tensor shows up as a whole tensor more.
"""

from __future__ import annotations

import pytest
import torch

from tinytl_core.engine.functions import AvgPool2dFn, EdgePad2dFn, FrozenConv2dFn, MaxPool2dFn
from tinytl_core.memory.timeline import phase, profile_step

N, C, H = 4, 32, 64  # a 2 MB float input: temporaries are whole MBs, far above allocator noise
SLACK = 64 * 1024


def _backward_growth(fn, x: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Bytes the backward of ``fn(x)`` allocates at its peak above what is alive before it starts, the
    input gradient, and the output gradient it was given."""
    x = x.detach().requires_grad_(True)
    y = fn(x)
    grad = torch.randn_like(y)
    timeline = profile_step(lambda: _backward(y, grad), torch.device("cpu"))
    return timeline.peak_bytes - timeline.start_bytes, x.grad, grad


def _backward(y: torch.Tensor, grad: torch.Tensor) -> None:
    with phase("backward"):
        y.backward(grad)


def _inputs() -> list[torch.Tensor]:
    x = torch.randn(N, C, H, H)
    return [x, x.contiguous(memory_format=torch.channels_last)]


@pytest.mark.parametrize("x", _inputs(), ids=["contiguous", "channels_last"])
def test_max_pool_backward_holds_its_gradient_and_two_index_tensors(x):
    out_bytes = x.nbytes // 4  # 3x3 / 2 with padding 1: a quarter of the input
    growth, grad, grad_out = _backward_growth(
        lambda t: MaxPool2dFn.apply(t, (3, 3), (2, 2), (1, 1), (1, 1), False), x
    )
    # the input gradient, the flat int64 indices and the offsets they are built from (2 x 8-byte per output)
    assert growth <= x.nbytes + 2 * 2 * out_bytes + SLACK
    ref = x.detach().requires_grad_(True)
    torch.nn.functional.max_pool2d(ref, 3, 2, 1).backward(grad_out)
    assert torch.equal(grad, ref.grad)
    assert grad.stride() == ref.grad.stride()  # the input's layout, as stock


@pytest.mark.parametrize("x", _inputs(), ids=["contiguous", "channels_last"])
def test_avg_pool_and_edge_pad_backward_hold_only_their_gradient(x):
    growth, *_ = _backward_growth(
        lambda t: AvgPool2dFn.apply(t, (2, 2), (2, 2), (0, 0), False, True, None), x
    )
    assert growth <= x.nbytes + SLACK
    growth, *_ = _backward_growth(lambda t: EdgePad2dFn.apply(t, (1, 1, 1, 1), "reflect"), x)
    assert growth <= x.nbytes + SLACK


@pytest.mark.parametrize("x", _inputs(), ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("threads", [1, 2])
def test_pointwise_conv_input_gradient_is_one_product(x, threads):
    weight = torch.randn(2 * C, C, 1, 1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # one thread: conv_transpose2d's slow path copies input and output
    try:
        growth, grad, grad_out = _backward_growth(
            lambda t: FrozenConv2dFn.apply(t, weight, None, (1, 1), (0, 0), (1, 1), 1), x
        )
    finally:
        torch.set_num_threads(before)
    assert growth <= x.nbytes + SLACK
    expected = torch.nn.grad.conv2d_input(x.shape, weight, grad_out)
    assert torch.allclose(grad, expected, atol=1e-5)
    assert grad.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(
        memory_format=torch.channels_last
    )
