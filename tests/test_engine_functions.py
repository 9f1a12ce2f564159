"""Engine layers one by one: same outputs and gradients as stock PyTorch, and only the bytes they claim."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from timm.layers.conv2d_same import Conv2dSame

from tinytl_core.engine import convert, describe, revert
from tinytl_core.engine.bitmask import bits_for, pack_bits, pack_uint, unpack_bits, unpack_uint
from tinytl_core.engine.functions import FrozenNormFn
from tinytl_core.norms import freeze_statistics
from tinytl_core.tracing import SavedTensorCounter


def assert_saves_only_via_save_for_backward(out: torch.Tensor) -> int:
    """Requirement: custom autograd functions keep tensors only through ``ctx.save_for_backward`` (so
    saved-tensor hooks see them), never as plain ``ctx`` attributes. Returns how many custom nodes the
    graph of ``out`` holds."""
    seen, stack, custom = set(), [out.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            custom += 1
            for name, value in vars(node).items():
                items = value if isinstance(value, (tuple, list)) else (value,)
                assert not any(isinstance(v, torch.Tensor) for v in items), f"{type(node).__name__}.{name}"
        stack.extend(fn for fn, _ in node.next_functions)
    return custom


def _step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor | None = None):
    """Forward + backward of ``module`` on a fresh copy of ``x``: (output, input grad, param grads, saved
    activation bytes)."""
    leaf = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    with SavedTensorCounter([*module.parameters(), *module.buffers()]) as counter:
        out = module(leaf * 1.0)  # a non-leaf input, so in-place layers may overwrite it
    saved = counter.total_bytes
    counter.release()
    assert_saves_only_via_save_for_backward(out)
    out.backward(torch.randn_like(out, generator=torch.Generator().manual_seed(1)) if grad is None else grad)
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return out.detach(), leaf.grad, grads, saved


def _compare(module: nn.Module, x: torch.Tensor, *, exact: bool = False, input_size=None):
    """Run ``module`` stock, then converted (with ``input_size``: sharing stored outputs); assert equal
    outputs and gradients; return both saved sizes."""
    revert(module)
    out_s, gx_s, gp_s, saved_s = _step(module, x)
    convert(module, input_size=input_size)
    out_e, gx_e, gp_e, saved_e = _step(module, x)
    assert torch.equal(out_s, out_e)
    assert gp_s.keys() == gp_e.keys()
    for stock, engine in [(gx_s, gx_e), *((gp_s[k], gp_e[k]) for k in gp_s)]:
        if exact:
            assert torch.equal(stock, engine)
        else:
            assert (stock - engine).norm() <= 1e-5 * stock.norm() + 1e-12
    return saved_s, saved_e


# ----------------------------------------------------------------------------------------------------
# bit packing
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("numel", [1, 7, 8, 9, 63, 64, 65, 1000, 4099])
def test_pack_bits_round_trip_and_size(numel):
    mask = torch.rand(numel) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8
    assert packed.untyped_storage().nbytes() == math.ceil(numel / 8)
    assert torch.equal(unpack_bits(packed, (numel,), torch.float32), mask.float())


def test_pack_bits_bit_order_and_errors():
    mask = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 0, 1], dtype=torch.bool)
    assert pack_bits(mask).tolist() == [0b10000001, 0b10]
    with pytest.raises(ValueError, match="bool"):
        pack_bits(torch.zeros(3))
    with pytest.raises(ValueError, match="uint8"):
        unpack_bits(torch.zeros(3), (3,), torch.float32)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_pack_uint_round_trip(bits):
    values = torch.randint(0, 1 << bits, (1001,), dtype=torch.uint8)
    packed = pack_uint(values, bits)
    assert packed.numel() == math.ceil(1001 * bits / 8)
    assert torch.equal(unpack_uint(packed, 1001, bits), values)


def test_bits_for():
    assert [bits_for(c) for c in (1, 2, 3, 4, 9, 16, 17, 256)] == [1, 1, 2, 2, 4, 4, 8, 8]
    with pytest.raises(ValueError):
        bits_for(257)
    with pytest.raises(ValueError):
        pack_uint(torch.zeros(3, dtype=torch.uint8), 3)


# ----------------------------------------------------------------------------------------------------
# activations: 1-bit masks
# ----------------------------------------------------------------------------------------------------
def _activation_input() -> torch.Tensor:
    x = torch.randn(2, 3, 5, 7) * 4
    x.view(-1)[:8] = torch.tensor([0.0, 6.0, -3.0, 3.0, 1e-8, -1e-8, 6.0 + 1e-6, 3.0])  # boundaries
    return x


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize(
    "make",
    [
        nn.ReLU,
        nn.ReLU6,
        nn.Hardsigmoid,
        lambda inplace: nn.LeakyReLU(0.1, inplace),
        lambda inplace: nn.Hardtanh(0, 3, inplace),
    ],
)
def test_masked_activation_matches_stock_with_one_bit(make, inplace):
    module = make(inplace=inplace)
    x = _activation_input()
    saved_stock, saved_engine = _compare(module, x, exact=True)
    assert saved_stock == x.numel() * 4
    assert saved_engine == math.ceil(x.numel() / 8)
    assert assert_saves_only_via_save_for_backward(module(x.clone().requires_grad_(True) * 1.0)) == 1


@pytest.mark.parametrize("make", [nn.ReLU, nn.ReLU6, lambda inplace: nn.LeakyReLU(0.2, inplace)])
def test_masked_activation_sharing_its_output(make):
    """keep_output: the activation stores its output (which a trainable conv stores anyway) instead of a
    mask; gradients stay exact and the pair stores one tensor."""
    model = nn.Sequential(make(inplace=True), nn.Conv2d(3, 4, 1))
    x = _activation_input()
    saved_stock, saved_masked = _compare(model, x, exact=True)  # no input size: a mask, nothing shared
    assert not model[0].keep_output and saved_masked == x.numel() * 4 + math.ceil(x.numel() / 8)
    saved_stock, saved_engine = _compare(model, x, exact=True, input_size=tuple(x.shape[1:]))
    assert model[0].keep_output  # the conv (weight trains) stores the output anyway: found by the trace
    assert saved_engine == x.numel() * 4 <= saved_stock
    assert describe(model).layers[0].stores.startswith("output, shared")


def test_convert_with_input_size_finds_shared_outputs():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU6(), nn.Flatten())
    for p in model[0].parameters():
        p.requires_grad_(False)  # first ReLU: next conv trains and stores its output -> shared
    report = convert(model, input_size=(3, 9, 9))
    assert [model[1].keep_output, model[3].keep_output] == [True, False]
    assert report.layers[1].stores.startswith("output, shared") and report.layers[3].stores == "1-bit mask"
    _compare(model, torch.randn(2, 3, 9, 9), exact=True)


def test_hardtanh_with_negative_bound_stays_stock():
    module = nn.Hardtanh(-1.0, 1.0)
    report = convert(module)
    assert report.layers[0].stores == "stock (unsupported bounds)"
    saved_stock, saved_engine = _compare(module, _activation_input(), exact=True)
    assert saved_engine == saved_stock


def test_smooth_activations_stay_exact_unless_sign_masked():
    # h-swish / SiLU / GELU become engine layers (MobileTL can mark them) but, unmarked, run the stock
    # kernel: same outputs, same gradients, the same saved input
    model = nn.Sequential(nn.SiLU(), nn.Hardswish(), nn.GELU(), nn.Sigmoid())
    report = convert(model)
    assert [layer.stores.split(" ")[0] for layer in report.layers] == ["input", "input", "input", "output"]
    saved_stock, saved_engine = _compare(model, _activation_input(), exact=True)
    assert saved_engine == saved_stock


# ----------------------------------------------------------------------------------------------------
# convolutions
# ----------------------------------------------------------------------------------------------------
CONV_CASES = [
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, bias=False),
    dict(in_channels=6, out_channels=6, kernel_size=5, stride=2, padding=2, groups=6),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, dilation=2, groups=2),
    dict(in_channels=4, out_channels=6, kernel_size=(1, 3), stride=(2, 1), padding=(0, 1)),
    dict(in_channels=4, out_channels=6, kernel_size=4, padding="same"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding="valid"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="reflect"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="replicate"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="circular"),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("bias_trains", [True, False])
@pytest.mark.parametrize("kwargs", CONV_CASES)
def test_frozen_conv_stores_nothing(kwargs, bias_trains):
    conv = nn.Conv2d(**kwargs)
    conv.weight.requires_grad_(False)
    if conv.bias is not None:
        conv.bias.requires_grad_(bias_trains)
    x = torch.randn(2, kwargs["in_channels"], 11, 10)
    saved_stock, saved_engine = _compare(conv, x)
    assert saved_stock >= x.numel() * 4  # stock keeps the input although the weight is frozen
    assert saved_engine == 0
    assert describe(conv).layers[0].stores == "nothing (frozen weight)"


def test_trainable_conv_runs_stock():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 8, 8)
    saved_stock, saved_engine = _compare(conv, x, exact=True)
    assert saved_engine == saved_stock == x.numel() * 4
    assert describe(conv).layers[0].stores.startswith("input")


def test_timm_conv2d_same_frozen():
    conv = Conv2dSame(4, 6, 3, stride=2)
    conv.weight.requires_grad_(False)
    saved_stock, saved_engine = _compare(conv, torch.randn(2, 4, 9, 10))
    assert saved_stock > 0 and saved_engine == 0


def test_first_conv_on_an_input_without_grad_stores_nothing():
    conv = nn.Conv2d(3, 4, 3)
    conv.weight.requires_grad_(False)
    convert(conv)
    with SavedTensorCounter(list(conv.parameters())) as counter:
        out = conv(torch.randn(2, 3, 8, 8))
    assert counter.total_bytes == 0
    out.sum().backward()
    assert conv.bias.grad is not None and torch.allclose(conv.bias.grad, torch.full((4,), 2 * 6 * 6.0))


# ----------------------------------------------------------------------------------------------------
# normalisation with frozen statistics
# ----------------------------------------------------------------------------------------------------
def _bn(cls=nn.BatchNorm2d, **kwargs) -> nn.Module:
    norm = cls(5, **kwargs)
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    return norm


@pytest.mark.parametrize("scale_trains", [False, True])
def test_frozen_statistics_norm(scale_trains):
    norm = _bn().eval()
    norm.weight.requires_grad_(scale_trains)
    x = torch.randn(2, 5, 6, 6)
    saved_stock, saved_engine = _compare(norm, x)
    assert saved_stock == x.numel() * 4
    assert saved_engine == (x.numel() * 4 if scale_trains else 0)


def test_in_place_frozen_norm_keeps_its_statistics_apart_as_the_cuda_kernel_needs(monkeypatch):
    """Regression (seen on an H200): the in-place frozen norm passed one buffer as both ``save_mean`` and
    ``save_invstd``. The CPU kernel leaves them alone in eval mode; the CUDA kernel writes the running mean
    into one, then the inverse std into the other, and normalises with both -- so every frozen norm on a GPU
    subtracted its inverse std. Emulated here on the CPU: the output must still equal stock eval-mode
    batch norm."""

    def as_on_cuda(x, weight, bias, mean, var, training, momentum, eps, *, out, save_mean, save_invstd):
        save_mean.resize_(mean.shape).copy_(mean)
        save_invstd.resize_(var.shape).copy_((var + eps).rsqrt())
        shape = (1, -1, 1, 1)
        normed = (x - save_mean.view(shape)) * save_invstd.view(shape) * weight.view(shape) + bias.view(shape)
        out.copy_(normed)
        return out, save_mean, save_invstd

    norm = _bn().eval()
    x = torch.randn(2, 5, 6, 6)
    stats = (norm.running_mean, norm.running_var)
    expected = F.batch_norm(x, *stats, norm.weight, norm.bias, False, 0.0, norm.eps)
    monkeypatch.setattr(torch.ops.aten.native_batch_norm, "out", as_on_cuda)
    inplace = x.clone().requires_grad_(False)
    bias = norm.bias.detach().requires_grad_(True)
    y = FrozenNormFn.apply(inplace, norm.weight.detach(), bias, *stats, norm.eps, True)
    assert y.data_ptr() == inplace.data_ptr()  # written over its input, as the engine runs it
    assert torch.allclose(y, expected, atol=1e-6)


def _conv_norm() -> nn.Sequential:
    """A frozen conv and a frozen norm that the engine runs in place over the conv's output."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, bias=False), _bn(), nn.ReLU())
    model[0].weight.requires_grad_(False)
    freeze_statistics(model[1])
    model[1].weight.requires_grad_(False)
    convert(model, input_size=(3, 8, 8))
    assert model[1].writes_in_place()
    return model


def test_a_hook_on_a_container_that_returns_the_conv_output_sees_it_too():
    """A deep stem (a Sequential ending in its conv) hands its output to a hook, then the norm after it
    overwrote that tensor: containers around the producer that do not hold the norm count as producers."""
    from tinytl_core.modes import prepare_model

    model = prepare_model("resnet10t", "bias", num_classes=3, pretrained=False, resolution=32).model
    seen = {}
    handle = model.conv1.register_forward_hook(lambda m, i, o: seen.update(out=o, copy=o.detach().clone()))
    try:
        model(torch.randn(2, 3, 32, 32)).sum().backward()
    finally:
        handle.remove()
    assert torch.equal(seen["out"], seen["copy"]) and model.bn1.writes_in_place()


@pytest.mark.parametrize("hook", ["conv", "norm input", "norm pre-hook", "global", "deep copy"])
def test_forward_hooks_see_what_stock_pytorch_hands_them(hook):
    """Regression: a frozen norm working in place overwrote the conv output a forward hook had been handed
    (feature extraction read the norm's output). A norm whose input a hook may hold -- the conv's, its
    own, a global one -- works out of place; without hooks it works in place again."""
    import copy

    model = _conv_norm()
    if hook == "deep copy":  # the copy's norm watches the copy's conv
        model = copy.deepcopy(model)
    conv, norm = model[0], model[1]
    x = torch.randn(2, 3, 8, 8)
    expected = F.conv2d(x, conv.weight)
    seen = []
    if hook in ("conv", "deep copy"):
        handle = conv.register_forward_hook(lambda m, i, o: seen.append(o))
    elif hook == "norm input":
        handle = norm.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    elif hook == "norm pre-hook":
        handle = norm.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    else:
        handle = nn.modules.module.register_module_forward_hook(
            lambda m, i, o: seen.append(o) if m is conv else None
        )
    try:
        assert not norm.writes_in_place()
        model(x.clone()).sum().backward()
    finally:
        handle.remove()
    assert torch.allclose(seen[0], expected, atol=1e-6)
    assert norm.writes_in_place()  # the hook gone: in place again


def test_norm_frozen_by_the_foundation_converts_and_reverts():
    norm = _bn()
    freeze_statistics(norm)
    norm.train()  # stays on running statistics
    norm.weight.requires_grad_(False)
    saved_stock, saved_engine = _compare(norm, torch.randn(2, 5, 4, 4))
    assert saved_engine == 0 < saved_stock
    assert not norm.training and type(norm).__name__ == "BatchNorm2d"
    assert revert(norm) == 1 and type(norm).frozen_statistics


def test_batch_statistics_norm_runs_stock():
    norm = _bn().train()
    norm.weight.requires_grad_(False)
    saved_stock, saved_engine = _compare(norm, torch.randn(2, 5, 4, 4), exact=True)
    assert saved_engine == saved_stock > 0


@pytest.mark.parametrize("act", [nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Identity])
@pytest.mark.parametrize("scale_trains", [False, True])
def test_batchnorm_act_frozen_statistics(act, scale_trains):
    norm = _bn(BatchNormAct2d, act_layer=act).eval()
    norm.weight.requires_grad_(scale_trains)
    x = torch.randn(2, 5, 6, 6)
    numel = x.numel()
    _saved_stock, saved_engine = _compare(norm, x)
    if scale_trains:  # fused: only the norm input; the activation is recomputed from it
        expected = 4 * numel
    else:
        expected = {nn.ReLU6: math.ceil(numel / 8), nn.Identity: 0}.get(act, 4 * numel)
    assert saved_engine == expected


# ----------------------------------------------------------------------------------------------------
# dropout and pooling
# ----------------------------------------------------------------------------------------------------
def test_dropout_one_bit_mask_same_randomness():
    drop = nn.Dropout(0.3)
    x = torch.randn(4, 50)
    torch.manual_seed(3)
    stock = _step(drop, x)
    convert(drop)
    torch.manual_seed(3)
    engine = _step(drop, x)
    assert torch.equal(stock[0], engine[0]) and torch.equal(stock[1], engine[1])
    assert stock[3] == x.numel() * 4 and engine[3] == math.ceil(x.numel() / 8)
    drop.eval()
    assert torch.equal(drop(x), x)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=2),
        dict(kernel_size=3, stride=1, dilation=2),
        dict(kernel_size=3, stride=2, ceil_mode=True),
        dict(kernel_size=5, stride=3, padding=2),
    ],
)
def test_max_pool_argmax_offsets(kwargs):
    pool = nn.MaxPool2d(**kwargs)
    x = torch.randn(2, 3, 11, 12)
    x[0, 0, :4, :4] = 1.0  # ties: the first maximum wins, as in stock
    saved_stock, saved_engine = _compare(pool, x, exact=True)
    out_numel = pool(x).numel()
    kernel = kwargs["kernel_size"]
    assert saved_stock > x.numel() * 4
    assert saved_engine == math.ceil(out_numel * bits_for(kernel * kernel) / 8)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=2),
        dict(kernel_size=2, ceil_mode=True),
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
        dict(kernel_size=2, divisor_override=3),
    ],
)
def test_avg_pool_stores_nothing(kwargs):
    pool = nn.AvgPool2d(**kwargs)
    x = torch.randn(2, 3, 9, 11)
    saved_stock, saved_engine = _compare(pool, x, exact=True)
    assert saved_stock == x.numel() * 4 and saved_engine == 0


def test_engine_runs_on_meta():
    """analyze() traces models on the meta device: every engine function must run there."""
    model = nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1),
        _bn(BatchNormAct2d, act_layer=nn.ReLU6).eval(),
        nn.MaxPool2d(3, 2, 1),
        nn.AvgPool2d(2),
        nn.Dropout(0.2),
        nn.Conv2d(5, 4, 1),
    )
    for p in model.parameters():
        p.requires_grad_(p.ndim == 1)
    convert(model)
    model.to("meta")
    out = model(torch.randn(2, 3, 16, 16, device="meta"))
    assert out.shape == (2, 4, 4, 4)


def test_revert_keeps_a_model_channels_last_that_was_so_before():
    """Regression: converting a channels-last model with ``channels_last=True`` and reverting it left it
    contiguous; revert undoes only the layout convert changed."""
    for start_channels_last in (True, False):
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        if start_channels_last:
            model.to(memory_format=torch.channels_last)
        convert(model, channels_last=True)
        assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
        revert(model)
        assert model[0].weight.is_contiguous(memory_format=torch.channels_last) == start_channels_last


def test_convert_and_revert_reject_non_modules():
    with pytest.raises(ValueError, match="torch.nn.Module"):
        convert("mobilenetv2_100")
    with pytest.raises(ValueError, match="torch.nn.Module"):
        revert(None)
    # a bad size or flag is refused before any layer changes (it used to warn and convert anyway)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    for kwargs, message in (
        ({"input_size": (3, -8, 8)}, "input_size must be"),
        ({"input_size": "abc"}, "input_size must be"),
        ({"input_size": (3, 8)}, "input_size must be"),
        ({"channels_last": "no"}, "channels_last must be True or False"),
    ):
        with pytest.raises(ValueError, match=message):
            convert(model, **kwargs)
        assert type(model[1]) is nn.ReLU


def test_engine_disabled_block_restores_engine_layers():
    from tinytl_core.engine import engine_enabled, is_converted

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    convert(model)
    with engine_enabled(model, enabled=False) as report:
        assert not is_converted(model) and report.n_converted == 0
    assert is_converted(model) and type(model[1]).__name__ == "ReLU"
