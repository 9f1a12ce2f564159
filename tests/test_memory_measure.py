"""Memory model (issue 3): one real training step, counted with saved-tensor hooks, against the model."""

import importlib

import pytest
import timm
import torch
from torch import nn

from tinytl_core.engine import is_converted
from tinytl_core.memory import (
    MemoryLimitError,
    analyze,
    measure,
    measure_stock_and_engine,
    training_memory_figures,
)
from tinytl_core.memory.report import MEMORY, TOTALS, merge_measured
from tinytl_core.modes import MODES, prepare_model
from tinytl_core.quantities import RunMemory

RES, BATCH = 32, 2
measure_module = importlib.import_module("tinytl_core.memory.measure")  # the function shadows it


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2_100", "efficientnet_b0"])
def test_modelled_stock_matches_measured_every_mode(name):
    for mode in MODES:
        model = prepare_model(name, mode, resolution=RES, device="cpu", engine=False).model
        report = analyze(model, input_size=(3, RES, RES), batch_size=BATCH)
        m = measure(model, input_size=(3, RES, RES), batch_size=BATCH, modelled=report)
        stock = report.totals.activations_stock_bytes
        assert m.saved_bytes == pytest.approx(stock, rel=0.02), mode
        assert m.peak_cuda_bytes is None
        assert m.per_layer[MEMORY.activations_measured_bytes].sum() == m.saved_bytes
        # The necessary bytes are what TinyTL claims: never more than stock keeps (equal when everything
        # trains and stock keeps only what is needed, e.g. efficientnet_b0 in full), less when frozen.
        assert report.totals.activations_necessary_bytes <= stock, mode
        if MODES[mode].frozen_backbone and mode != "last":
            assert report.totals.activations_necessary_bytes < stock / 2, mode


def test_attention_modelled_like_the_cpu_kernel():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10)
    report = analyze(model, input_size=(3, 32, 32), batch_size=BATCH)
    m = measure(model, input_size=(3, 32, 32), batch_size=BATCH, modelled=report)
    assert m.saved_bytes == pytest.approx(report.totals.activations_stock_bytes, rel=0.02)


def test_per_layer_measured_lines_up_with_modelled():
    model = prepare_model("resnet18", "bias", resolution=RES, device="cpu", engine=False).model
    report = analyze(model, input_size=(3, RES, RES), batch_size=BATCH)
    m = measure(model, input_size=(3, RES, RES), batch_size=BATCH)
    merged = merge_measured(report.layers, m.per_layer)
    assert len(merged) == len(report.layers)
    measured = MEMORY.activations_measured_bytes
    assert (merged[measured] == merged[TOTALS.activations_stock_bytes]).all()
    # Stock PyTorch keeps the frozen conv's input although only its bias trains.
    row = merged.set_index("layer").loc["layer1.0.conv1"]
    assert row[TOTALS.activations_necessary_bytes] == 0 < row[measured]


def test_measure_leaves_model_unchanged():
    model = prepare_model("mobilenetv2_100", "bn+last", resolution=RES, device="cpu").model
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure(model, input_size=(3, RES, RES), batch_size=BATCH, optimizer="adam")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


class _MaskedReLU(torch.autograd.Function):
    """A training-engine style ReLU: saves a bit-packed uint8 mask (1 bit per element)."""

    @staticmethod
    def forward(ctx, x):
        mask = (x > 0).flatten()
        pad = (-mask.numel()) % 8
        bits = torch.cat([mask, mask.new_zeros(pad)]).view(-1, 8).to(torch.uint8)
        packed = (bits << torch.arange(8, dtype=torch.uint8)).sum(1, dtype=torch.uint8)
        ctx.save_for_backward(packed)
        ctx.shape = x.shape
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (packed,) = ctx.saved_tensors
        bits = (packed.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1
        mask = bits.flatten()[: grad.numel()].view(ctx.shape).to(grad.dtype)
        return grad * mask


class _EngineNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 4)

    def forward(self, x):
        h = _MaskedReLU.apply(self.fc1(x.flatten(1)))
        return self.fc2(h)


def test_custom_autograd_function_counted_at_real_size():
    model = _EngineNet()
    model.fc1.weight.requires_grad_(False)  # frozen weight: fc1 keeps no input, only the mask remains
    m = measure(model, input_size=(1, 8, 8), batch_size=BATCH)
    rows = m.per_layer.set_index("layer")[MEMORY.activations_measured_bytes]
    mask_bytes = BATCH * 64 // 8
    # The mask is saved in the parent's own code (an "ops" row); fc2 keeps its fp32 input.
    assert rows["(model)"] == mask_bytes
    assert rows["fc2"] == 4 * BATCH * 64
    assert rows["fc1"] == 0
    assert m.saved_bytes == mask_bytes + 4 * BATCH * 64 + rows["(loss)"]


def test_memory_limit_refused_before_allocating(monkeypatch):
    model = prepare_model("resnet18", "full", resolution=RES, device="cpu", engine=False).model
    monkeypatch.setattr(measure_module, "available_memory", lambda device: 1000)
    monkeypatch.setattr(measure_module, "run_traced", lambda *a, **k: pytest.fail("allocated"))
    with pytest.raises(MemoryLimitError, match=r"needs about [\d.,]+ MB on cpu .* only 1.00 KB are free"):
        measure(model, input_size=(3, RES, RES), batch_size=BATCH)
    assert issubclass(MemoryLimitError, ValueError)


def test_measure_rejects_meta_and_untrainable_models():
    meta = prepare_model("resnet18", "full", resolution=RES, device="meta", engine=False).model
    with pytest.raises(ValueError, match="real step"):
        measure(meta, input_size=(3, RES, RES), batch_size=BATCH)
    frozen = _EngineNet().requires_grad_(False)
    with pytest.raises(ValueError, match="requires grad"):
        measure(frozen, input_size=(1, 8, 8), batch_size=BATCH)
    # the wrong kind of argument: a ValueError naming it, not an AttributeError from inside
    with pytest.raises(ValueError, match="analyze expects a torch.nn.Module, got NoneType"):
        analyze(None, input_size=(3, RES, RES), batch_size=BATCH)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        analyze(meta, input_size=(3, RES, RES), batch_size=BATCH, optimizer=None)
    with pytest.raises(ValueError, match="unknown mode None"):
        prepare_model("resnet18", None, resolution=RES, device="meta")


def test_one_bool_profiles_both_steps():
    model = prepare_model("resnet18", "bias", resolution=RES).model
    both = measure_stock_and_engine(model, input_size=(3, RES, RES), batch_size=BATCH, profile=False)
    assert both.stock.timeline is None and both.engine.timeline is None


def test_training_memory_figures_measure_the_model_as_it_trains():
    model = prepare_model("mobilenetv2_100", "lite_residual+bias", resolution=RES, device="cpu").model
    assert is_converted(model)  # modes convert to the training engine by default
    size = (3, RES, RES)
    modelled = training_memory_figures(
        model, input_size=size, batch_size=BATCH, optimizer="sgd", measure=False
    )
    assert isinstance(modelled, RunMemory)
    measured_names = [n for n in MEMORY if "measured" in n]
    assert len(measured_names) == 4 and all(getattr(modelled, n) is None for n in measured_names)
    assert all(getattr(modelled, n) is not None for n in MEMORY if n not in measured_names)
    figures = training_memory_figures(model, input_size=size, batch_size=BATCH, optimizer="sgd")
    # Stock layers save what the model says stock PyTorch saves; the engine what TinyTL says is necessary.
    assert figures.activations_measured_stock_bytes == pytest.approx(
        figures.activations_stock_bytes, rel=0.02
    )
    assert figures.activations_measured_engine_bytes == pytest.approx(
        figures.activations_necessary_bytes, rel=0.05
    )
    assert figures.activations_measured_bytes == figures.activations_measured_engine_bytes  # trains so
    assert is_converted(model)  # left as it was
    parts = figures.weights_bytes + figures.grads_optimizer_bytes + figures.activations_necessary_bytes
    assert figures.total_modelled_bytes > parts  # plus the transient working set
    assert figures.total_measured_bytes > figures.weights_bytes + figures.activations_measured_bytes
    # Trained on the engine, measured and modelled totals share the engine's (TinyTL's) transient.
    assert figures.total_measured_bytes == pytest.approx(figures.total_modelled_bytes, rel=0.05)

    stock_model = prepare_model("mobilenetv2_100", "lite_residual+bias", resolution=RES, engine=False).model
    stock = training_memory_figures(stock_model, input_size=size, batch_size=BATCH, optimizer="sgd")
    assert stock.activations_measured_bytes == stock.activations_measured_stock_bytes
    assert stock.total_measured_bytes > figures.total_measured_bytes  # stock keeps more
    assert not is_converted(stock_model)
    for key in (MEMORY.activations_measured_stock_bytes, MEMORY.activations_measured_engine_bytes):
        assert getattr(stock, key) == getattr(figures, key)  # the same two steps, whichever layers train
