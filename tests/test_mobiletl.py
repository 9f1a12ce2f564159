"""MobileTL (issue 17, item 2): smooth activations backward through a 1-bit sign mask, biases and norm
shifts trained. Its gradients differ from the exact ones by design, so they are checked against the
published rule computed by hand: ``dL/dx = dL/dy * 1[x > 0]`` (Chiang et al., AAAI 2023)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinytl_core.comparisons import compare_modes, sign_mask_saving
from tinytl_core.engine import convert, describe
from tinytl_core.layer_kinds import ACTIVATIONS, SIGN_MASKED, set_sign_mask, uses_sign_mask
from tinytl_core.memory import analyze
from tinytl_core.modes import MODES, approximation_note, get_mode, prepare_model
from tinytl_core.tracing import SavedTensorCounter

SMOOTH = [nn.Hardswish, nn.SiLU, nn.GELU, lambda: nn.GELU(approximate="tanh")]
IDS = ["hardswish", "silu", "gelu", "gelu_tanh"]
# Around every breakpoint: h-swish's -3 / 0 / 3, the sign, and values where the exact derivative is
# negative (-3 < x < -1.5 for h-swish) or above 1 (SiLU, GELU just above 1.5).
POINTS = [-5.0, -3.0, -2.9, -2.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 2.0, 2.9, 3.0, 4.0]


def _published(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """MobileTL's backward by hand: the gradient passes where the input is positive, else 0."""
    return torch.where(x > 0, grad, torch.zeros_like(grad))


class _PublishedRule(torch.autograd.Function):
    """A reference implementation of the rule, independent of the engine: stores the float input."""

    @staticmethod
    def forward(ctx, x, module):  # type: ignore[override]
        ctx.save_for_backward(x)
        with torch.no_grad():
            return module(x.clone())

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return _published(grad, x), None


class _Reference(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _PublishedRule.apply(x, self.act)


def _engine_act(make) -> nn.Module:
    """An activation converted to the engine and marked for MobileTL's backward."""
    act = make()
    assert set_sign_mask(act, True)
    holder = nn.Sequential(act)
    convert(holder)
    return holder[0]


@pytest.mark.parametrize("make", SMOOTH, ids=IDS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_engine_gradient_is_the_published_sign_rule(make, channels_last):
    torch.manual_seed(0)
    act = _engine_act(make)
    x = torch.tensor(POINTS).repeat(2 * 3 * 5).view(2, 3, 5, len(POINTS))
    x = x + 0.01 * torch.randn_like(x) * (x.abs() > 0.1)  # keep the exact points, jitter the others
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    grad = torch.randn_like(x)
    y = act(x)
    assert torch.equal(y, make()(x.detach()))  # the forward is exact
    (got,) = torch.autograd.grad(y, x, grad)
    assert torch.equal(got, _published(grad, x.detach()))
    # ... and it is not the exact derivative (which the stock layer gives), by design
    x2 = x.detach().requires_grad_(True)
    (exact,) = torch.autograd.grad(make()(x2), x2, grad)
    assert not torch.allclose(got, exact)


@pytest.mark.parametrize("make", [nn.Hardswish, nn.SiLU], ids=["hardswish", "silu"])
def test_in_place_activation_takes_its_sign_before_overwriting(make):
    act = _engine_act(lambda: make(inplace=True))
    base = torch.tensor(POINTS, requires_grad=True)
    x = base * 1.0  # not a leaf: may be overwritten in place
    y = act(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    assert torch.equal(base.grad, _published(grad, base.detach()))


def test_unmarked_smooth_activations_stay_exact_and_stock():
    for make in SMOOTH:
        act = make()
        holder = nn.Sequential(act)
        convert(holder)
        assert not uses_sign_mask(holder[0])
        assert describe(holder).layers[0].stores.startswith("input (stock")
        x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
        grad = torch.randn(3, 7, dtype=torch.float64)
        (got,) = torch.autograd.grad(holder[0](x), x, grad)
        (exact,) = torch.autograd.grad(make()(x), x, grad)
        assert torch.equal(got, exact)


def test_the_table_names_the_sign_rule_for_smooth_activations_only():
    assert {"hardswish", "silu", "gelu", "gelu_tanh"} == set(SIGN_MASKED)
    for name in SIGN_MASKED:
        entry = ACTIVATIONS[name]
        assert entry.mask is None and entry.sign_mask is not None and not entry.mask_from_output
    # exact 1-bit rules (ReLU6, Hardsigmoid) are not approximated: marking them is refused
    for module in (nn.ReLU6(), nn.Hardsigmoid(), nn.Sigmoid(), nn.Mish()):
        assert not set_sign_mask(module, True) and not uses_sign_mask(module)


def _small_net() -> nn.Module:
    """A tiny IRB-like network with both smooth activations, frozen-statistics norms and a classifier."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.Hardswish(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        nn.BatchNorm2d(8),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    for m in net:
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.normal_()
    return net


def test_model_gradients_equal_the_hand_computed_rule():
    """Every parameter gradient of a network trained MobileTL's way (frozen weights and norm scales,
    trained shifts) equals that of the same network with the rule written out by hand."""
    net = _small_net()
    for name, p in net.named_parameters():
        p.requires_grad_(name.endswith("bias"))
    net.train()
    for m in net:
        if isinstance(m, nn.BatchNorm2d):
            m.eval()  # frozen statistics
    reference = copy.deepcopy(net)
    reference[2], reference[5] = _Reference(reference[2]), _Reference(reference[5])
    for m in (net[2], net[5]):
        set_sign_mask(m, True)
    convert(net, input_size=(3, 6, 6))
    x, target = torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 2, 3])
    grads = []
    for model in (net, reference):
        F.cross_entropy(model(x), target).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == {"1.bias", "4.bias", "8.bias"}
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name.replace("2.", "2.act.")], atol=1e-6), name


@pytest.mark.parametrize("backbone", ["mobilenetv3_large_100", "efficientnet_b0"])
def test_mobiletl_applies_to_h_swish_and_silu_networks(backbone):
    prepared = prepare_model(backbone, "mobiletl", resolution=32, device="meta", engine=False)
    bias = prepare_model(backbone, "bias", resolution=32, device="meta", engine=False)
    smooth = [m for m in prepared.model.modules() if type(m) in (nn.Hardswish, nn.SiLU)]
    assert smooth and all(uses_sign_mask(m) for m in smooth)
    assert prepared.result.sign_masked == len(smooth)
    assert prepared.result.trainable == bias.result.trainable  # biases and norm shifts
    assert bias.result.sign_masked == 0 and not any(uses_sign_mask(m) for m in bias.model.modules())
    assert get_mode("mobiletl").approximate_gradients and get_mode("mobiletl").frozen_backbone
    assert not any(m.approximate_gradients for m in MODES.values() if m.name != "mobiletl")
    # a model that changes mode computes exact gradients again
    get_mode("bias").apply(prepared.model, input_size=(3, 32, 32), engine=False)
    assert not any(uses_sign_mask(m) for m in prepared.model.modules())


def test_mobiletl_on_a_relu6_network_is_bias_mode():
    prepared = prepare_model("mobilenetv2_100", "mobiletl", resolution=32, device="meta", engine=False)
    assert prepared.result.applicable and prepared.result.sign_masked == 0


def test_memory_model_counts_one_bit_for_the_marked_activations():
    size, batch = (3, 32, 32), 2
    reports = {}
    for mode in ("bias", "mobiletl"):
        model = prepare_model("mobilenetv3_large_100", mode, resolution=32, device="meta", engine=False).model
        reports[mode] = analyze(model, input_size=size, batch_size=batch)
    layers = {mode: r.layers.set_index(["layer", "call"]) for mode, r in reports.items()}
    hswish = layers["mobiletl"][layers["mobiletl"]["type"] == "Hardswish"]
    assert len(hswish) > 5
    for key, row in hswish.iterrows():
        numel = math.prod(int(s) for s in row["output_shape"].split("x"))
        if layers["bias"].loc[key, "activations_necessary_bytes"] == 0:
            continue  # no gradient flows there
        assert row["activations_necessary_bytes"] == math.ceil(numel / 8), key
        assert "sign mask" in row["necessary_reason"]
        assert layers["bias"].loc[key, "activations_necessary_bytes"] == 4 * numel, key
    necessary = {m: r.totals.activations_necessary_bytes for m, r in reports.items()}
    assert necessary["mobiletl"] < 0.6 * necessary["bias"]
    assert reports["mobiletl"].totals.total_modelled_bytes < reports["bias"].totals.total_modelled_bytes


def test_engine_stores_what_the_model_counts_on_a_real_step():
    prepared = prepare_model("mobilenetv3_small_050", "mobiletl", resolution=32)
    model = prepared.model.train()
    assert prepared.result.sign_masked > 0
    assert any(layer.stores.startswith("1-bit sign mask") for layer in describe(model).layers)
    x, target = torch.randn(2, 3, 32, 32), torch.tensor([1, 5])
    with SavedTensorCounter([*model.parameters(), *model.buffers()]) as counter:
        loss = F.cross_entropy(model(x), target)
    saved = counter.total_bytes
    counter.release()
    loss.backward()
    necessary = analyze(model, input_size=(3, 32, 32), batch_size=2).totals.activations_necessary_bytes
    assert saved == necessary
    hswish = [m for m in model.modules() if isinstance(m, nn.Hardswish)]
    assert hswish and all(uses_sign_mask(m) for m in hswish)


def test_pages_note_names_the_approximation_only_for_mobiletl():
    assert approximation_note(["full", "bias", "lite_residual+bias"]) is None
    note = approximation_note(["bias", "mobiletl", "mobiletl"])
    assert note is not None and note.startswith("MobileTL:") and "approximate" in note


PAIR = ["bias", "mobiletl"]


def test_home_and_explorer_say_by_how_much_mobiletl_is_cheaper():
    smooth = sign_mask_saving(compare_modes("mobilenetv3_large_100", resolution=32, batch_size=2, modes=PAIR))
    assert smooth is not None and smooth.approximated
    assert smooth.mobiletl_activations < 0.6 * smooth.bias_activations
    assert "% less" in smooth.sentence("mobilenetv3_large_100")
    relu6 = sign_mask_saving(compare_modes("demo_mobilenetv2_050", resolution=32, batch_size=2, modes=PAIR))
    assert relu6 is not None and not relu6.approximated and "is TinyTL-B" in relu6.sentence("demo")
    assert (
        sign_mask_saving(compare_modes("demo_mobilenetv2_050", resolution=32, batch_size=2, modes="bias"))
        is None
    )
