"""The engine on real timm CNNs, every fine-tuning mode: same outputs and gradients as stock PyTorch, and
measured activations at TinyTL's necessary bytes (small resolution: 64 px, batch 2)."""

import pytest
import torch
import torch.nn.functional as F

from tinytl_core.engine import EngineModule, convert, describe, engine_enabled, is_converted, revert
from tinytl_core.layer_kinds import uses_sign_mask
from tinytl_core.memory import analyze
from tinytl_core.modes import MODES, prepare_model
from tinytl_core.norms import freeze_statistics
from tinytl_core.tracing import SavedTensorCounter

MODELS = ("mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_b0", "resnet18")
SIZE = (3, 64, 64)
BATCH = 2


def _train_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor):
    """One forward + backward: (logits, {param name: grad}, saved activation bytes)."""
    model.train()
    model.zero_grad(set_to_none=True)
    with SavedTensorCounter([*model.parameters(), *model.buffers()]) as counter:
        logits = model(x)
        loss = F.cross_entropy(logits, target)
    saved = counter.total_bytes
    counter.release()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads, saved


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _worst_error(engine: dict[str, torch.Tensor], stock: dict[str, torch.Tensor]) -> float:
    """The largest gradient error, each parameter relative to its own gradient -- except gradients that are
    zero in exact arithmetic (a bias right before a norm with batch statistics, e.g. in ``bn+last``): what
    both sides hold there is float rounding (1e-7 of the whole gradient), so they are compared against the
    whole gradient."""
    whole = torch.cat([g.flatten() for g in stock.values()]).norm()
    return max(
        float((engine[n] - g).norm() / (g.norm() if g.norm() > 1e-5 * whole else whole))
        for n, g in stock.items()
    )


@pytest.mark.slow
@pytest.mark.parametrize("backbone", MODELS)
def test_engine_gradients_equal_stock_in_every_mode(backbone):
    x = torch.randn(BATCH, *SIZE)
    target = torch.tensor([1, 7])
    for mode in MODES:
        torch.manual_seed(0)
        model = prepare_model(backbone, mode, resolution=SIZE[-1], engine=False).model
        params_before = {n: id(p) for n, p in model.named_parameters()}
        keys_before = list(model.state_dict())
        stock_out, stock_grads, stock_saved = _train_step(model, x, target)

        report = convert(model, input_size=SIZE)  # incl. sharing outputs that later layers store in full
        assert report.n_converted > 0
        engine_out, engine_grads, engine_saved = _train_step(model, x, target)

        assert torch.equal(stock_out, engine_out), mode
        assert stock_grads.keys() == engine_grads.keys(), mode
        worst = _worst_error(engine_grads, stock_grads)
        # MobileTL's sign mask approximates smooth activations' gradients by design (tests/test_mobiletl.py
        # checks its rule); with none marked (ReLU6 networks) it is exact like every other mode.
        if not (MODES[mode].approximate_gradients and any(uses_sign_mask(m) for m in model.modules())):
            assert worst <= 1e-5, (mode, worst)
        assert engine_saved <= stock_saved, mode
        # Same Parameter objects and state_dict: optimizers and checkpoints keep working.
        assert {n: id(p) for n, p in model.named_parameters()} == params_before
        assert list(model.state_dict()) == keys_before


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["mobilenetv2_100", "mobilenetv3_large_100"])
def test_engine_stores_the_necessary_bytes(backbone):
    """Regression: on mobilenetv3 the modelled necessary bytes were up to 12 % too low, because squeeze-
    excitation's ``x * gate`` needs ``x`` in full but stock ReLU had saved ``x`` first (so the model turned it
    into the ReLU's 1-bit mask). The engine must store TinyTL's necessary bytes, modelled by plain
    ``analyze()`` of the stock model, within 5 % in every mode (the issue's target)."""
    x = torch.randn(BATCH, *SIZE)
    target = torch.tensor([4, 0])
    for mode in MODES:
        prepared = prepare_model(backbone, mode, resolution=SIZE[-1])  # converted: the default
        assert prepared.result.engine_layers > 0 and is_converted(prepared.model)
        totals = analyze(prepared.model, input_size=SIZE, batch_size=BATCH).totals
        necessary = totals.activations_necessary_bytes
        _, _, engine_saved = _train_step(prepared.model, x, target)
        assert engine_saved == pytest.approx(necessary, rel=0.05), (mode, engine_saved, necessary)


def test_tinytl_bias_mode_saves_two_orders_of_magnitude():
    model = prepare_model("mobilenetv2_100", "bias", resolution=64, engine=False).model
    x, target = torch.randn(BATCH, *SIZE), torch.tensor([0, 3])
    _, _, stock_saved = _train_step(model, x, target)
    with engine_enabled(model):
        _, _, engine_saved = _train_step(model, x, target)
    assert stock_saved > 50 * engine_saved
    assert not any(isinstance(m, EngineModule) for m in model.modules())  # restored on exit


def test_report_per_layer_rules_for_bias_mode():
    model = prepare_model("mobilenetv3_large_100", "bias", resolution=64, engine=False).model
    report = convert(model)
    rows = {layer.name: layer for layer in report.layers}
    assert rows["conv_stem"].stores == "nothing (frozen weight)"
    assert rows["blocks.1.0.bn1"].stores.startswith("nothing (frozen statistics)")
    assert rows["blocks.1.0.bn1.act"].stores == "1-bit mask"  # ReLU
    assert rows["blocks.3.0.bn1.act"].stores.startswith("input")  # Hardswish: its input, stock
    assert rows["classifier"].stores.startswith("input (trainable weight")
    assert "layers run on the engine" in str(report)
    assert revert(model) == report.n_converted
    assert describe(model).n_converted == 0


def test_convert_after_optimizer_creation_keeps_training():
    torch.manual_seed(0)
    model = prepare_model("resnet18", "lite_residual+bias", resolution=64, engine=False).model
    reference = prepare_model("resnet18", "lite_residual+bias", resolution=64, engine=False).model
    reference.load_state_dict(model.state_dict())
    x, target = torch.randn(BATCH, *SIZE), torch.tensor([2, 5])
    optimizers = [
        torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
        for m in (model, reference)
    ]
    convert(model)  # after the optimizer was built: same Parameter objects, so it still updates them
    for _ in range(2):
        for m, opt in zip((model, reference), optimizers):
            opt.zero_grad()
            F.cross_entropy(m.train()(x), target).backward()
            opt.step()
    # Gradients agree to ~1e-7; two momentum steps at lr 0.1 amplify that on the zero-initialised lite
    # residual scales (values ~1e-3), so compare with an absolute floor far below one update (~1e-3).
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5), name


def test_modes_switch_the_engine_on_and_off():
    on = prepare_model("resnet18", "bias", resolution=32)
    assert on.result.engine_layers == describe(on.model).n_converted > 0
    off = on.mode.apply(on.model, input_size=(3, 32, 32), engine=False)  # re-applied: back to stock layers
    assert off.engine_layers == 0 and not is_converted(on.model)
    assert off.trainable == on.result.trainable


def test_engine_enabled_restores_classes_and_shared_outputs():
    model = prepare_model("mobilenetv2_100", "full", resolution=32).model  # converted, sharing outputs
    shared = {n for n, m in model.named_modules() if m.__dict__.get("keep_output")}
    assert shared  # ReLU6 outputs that the next trainable conv stores in full
    classes = {n: type(m) for n, m in model.named_modules()}
    with engine_enabled(model, False):
        assert not is_converted(model)
    with engine_enabled(model, True):  # without input_size: masks everywhere, for the block only
        assert not any(m.__dict__.get("keep_output") for m in model.modules())
    assert {n: type(m) for n, m in model.named_modules()} == classes
    assert {n for n, m in model.named_modules() if m.__dict__.get("keep_output")} == shared


class _Block(torch.nn.Module):
    """conv -> BN -> ReLU -> conv, optionally reusing the first conv's output or the ReLU's output later
    (the cases where working in place would be wrong)."""

    def __init__(self, reuse: str = ""):
        super().__init__()
        self.conv1, self.bn = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.act, self.conv2 = torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1)
        self.head, self.reuse = torch.nn.Linear(8, 4), reuse

    def forward(self, x):
        y = self.conv1(x)
        a = self.act(self.bn(y))
        out = self.conv2(a)
        if self.reuse == "conv_output":
            out = out + y  # the norm's input is read again: it must not be overwritten
        if self.reuse == "act_output":
            out = out + a  # the activation's gradient is shared with the add's other input
        return self.head(out.mean((2, 3)))


@pytest.mark.parametrize("reuse", ["", "conv_output", "act_output"])
def test_in_place_findings_only_where_no_one_else_reads(reuse):
    torch.manual_seed(0)
    model = _Block(reuse)
    with torch.no_grad():  # non-trivial statistics
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    freeze_statistics(model.bn)
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith("bias") or name.startswith("head"))
    x, target = torch.randn(2, 3, 16, 16), torch.tensor([1, 3])
    stock_out, stock_grads, _ = _train_step(model, x, target)
    convert(model, input_size=(3, 16, 16))
    assert model.bn.inplace_input == (reuse != "conv_output")
    assert model.act.own_grad == (reuse != "act_output")
    assert model.bn.own_grad  # its one reader, the ReLU, hands back a gradient of its own
    engine_out, engine_grads, _ = _train_step(model, x, target)
    assert torch.equal(stock_out, engine_out)
    for name, grad in stock_grads.items():
        assert _relative(engine_grads[name], grad) <= 1e-5, name
    with engine_enabled(model, False):
        assert not any(isinstance(m, EngineModule) for m in model.modules())
    assert model.bn.inplace_input == (reuse != "conv_output")  # findings restored with the engine


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["mobilenetv2_100", "resnet18"])
def test_channels_last_engine_as_the_modes_build_it(backbone):
    """The modes convert channels-last with every trace finding on: gradients match stock PyTorch run in the
    same layout (across layouts stock PyTorch itself differs: ~2% in full fine-tuning of a random
    mobilenetv2 at batch 2, where batch statistics amplify rounding)."""
    x, target = torch.randn(BATCH, *SIZE), torch.tensor([1, 7])
    for mode in ("full", "bias", "lite_residual+bias"):
        torch.manual_seed(0)
        model = prepare_model(backbone, mode, resolution=SIZE[-1]).model  # engine, channels-last
        weight = next(p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1)
        assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        engine_out, engine_grads, _ = _train_step(model, x, target)
        model.load_state_dict(state)  # the step moved BatchNorm statistics in full fine-tuning
        with engine_enabled(model, False):  # stock layers
            assert weight.is_contiguous()  # reverted to PyTorch's default layout...
            model.to(memory_format=torch.channels_last)  # ...compared in the engine's
            stock_out, stock_grads, _ = _train_step(model, x, target)
        assert weight.is_contiguous(memory_format=torch.channels_last)  # the engine's layout is back
        assert torch.allclose(engine_out, stock_out, rtol=1e-5, atol=1e-6), mode
        # Relative to the whole gradient: some bias gradients are exactly 0 analytically (a shift that a
        # following batch-statistics norm removes), so per-tensor ratios would compare rounding noise.
        flat = torch.cat([stock_grads[n].flatten() for n in stock_grads])
        diff = torch.cat([(engine_grads[n] - stock_grads[n]).flatten() for n in stock_grads])
        assert float(diff.norm() / flat.norm()) <= 1e-5, mode
