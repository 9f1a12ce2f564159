"""One table says what a layer is (tinytl_core.layer_kinds): the memory model and the engine agree on it.

Every activation in ``ACTIVATIONS`` is checked here, so adding one is a single table entry: its kind, what
its gradient needs, and (where the engine runs it) its kernels -- and these tests say whether the model's
necessary bytes, the engine's stored bytes and stock PyTorch's agree with the entry.
"""

import math

import pytest
import torch
from torch import nn

from tinytl_core.engine import convert, describe, revert
from tinytl_core.engine.functions import MASKED_KINDS
from tinytl_core.layer_kinds import (
    ACTIVATIONS,
    KIND_NEEDS,
    LayerKind,
    Needs,
    engine_activation,
    kind_of,
    mask_from_output,
)
from tinytl_core.memory import rules
from tinytl_core.tracing import run_traced, trace_model
from tinytl_core.ui.text import layer_kinds_markdown

SIZE, BATCH, CHANNELS = (3, 8, 8), 2, 8
CASES = [(entry, cls) for entry in ACTIVATIONS.values() for cls in entry.classes]


def _model(act: nn.Module) -> nn.Sequential:
    """conv (trains: a gradient flows through ``act``) -> act -> conv with a frozen weight (stores nothing
    under the engine, so ``act`` cannot share a stored output)."""
    model = nn.Sequential(nn.Conv2d(SIZE[0], CHANNELS, 1), act, nn.Conv2d(CHANNELS, CHANNELS, 1))
    model[2].weight.requires_grad_(False)
    return model


def _saved_by(model: nn.Module, act: nn.Module) -> tuple[int, set[str]]:
    """Bytes the activation's own call kept for backward in one real step, and which of its tensors
    (``input``, ``output``) are among them."""
    trace = run_traced(model, torch.randn(BATCH, *SIZE), after_forward=lambda loss: loss.backward())
    row = next(r for r in trace.rows if r.module is act)
    keys = {s.key for s in row.saved_all}
    which = {name for name, refs in (("input", row.inputs), ("output", row.outputs)) if refs[0].key in keys}
    return row.saved_bytes, which


def _necessary(model: nn.Module, act: nn.Module) -> int:
    """The memory model's necessary bytes for the activation's row (its rule, on the meta trace)."""
    trace = trace_model(model, SIZE, BATCH)
    row = next(r for r in trace.rows if r.module is act)
    return sum(need.nbytes for need in rules.necessary(row).needs)


@pytest.mark.parametrize(("entry", "cls"), CASES, ids=[f"{e.name}-{c.__name__}" for e, c in CASES])
def test_model_and_engine_agree_on_every_activation(entry, cls):
    act = cls()
    model = _model(act)
    assert kind_of(act) is entry.kind
    runs_it = engine_activation(act) is not None and entry.name in MASKED_KINDS
    need = _necessary(model, act)
    stock, stock_keeps = _saved_by(model, act)
    convert(model)
    engine, _ = _saved_by(model, act)
    if runs_it:
        assert describe(model).layers[1].stores == "1-bit mask"
    revert(model)
    numel = BATCH * CHANNELS * SIZE[1] * SIZE[2]
    if entry.needs is Needs.MASK:
        assert entry.mask is not None, "a mask activation needs the engine's mask rule"
        if runs_it:  # the engine stores the 1-bit mask the model counts
            assert engine == need == math.ceil(numel / 8)
        else:  # only settings the engine leaves stock (Hardtanh(-1, 1)): the model's mask is a bound
            assert entry.param(act) is None and engine == stock and need < stock
    elif entry.kind is LayerKind.FREE:
        assert need == engine == stock == 0
    else:  # input or output in full: what stock keeps at least, and the engine leaves stock
        assert engine == stock and 0 < need <= stock
        # the tensor the table names is the one stock autograd keeps (composites may keep another)
        assert stock_keeps in (set(), {entry.needs.value}), stock_keeps


@pytest.mark.parametrize("entry", [e for e in ACTIVATIONS.values() if e.forward], ids=lambda e: e.name)
def test_table_kernels_match_the_stock_module(entry):
    """The engine recomputes activations with the table's kernels (fused norm + activation): they must be
    the stock module's forward and gradient exactly."""
    for cls in entry.classes:
        module = cls()
        found = engine_activation(module)
        if found is None or found[0] is not entry:
            continue
        x = torch.randn(4, 6, 5, dtype=torch.float64, requires_grad=True)
        y = module(x)
        grad = torch.randn_like(y)
        (expected,) = torch.autograd.grad(y, x, grad)
        assert torch.equal(entry.forward(x.detach(), found[1]), y.detach())
        assert torch.allclose(entry.backward(grad, x.detach(), found[1]), expected)


def test_masked_kinds_are_the_table_entries_with_a_mask_rule():
    assert {e.name for e in ACTIVATIONS.values() if e.mask is not None} == MASKED_KINDS
    for name in MASKED_KINDS:
        assert ACTIVATIONS[name].needs is Needs.MASK


def test_mask_from_output_only_where_the_output_tells_the_region():
    assert mask_from_output(nn.ReLU()) and mask_from_output(nn.ReLU6())
    assert mask_from_output(nn.LeakyReLU(0.1)) and not mask_from_output(nn.LeakyReLU(-0.1))
    assert not mask_from_output(nn.Hardsigmoid())
    assert not mask_from_output(nn.PReLU()) and not mask_from_output(nn.SiLU())


def test_every_kind_says_what_backward_needs():
    assert set(KIND_NEEDS) == set(LayerKind)
    assert kind_of(nn.Conv2d(1, 1, 1)) is LayerKind.LINEAR
    assert kind_of(nn.BatchNorm2d(4)) is LayerKind.NORM
    assert kind_of(nn.MaxPool2d(3)) is LayerKind.MAXPOOL
    assert kind_of(nn.AdaptiveAvgPool2d(1)) is LayerKind.FREE
    assert kind_of(None) is LayerKind.OTHER
    assert kind_of(nn.Module()) is LayerKind.OTHER


def test_about_page_table_lists_every_kind_and_activation():
    text = layer_kinds_markdown()
    for kind, needs in KIND_NEEDS.items():
        assert f"| {kind.value} | {needs} |" in text
    for name in ACTIVATIONS:
        assert f"| {name} |" in text
