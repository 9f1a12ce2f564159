"""Every kernel of the training engine allocates in backward what the memory model counts, and no more.

One class test: each case is one engine layer (or stock layer the engine leaves alone) at a small size, in
both memory layouts where it has a 4-D input. Its backward is profiled with PyTorch's profiler
(``memory.timeline.profile_step``): the bytes allocated at the peak above what existed before (stored
tensors, the output gradient), against :func:`tinytl_core.memory.accounting.backward_working_bytes` for the
same layer (less the output gradient, which exists before) plus its trainable parameters' gradients. A
stand-in input, a contiguous copy, an extra index tensor shows up as a whole tensor more.

The cases cover every engine class (:data:`tinytl_core.engine.ENGINE_CLASSES`) and every autograd function
the engine defines: a new kernel without a case fails :func:`test_every_engine_kernel_has_a_case`.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn as nn
from timm.layers import BatchNormAct2d
from timm.layers.conv2d_same import Conv2dSame
from torch.autograd import Function

import tinytl_core.engine as engine
from tinytl_core.engine import (
    ENGINE_CLASSES,
    convert,
    partial,
    quantize_frozen_weights,
    split_weight,
)
from tinytl_core.layer_kinds import ACTIVATIONS, is_frozen, set_sign_mask
from tinytl_core.memory.accounting import backward_working_bytes
from tinytl_core.memory.timeline import phase, profile_step
from tinytl_core.norms import WSConv2d, freeze_statistics, sync_standardization
from tinytl_core.tracing.step import preserved_state
from tinytl_core.tracing.tracer import run_traced

N, C, H = 4, 32, 32  # a 512 KB float activation: a stray copy is far above the allocator's noise
SLACK = 64 * 1024


@dataclass(frozen=True)
class Case:
    """One engine kernel in one configuration: ``make`` builds the stock layer (converted by the test),
    ``kernel`` names the engine function its backward must run through (None: stock autograd), ``flags``
    are the findings ``convert(model, input_size=...)`` would set in a network (e.g. ``own_grad``)."""

    name: str
    make: Callable[[], nn.Module]
    kernel: str | None
    flags: dict[str, bool] = field(default_factory=dict)
    linear: bool = False  # input (N, L, C) instead of (N, C, H, W)
    threads: int | None = None


def _conv(c_out=C, k=3, *, groups=1, train=False, bias=False, stride=1, **kw) -> nn.Conv2d:
    m = nn.Conv2d(C, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=bias, **kw)
    m.weight.requires_grad_(train)
    return m


def _frozen(m: nn.Module) -> nn.Module:
    return m.requires_grad_(False)


def _bn(*, scale=False) -> nn.BatchNorm2d:
    m = nn.BatchNorm2d(C)
    with torch.no_grad():
        m.running_var.uniform_(0.5, 2.0)
        m.running_mean.normal_()
    freeze_statistics(m)
    m.weight.requires_grad_(scale)
    return m


def _bn_act(*, scale: bool) -> BatchNormAct2d:
    m = BatchNormAct2d(C, act_layer=nn.ReLU6)
    freeze_statistics(m)
    m.weight.requires_grad_(scale)
    return m


def _sign(m: nn.Module) -> nn.Module:
    assert set_sign_mask(m, True)
    return m


def _partial(m: nn.Module, rows: int, *, train=True) -> nn.Module:
    split_weight(m, rows)
    getattr(m, partial.TRAINED_ROWS).requires_grad_(train)
    return m


def _quantized(m: nn.Module, scheme="kmeans") -> nn.Module:
    m.weight.requires_grad_(False)
    quantize_frozen_weights(m, scheme)
    return m


def _ws(*, train: bool) -> WSConv2d:
    m = _conv(train=train)
    m.__class__ = WSConv2d
    sync_standardization(m)
    return m


def _linear(*, train=False) -> nn.Linear:
    m = nn.Linear(C, 2 * C)
    m.weight.requires_grad_(train)
    return m


_MASKS = {
    "relu": nn.ReLU,
    "relu_inplace": lambda: nn.ReLU(inplace=True),
    "relu6": nn.ReLU6,
    "hardtanh": lambda: nn.Hardtanh(0.0, 4.0),
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "hardsigmoid": nn.Hardsigmoid,
}
_SMOOTH = {"hardswish": nn.Hardswish, "silu": nn.SiLU, "gelu": nn.GELU}

CASES: list[Case] = [
    *(Case(f"{n}-mask", make, "MaskedActivationFn") for n, make in _MASKS.items()),
    *(Case(f"{n}-own-grad", make, "MaskedActivationFn", {"own_grad": True}) for n, make in _MASKS.items()),
    Case("relu-output-kept", nn.ReLU, "MaskedActivationFn", {"keep_output": True}),
    *(Case(f"{n}-stock", make, None) for n, make in _SMOOTH.items()),
    *(Case(f"{n}-sign-mask", lambda m=make: _sign(m()), "MaskedActivationFn") for n, make in _SMOOTH.items()),
    Case("silu-sign-mask-own-grad", lambda: _sign(nn.SiLU()), "MaskedActivationFn", {"own_grad": True}),
    Case("conv3x3-frozen", _conv, "FrozenConv2dFn"),
    Case("conv3x3-frozen-bias-trains", lambda: _conv(bias=True), "FrozenConv2dFn"),
    Case("conv3x3-stride2-frozen", lambda: _conv(stride=2), "FrozenConv2dFn"),
    Case("depthwise-frozen", lambda: _conv(groups=C), "FrozenConv2dFn"),
    Case("grouped-frozen", lambda: _conv(groups=4), "FrozenConv2dFn"),
    Case("pointwise-frozen", lambda: _conv(2 * C, 1), "FrozenConv2dFn"),
    Case("pointwise-frozen-1-thread", lambda: _conv(2 * C, 1), "FrozenConv2dFn", threads=1),
    Case("reflect-pad-frozen", lambda: _conv(padding_mode="reflect"), "EdgePad2dFn"),
    Case("replicate-pad-frozen", lambda: _conv(padding_mode="replicate"), "EdgePad2dFn"),
    Case(
        "conv-same-frozen",
        lambda: Conv2dSame(C, C, 3, stride=2, bias=False).requires_grad_(False),
        "FrozenConv2dFn",
    ),
    Case("conv3x3-trainable", lambda: _conv(train=True), None),
    Case("depthwise-trainable", lambda: _conv(groups=C, train=True), None),
    Case("batchnorm-frozen", _bn, "FrozenNormFn"),
    Case("batchnorm-frozen-own-grad", _bn, "FrozenNormFn", {"own_grad": True}),
    Case("batchnorm-scale-trains", lambda: _bn(scale=True), "FrozenNormFn"),
    Case("batchnorm-scale-trains-own-grad", lambda: _bn(scale=True), "FrozenNormFn", {"own_grad": True}),
    Case("batchnorm-batch-statistics", lambda: nn.BatchNorm2d(C), None),
    Case("batchnorm-act-fused", lambda: _bn_act(scale=True), "FrozenNormActFn"),
    Case("batchnorm-act-frozen", lambda: _bn_act(scale=False), "FrozenNormFn"),
    Case("groupnorm", lambda: nn.GroupNorm(8, C), None),
    Case("layernorm", lambda: nn.LayerNorm(C), None, linear=True),
    Case("dropout", lambda: nn.Dropout(0.2), "BitDropoutFn"),
    Case("max-pool-3x3", lambda: nn.MaxPool2d(3, 2, 1), "MaxPool2dFn"),
    Case("max-pool-2x2", lambda: nn.MaxPool2d(2), "MaxPool2dFn"),
    Case("avg-pool", lambda: nn.AvgPool2d(2), "AvgPool2dFn"),
    Case("avg-pool-3x3-padded", lambda: nn.AvgPool2d(3, 2, 1), "AvgPool2dFn"),
    Case("partial-conv", lambda: _partial(_conv(), 8), "PartialConv2dFn"),
    Case("partial-grouped", lambda: _partial(_conv(groups=4), 8), "PartialConv2dFn"),
    Case("partial-depthwise", lambda: _partial(_conv(groups=C), 8), "PartialConv2dFn"),
    Case("partial-pointwise", lambda: _partial(_conv(2 * C, 1), 16), "PartialConv2dFn"),
    Case("partial-conv-frozen-now", lambda: _partial(_conv(), 8, train=False), "FrozenConv2dFn"),
    Case("partial-linear", lambda: _partial(_linear(), 16), "PartialLinearFn", linear=True),
    Case("quantized-conv-kmeans", lambda: _quantized(_conv(bias=True)), "QuantizedConv2dFn"),
    Case("quantized-conv-linear", lambda: _quantized(_conv(bias=True), "linear"), "QuantizedConv2dFn"),
    Case("quantized-linear", lambda: _quantized(_linear()), "QuantizedLinearFn", linear=True),
    Case("standardized-trainable", lambda: _ws(train=True), "StandardizedConv2dFn"),
    Case("standardized-frozen", lambda: _ws(train=False), "FrozenConv2dFn"),
    Case("linear-frozen", _linear, None, linear=True),
    Case("linear-trainable", lambda: _linear(train=True), None, linear=True),
]

LAYOUTS = (False, True)  # contiguous, channels-last


def _params() -> list:
    out = []
    for case in CASES:
        for channels_last in (False,) if case.linear else LAYOUTS:
            layout = "channels_last" if channels_last else "contiguous"
            out.append(pytest.param(case, channels_last, id=f"{case.name}-{layout}"))
    return out


def _layer(case: Case, channels_last: bool) -> nn.Module:
    torch.manual_seed(0)
    layer = case.make()
    convert(layer)  # no input size: the flags a network's trace would set come from the case
    for module in layer.modules():
        for flag, value in case.flags.items():
            if hasattr(module, flag):
                setattr(module, flag, value)
    if channels_last:
        layer.to(memory_format=torch.channels_last)
    return layer


def _input(case: Case, channels_last: bool) -> torch.Tensor:
    x = torch.randn(N, H * H // 4, C) if case.linear else torch.randn(N, C, H, H)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _modelled_growth(layer: nn.Module, x: torch.Tensor, channels_last: bool) -> int:
    """What the memory model says the layer's backward allocates above what exists before it: the largest
    working set of its rows (less the output gradient, which the test holds) and the parameters'
    gradients."""
    meta_layer = copy.deepcopy(layer).to("meta")
    # a non-leaf input that requires grad: in-place layers may write over it, as in a network
    meta_x = (
        torch.empty_like(x, device="meta").requires_grad_(True).clone(memory_format=torch.preserve_format)
    )
    with preserved_state(meta_layer):
        meta_layer.train(layer.training)
        trace = run_traced(meta_layer, meta_x)
    rows = [r for r in trace.rows if r.kind in ("layer", "module") and r.needs_input_grad]
    root = rows[-1]
    growth = max(
        backward_working_bytes(
            row,
            engine=True,
            channels_last=channels_last,
            own_grad=bool(getattr(row.module, "own_grad", False)),
            mask_free=bool(getattr(row.module, "keep_output", False)),
        )
        - (row.output_bytes if row is root else 0)
        for row in rows
    )
    return growth + sum(p.nbytes for p in trace.params if p.trainable)


def _graph_kernels(y: torch.Tensor) -> set[str]:
    """Names of the autograd nodes behind ``y``."""
    seen, todo = set(), [y.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo.extend(next_fn for next_fn, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


@pytest.mark.parametrize(("case", "channels_last"), _params())
def test_backward_holds_no_more_than_the_model_counts(case: Case, channels_last: bool):
    layer = _layer(case, channels_last)
    x = _input(case, channels_last)
    modelled = _modelled_growth(layer, x, channels_last)
    before = torch.get_num_threads()
    if case.threads:
        torch.set_num_threads(case.threads)  # one thread: conv_transpose2d's slow path copies both sides
    try:
        # a non-leaf input, as in a network: in-place layers may run, and no gradient accumulates into it
        inputs = [x.requires_grad_(True).clone(memory_format=torch.preserve_format)]
        y = layer(inputs[0])
        kernels = _graph_kernels(y)
        if case.kernel is not None:
            assert f"{case.kernel}Backward" in kernels, kernels
        inputs += [p for p in layer.parameters() if p.requires_grad]
        grad = torch.randn_like(y)
        grads = []

        def backward() -> None:
            with phase("backward"):  # the gradients as the next layer would get them (no accumulation)
                grads.extend(torch.autograd.grad(y, inputs, grad))

        timeline = profile_step(backward, torch.device("cpu"))
    finally:
        torch.set_num_threads(before)
    measured = timeline.peak_bytes - timeline.start_bytes
    assert measured <= modelled + SLACK, (
        f"{case.name}: backward allocates {measured / 1024:.0f} KB, the model counts {modelled / 1024:.0f} KB"
    )
    assert [g.shape for g in grads] == [t.shape for t in inputs]


def _engine_functions() -> set[str]:
    """Every autograd function defined in a module of the engine package."""
    names = set()
    for info in pkgutil.iter_modules(engine.__path__):
        module = importlib.import_module(f"{engine.__name__}.{info.name}")
        names |= {
            name
            for name, obj in vars(module).items()
            if inspect.isclass(obj) and issubclass(obj, Function) and obj.__module__ == module.__name__
        }
    return names


def test_every_engine_kernel_has_a_case():
    """A kernel kind without a case fails here: every engine class and every engine autograd function."""
    covered_classes = set()
    for case in CASES:
        layer = _layer(case, False)
        # a frozen-statistics norm's class derives from its engine class (freeze_statistics)
        covered_classes |= {type(m).__bases__[-1] if is_frozen(m) else type(m) for m in layer.modules()}
    missing = [cls.__name__ for cls in ENGINE_CLASSES.values() if cls not in covered_classes]
    assert not missing, f"engine layers without a working-set case: {missing}"
    kernels = {case.kernel for case in CASES}
    missing = sorted(_engine_functions() - kernels)
    assert not missing, f"engine autograd functions without a working-set case: {missing}"


def test_activation_gradients_written_in_place_equal_the_stock_kernels():
    """``backward_into`` (the fused norm + activation's backward) computes exactly ``backward``."""
    x, g = torch.randn(2, 3, 5, 5) * 4, torch.randn(2, 3, 5, 5)
    for name, activation in ACTIVATIONS.items():
        if activation.backward is None:
            continue
        param = 6.0 if name == "hardtanh" else 0.1
        expected = activation.backward(g, x, param)
        assert torch.equal(activation.backward_into(g, x.clone(), param), expected), name
