"""Fine-tuning modes and lite residual modules on the main timm CNN families (issue 2)."""

import pytest
import timm
import torch

from tinytl_core.layer_kinds import is_frozen, is_norm, uses_batch_statistics
from tinytl_core.lite_residual import LiteResidual, LiteResidualBlock, LiteResidualConfig, find_blocks
from tinytl_core.modes import MODES, ModeNotApplicable, compare_trainable, get_mode, prepare_model

FAMILIES = [
    "mobilenetv2_100",
    "mobilenetv3_large_100",
    "efficientnet_b0",
    "resnet18",
    "regnetx_002",
    "convnext_atto",
]
RES = 64


def _expected_trainable(model, mode_name: str, scheme=None) -> set[str]:
    """Independent statement of what each mode must train, from names and module types (``scheme``: the
    sparse-update scheme the sparse mode applied)."""
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    head = {n for n, p in model.named_parameters() if id(p) in head_ids}
    norm = {
        f"{mn}.{pn}" if mn else pn
        for mn, m in model.named_modules()
        if is_norm(m)
        for pn, _ in m.named_parameters(recurse=False)
    }
    branch = {n for n, _ in model.named_parameters() if ".lite_residual." in f".{n}"}
    bias = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    every = {n for n, _ in model.named_parameters()}
    return {
        "full": every,
        "last": head,
        "bn+last": head | norm,
        "bias": head | bias,
        "lite_residual": head | branch,
        "lite_residual+bias": head | branch | bias,
        "mobiletl": head | bias,  # biases and norm shifts; only its backward differs from bias
        "sparse": head | _sparse_expected(model, scheme) if scheme is not None else set(),
    }[mode_name]


def _sparse_expected(model, scheme) -> set[str]:
    """Biases of every module from the first of the last k blocks on, and each scheme layer's weight (its
    trained rows, ``weight_train``, below ratio 1)."""
    names = [n for n, _ in model.named_modules()]
    first = [n for n, _ in find_blocks(model)][-scheme.bias_blocks] if scheme.bias_blocks else None
    tail = set(names[names.index(first) :]) if first is not None else set()
    biases = {n for n, _ in model.named_parameters() if n.endswith(".bias") and n.rsplit(".", 1)[0] in tail}
    return biases | {
        f"{u.layer}.weight" if u.ratio == 1 else f"{u.layer}.weight_train" for u in scheme.weights
    }


@pytest.mark.parametrize("backbone", FAMILIES)
@pytest.mark.parametrize("mode", list(MODES))
def test_mode_trains_exactly_the_intended_parameters(backbone, mode):
    prepared = prepare_model(backbone, mode, num_classes=3, resolution=RES)
    model = prepared.model
    model.train()
    model(torch.randn(2, 3, RES, RES)).logsumexp(1).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    expected = _expected_trainable(model, mode, prepared.result.scheme)
    assert with_grad == expected
    assert set(prepared.result.trainable) == expected
    # A frozen backbone keeps running statistics even after model.train(); full/bn+last use batch stats.
    backbone_norms = [m for n, m in model.named_modules() if is_norm(m) and ".lite_residual." not in f".{n}."]
    if MODES[mode].frozen_backbone:
        assert all(
            not uses_batch_statistics(m) for m in backbone_norms if isinstance(m, torch.nn.BatchNorm2d)
        )
    else:
        assert not any(is_frozen(m) for m in backbone_norms)


@pytest.mark.parametrize("backbone", FAMILIES)
def test_lite_residual_at_init_equals_backbone(backbone):
    torch.manual_seed(1)
    plain = timm.create_model(backbone, num_classes=4).eval()
    prepared = prepare_model(backbone, "lite_residual", num_classes=4, resolution=RES, engine=False)
    wrapped = prepared.model.eval()
    state = {
        k.replace(".block.", "."): v for k, v in wrapped.state_dict().items() if ".lite_residual." not in k
    }
    plain.load_state_dict(state)
    x = torch.randn(2, 3, RES, RES)
    with torch.no_grad():
        assert torch.equal(wrapped(x), plain(x))
    blocks = [m for m in wrapped.modules() if isinstance(m, LiteResidualBlock)]
    assert len(blocks) == len(prepared.result.lite_residual_blocks) >= 2
    assert prepared.result.lite_residual_params == sum(
        p.numel() for m in wrapped.modules() if isinstance(m, LiteResidual) for p in m.parameters()
    )


@pytest.mark.parametrize("backbone", FAMILIES)
def test_bias_trains_far_fewer_than_full(backbone):
    results = {r.mode: r for r in compare_trainable(backbone, resolution=RES)}
    assert all(r.applicable for r in results.values())
    assert results["bias"].n_trainable < 0.03 * results["full"].n_trainable
    assert results["last"].n_trainable < results["bias"].n_trainable


@pytest.mark.parametrize(
    "backbone", ["mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_b0", "resnet18"]
)
def test_lite_residual_adds_a_small_fraction_on_mobile_cnns(backbone):
    # The paper's sizing (expand 1, groups 2, kernel 5) targets narrow mobile blocks; wide bottleneck
    # families (RegNet, ResNet-50, ConvNeXt) get comparatively larger branches, which the app shows.
    r = {r.mode: r for r in compare_trainable(backbone, resolution=RES)}["lite_residual"]
    backbone_params = r.n_total - r.lite_residual_params
    assert 0 < r.lite_residual_params < 0.25 * backbone_params


def test_lite_residual_not_applicable_on_vit_says_why():
    prepared = prepare_model(
        "vit_tiny_patch16_224", "lite_residual", resolution=32, device="meta", strict=False
    )
    assert not prepared.result.applicable
    assert "4D feature map" in prepared.result.reason
    with pytest.raises(ModeNotApplicable, match="does not apply"):
        prepare_model("vit_tiny_patch16_224", "lite_residual+bias", resolution=32, device="meta")
    # ...while bias mode does apply to a ViT.
    assert prepare_model("vit_tiny_patch16_224", "bias", resolution=32, device="meta").result.n_trainable > 0


def test_group_norm_switch_replaces_batchnorm():
    prepared = prepare_model("mobilenetv2_100", "lite_residual+bias", resolution=RES, group_norm=True)
    model = prepared.model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    model.train()
    out = model(torch.randn(1, 3, RES, RES))  # batch size 1 trains with GroupNorm
    out.sum().backward()


def test_kernel_shrinks_on_small_feature_maps():
    prepared = prepare_model(
        "mobilenetv2_100", "lite_residual", resolution=32, lite_residual=LiteResidualConfig(kernel_size=5)
    )
    kernels = {m.conv1.kernel_size[0] for m in prepared.model.modules() if isinstance(m, LiteResidual)}
    assert kernels <= {5, 3, 1} and 1 in kernels  # 1x1 feature maps use global pooling


def test_unknown_mode_and_backbone_are_clear_errors():
    with pytest.raises(ValueError, match="choose one of"):
        get_mode("everything")
    with pytest.raises(ValueError, match="unknown backbone"):
        prepare_model("mobilenet_v2_100x", "bias")


@pytest.mark.parametrize("backbone", ["levit_128", "deit_tiny_distilled_patch16_224", "efficientformer_l1"])
def test_models_with_two_classifier_heads_train_both_in_every_mode(backbone):
    """Distilled models' ``get_classifier()`` is a tuple (class and distillation head): every mode applies
    and always trains both heads (it used to raise AttributeError on every page)."""
    from tinytl_core.backbones import classifier_heads
    from tinytl_core.modes import MODES, prepare_model

    for mode in MODES:
        prepared = prepare_model(backbone, mode, device="meta", strict=False, engine=False)
        heads = classifier_heads(prepared.model)
        assert len(heads) == 2
        if not prepared.result.applicable:
            assert "lite residual" in prepared.result.reason
            continue
        for head in heads:
            assert all(p.requires_grad for p in head.parameters()), mode
    last = prepare_model(backbone, "last", device="meta", engine=False)
    assert last.result.n_trainable == sum(
        p.numel() for h in classifier_heads(last.model) for p in h.parameters()
    )


@pytest.mark.parametrize("backbone", ["demo_mobilenetv2_050", "resnet10t"])  # added after / before act
def test_modes_applied_over_lite_residual_branches(backbone):
    """Branches already on a model stay (the paper's network has them in every mode; Table 2 depends on
    it): a lite residual mode applied again does not wrap its blocks twice, a mode without branches
    trains what it says around them (their weights frozen), and a mode that does not apply changes
    nothing."""
    from tinytl_core.backbones import create_backbone
    from tinytl_core.lite_residual import LiteResidual

    model, _ = create_backbone(backbone, 10, False)
    first = MODES["lite_residual+bias"].apply(model, input_size=(3, 64, 64), engine=False)
    names = [n for n, _ in model.named_modules()]
    again = MODES["lite_residual+bias"].apply(model, input_size=(3, 64, 64), engine=False)
    assert again.lite_residual_params == first.lite_residual_params > 0
    assert [n for n, _ in model.named_modules()] == names
    refused = MODES["sparse"].apply(model, input_size=(3, 64, 64), group_norm=True, strict=False)
    assert not refused.applicable and [n for n, _ in model.named_modules()] == names
    MODES["bias"].apply(model, input_size=(3, 64, 64), engine=False)
    branch_weights = [
        p
        for m in model.modules()
        if isinstance(m, LiteResidual)
        for n, p in m.named_parameters()
        if "weight" in n
    ]
    assert branch_weights and not any(p.requires_grad for p in branch_weights)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
