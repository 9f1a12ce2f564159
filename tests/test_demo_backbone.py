"""The shipped demo backbone: checkpoint + card, offline loading, and that its transfer is real (issue 7)."""

import socket

import numpy as np
import pytest
import torch

from tinytl_core.adapt import AdaptConfig, adapt
from tinytl_core.backbones import (
    DEMO_BACKBONE,
    LOCAL_BACKBONES,
    backbone_info,
    check_backbone_name,
    create_backbone,
    data_config,
    list_backbones,
    load_local_backbone,
    local,
    meta_backbone,
)
from tinytl_core.data.builtin import load_builtin
from tinytl_core.data.dataset import make_splits
from tinytl_core.data.source_task import SOURCE_CLASSES, source_batch

SPEC = LOCAL_BACKBONES[DEMO_BACKBONE]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the demo backbone must load without touching the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_checkpoint_and_card_are_shipped_and_consistent():
    assert SPEC.weights_path.is_file() and SPEC.weights_path.stat().st_size < 8e6
    card = SPEC.card()
    assert card is not None
    assert card["architecture"] == SPEC.architecture and card["resolution"] == SPEC.input_size[-1]
    assert card["weights_bytes"] == SPEC.weights_path.stat().st_size
    assert card["source_task"]["num_classes"] == len(SOURCE_CLASSES)
    assert card["source_accuracy"]["top1"] > 20 * card["chance_accuracy"]
    assert "pretrain_demo_backbone.py" in card["command"] and card["training"]["steps"] >= 1
    assert card["time"]["total_s"] > 0 and isinstance(card["training"]["seed"], int)


def test_demo_is_listed_first_and_resolves_like_any_backbone():
    first = list_backbones()[0]
    assert first.name == DEMO_BACKBONE and first.has_pretrained and first.kind == "cnn"
    assert "pretrained here on synthetic data" in first.description
    assert [r.name for r in list_backbones(search="demo")] == [DEMO_BACKBONE]
    assert backbone_info(DEMO_BACKBONE).curated
    check_backbone_name(DEMO_BACKBONE)
    assert data_config(DEMO_BACKBONE).input_size == SPEC.input_size
    model = meta_backbone(DEMO_BACKBONE, 7)
    assert model.get_classifier().out_features == 7 and next(model.parameters()).device.type == "meta"


def test_loads_offline_with_a_new_classifier(no_network):
    from safetensors.torch import load_file

    model, status = create_backbone(DEMO_BACKBONE, num_classes=5, pretrained=True)
    assert status.pretrained_loaded and not status.fell_back, status.message
    assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    stored = load_file(str(SPEC.weights_path))
    weights = dict(model.named_parameters())
    assert torch.equal(weights["conv_stem.weight"], stored["conv_stem.weight"].float())
    random, status = create_backbone(DEMO_BACKBONE, num_classes=5, pretrained=False)
    assert not status.pretrained_loaded
    assert [(n, p.shape) for n, p in random.named_parameters()] == [(n, p.shape) for n, p in weights.items()]
    assert not torch.equal(random.conv_stem.weight, weights["conv_stem.weight"])


def test_checkpoint_recognises_fresh_source_images(no_network):
    card = SPEC.card()
    model = load_local_backbone(DEMO_BACKBONE).eval()  # keeps the source-task classifier
    assert model.get_classifier().out_features == len(SOURCE_CLASSES)
    # Held-out images past the ones the card was measured on: never seen in training or evaluation.
    start = card["source_task"]["heldout_images"]
    images, labels = source_batch(card["training"]["seed"], start, 96, split="heldout")
    cfg = data_config(model)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    shape_right = np.mean([SOURCE_CLASSES[p].shape == SOURCE_CLASSES[t].shape for p, t in zip(pred, labels)])
    assert (pred == labels).mean() > 20 / len(SOURCE_CLASSES)
    assert shape_right > 3 / 12


def test_missing_checkpoint_falls_back_with_a_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(local, "WEIGHTS_DIR", tmp_path)
    model, status = create_backbone(DEMO_BACKBONE, num_classes=3, pretrained=True)
    assert status.fell_back and "tools/pretrain_demo_backbone.py" in status.message
    assert model.get_classifier().out_features == 3
    with pytest.raises(FileNotFoundError):
        load_local_backbone(DEMO_BACKBONE)
    with pytest.raises(ValueError, match="not a shipped backbone"):
        load_local_backbone("resnet18")


def test_last_layer_transfer_beats_random_init(tinytl_home, no_network):
    # A small copy of the built-in shapes set (40 images per class, cached in the test's data folder).
    source = load_builtin("shapes", n_per_class=40)
    data = make_splits("shapes", source, val_fraction=0.25, seed=0, hflip=True, center_crop=False)
    acc = {}
    for pretrained in (True, False):
        config = AdaptConfig(
            backbone=DEMO_BACKBONE,
            mode="last",
            dataset="shapes",
            steps=40,
            batch_size=16,
            lr=3e-3,
            seed=0,
            pretrained=pretrained,
            record_memory=False,
            device="cpu",
        )
        result = adapt(config, data=data)
        assert result.status == "finished" and result.pretrained_loaded == pretrained
        acc[pretrained] = result.final_val_acc
    assert acc[True] > acc[False] + 0.15, acc
