"""Backbone catalog, creation and the offline pretrained fallback (issue 2)."""

import threading
import time

import pytest
import timm
import torch

from tinytl_core.backbones import (
    CURATED_BACKBONES,
    accepts_img_size,
    catalog,
    create_backbone,
    data_config,
    hub,
    list_backbones,
    meta_backbone,
)


def test_curated_backbones_come_first_and_exist():
    rows = list_backbones()
    assert [r.name for r in rows[: len(CURATED_BACKBONES)]] == list(CURATED_BACKBONES)
    assert len(rows) > 1000


def test_filters():
    vits = list_backbones(search="vit_tiny", kind="transformer")
    assert vits and all("vit_tiny" in r.name and r.kind == "transformer" for r in vits)
    resnets = list_backbones(family="resnet", pretrained_only=True)
    assert resnets and all(r.family == "resnet" and r.has_pretrained for r in resnets)
    assert all(r.kind == "cnn" for r in list_backbones(search="mobilenetv2"))
    with pytest.raises(ValueError, match="unknown kind"):
        list_backbones(kind="rnn")
    with pytest.raises(ValueError, match="unknown family"):
        list_backbones(family="nosuchfamily")


def test_create_for_n_classes_and_data_config():
    model, status = create_backbone("mobilenetv2_050", num_classes=7)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    assert not status.pretrained_loaded and not status.fell_back
    cfg = data_config("mobilenetv2_050")
    assert cfg.input_size == (3, 224, 224) and len(cfg.mean) == 3 and cfg.resolution == 224
    assert data_config("vit_base_patch16_384").resolution == 384


def test_offline_pretrained_request_falls_back_quickly(monkeypatch):
    # Offline and nothing cached, whatever this machine's Hugging Face cache holds.
    monkeypatch.setenv("TINYTL_OFFLINE", "1")
    monkeypatch.setattr(hub, "cached_weights", lambda name: None)
    start = time.monotonic()
    model, status = create_backbone("resnet18", num_classes=3, pretrained=True)
    assert time.monotonic() - start < 30
    assert status.pretrained_requested and status.fell_back and not status.pretrained_loaded
    assert "random init" in status.message and "offline" in status.message
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_unreachable_host_falls_back_with_a_status(monkeypatch):
    monkeypatch.delenv("TINYTL_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "cached_weights", lambda name: None)
    monkeypatch.setattr(hub, "host_reachable", lambda host, timeout=0: False)
    _, status = create_backbone("resnet18", num_classes=3, pretrained=True)
    assert status.fell_back and "cannot reach" in status.message


def test_stalled_download_is_bounded(monkeypatch):
    monkeypatch.delenv("TINYTL_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "cached_weights", lambda name: None)
    monkeypatch.setattr(hub, "host_reachable", lambda host, timeout=0: True)
    real_create = timm.create_model

    def slow_create(name, pretrained=False, **kw):
        if pretrained:
            time.sleep(5)
        return real_create(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", slow_create)
    start = time.monotonic()
    _, status = create_backbone("resnet18", num_classes=3, pretrained=True, timeout=0.5)
    assert time.monotonic() - start < 4
    assert status.fell_back and "TimeoutError" in status.message
    # Let the abandoned download thread finish so interpreter shutdown does not race it.
    for thread in threading.enumerate():
        if thread.name.startswith("tinytl-download"):
            thread.join(30)


def test_no_pretrained_weights_for_arch_is_reported(monkeypatch):
    monkeypatch.setattr(catalog, "pretrained_architectures", lambda: frozenset())
    _, status = create_backbone("resnet18", num_classes=3, pretrained=True)
    assert status.fell_back and "no pretrained weights" in status.message


def test_img_size_is_read_from_timm_signatures():
    # ViTs (a hybrid one too: a ResNetV2 stem feeding a VisionTransformer) take img_size; a fixed-size
    # transformer without it (PVTv2) and a CNN do not.
    assert accepts_img_size("vit_tiny_patch16_224") and accepts_img_size("vit_base_r50_s16_384")
    assert not accepts_img_size("pvt_v2_b0") and not accepts_img_size("resnet18")
    vit = create_backbone("vit_tiny_patch16_224", 3, device="meta", resolution=96)[0]
    assert vit.patch_embed.img_size == (96, 96)
    pvt = create_backbone("pvt_v2_b0", 3, device="meta", resolution=96)[0]  # no img_size passed: builds
    assert pvt.get_classifier().out_features == 3


def test_meta_backbone_allocates_nothing():
    model = meta_backbone("vit_giant_patch14_224")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) > 1e9


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("resnet_18")
    with pytest.raises(ValueError, match="num_classes"):
        create_backbone("resnet18", num_classes=0)


def _described(model: torch.nn.Module) -> list:
    """What a copy must reproduce: module tree and types, plain attributes, tensors' shapes and flags."""
    out: list = []
    for name, module in model.named_modules():
        plain = {
            k: v if isinstance(v, (int, float, str, bool, tuple, type(None))) else type(v).__name__
            for k, v in vars(module).items()
            if not k.startswith("_")
        }
        out.append((name, type(module).__name__, sorted(plain.items(), key=str)))
    out.append([(n, p.shape, p.dtype, p.requires_grad, p.device) for n, p in model.named_parameters()])
    out.append([(n, b.shape, b.dtype, b.device) for n, b in model.named_buffers()])
    return out


@pytest.mark.parametrize(
    "name", ["mobilenetv2_100", "resnet18", "regnetx_002", "convnext_atto", "vit_tiny_patch16_224"]
)
def test_copy_module_equals_deepcopy_and_is_independent(name):
    import copy

    from tinytl_core.backbones.builder import copy_module
    from tinytl_core.lite_residual import attach_lite_residuals

    template = create_backbone(name, 5, device="meta")[0]
    if name != "vit_tiny_patch16_224":  # a branch referenced twice (a submodule and a plain attribute)
        attach_lite_residuals(template, (3, 64, 64))
    template.get_classifier().weight.requires_grad_(False)
    fast, slow = copy_module(template), copy.deepcopy(template)
    assert _described(fast) == _described(slow) == _described(template)
    originals = {id(t) for t in (*template.modules(), *template.parameters(), *template.buffers())}
    assert not originals & {id(t) for t in (*fast.modules(), *fast.parameters(), *fast.buffers())}
    for a, b in zip(template.modules(), fast.modules()):  # hook registries and sets are the copy's own
        for key, value in vars(a).items():
            if isinstance(value, (dict, set, list)):
                assert vars(b)[key] is not value, key
    fast.get_classifier().weight.requires_grad_(True)
    assert not template.get_classifier().weight.requires_grad


def test_copy_module_keeps_tied_weights_and_shared_modules_shared():
    from tinytl_core.backbones.builder import copy_module

    shared = torch.nn.Linear(4, 4)
    model = torch.nn.Sequential(shared, torch.nn.ReLU(), shared, torch.nn.Linear(4, 4))
    model[3].weight = model[0].weight  # tied
    model.extra = [shared]  # a plain attribute holding a module of the tree (deep-copied with the memo)
    copied = copy_module(model)
    assert copied[0] is copied[2] and copied[3].weight is copied[0].weight
    assert copied.extra[0] is copied[0] and copied[0] is not shared
    x = torch.randn(2, 4)
    torch.testing.assert_close(copied(x), model(x))


def test_own_resolution_equals_the_built_models_data_config():
    """The fast look-up (timm's registered config, no model built) gives what data_config resolves on the
    built model: for the curated set, the shipped backbone and a spread of the catalog."""
    from tinytl_core.backbones import CURATED_BACKBONES, data_config, list_backbones, own_resolution

    names = [*CURATED_BACKBONES, *[b.name for b in list_backbones()][::97]]
    assert [own_resolution(n) for n in names] == [data_config(n).resolution for n in names]
