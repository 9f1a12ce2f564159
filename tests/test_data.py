"""Procedural primitives, built-in sets, splits, transforms and the dataset registry (all offline)."""

import time

import numpy as np
import pytest
import torch

from tinytl_core.data import (
    DatasetUnavailable,
    attach_transforms,
    build_transform,
    dataset_info,
    list_datasets,
    load_dataset,
)
from tinytl_core.data import procedural as P
from tinytl_core.data.builtin import BUILTIN_SETS, builtin_cache_path, load_builtin
from tinytl_core.data.dataset import cap_per_class, stratified_split

CONFIG = {
    "input_size": (3, 224, 224),
    "mean": (0.5, 0.5, 0.5),
    "std": (0.25, 0.25, 0.25),
    "crop_pct": 0.875,
    "interpolation": "bicubic",
}


# ------------------------------------------------------------------------------------------ procedural
@pytest.mark.parametrize("kind", P.SHAPE_KINDS)
def test_shape_masks_are_distinct_and_rotate(kind):
    mask = P.shape_mask(kind, 48)
    assert mask.shape == (48, 48) and 0.15 < mask.mean() < 0.9
    others = [P.shape_mask(k, 48) for k in P.SHAPE_KINDS if k != kind]
    assert all(np.abs(mask - o).mean() > 0.02 for o in others)
    if kind not in ("circle", "ring"):  # rotation-invariant kinds
        assert np.abs(P.shape_mask(kind, 48, angle=37) - mask).mean() > 0.01


@pytest.mark.parametrize("kind", P.TEXTURE_KINDS)
def test_textures_use_both_colours_and_are_seeded(kind):
    colors = ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    tex = P.texture(kind, (40, 40), np.random.default_rng(3), scale=8, angle=20, colors=colors)
    assert tex.shape == (40, 40, 3) and tex.dtype == np.float32
    red_share = tex[..., 0].mean()
    assert 0.05 < red_share < 0.95 and np.allclose(tex[..., 0] + tex[..., 2], 1, atol=1e-5)
    again = P.texture(kind, (40, 40), np.random.default_rng(3), scale=8, angle=20, colors=colors)
    assert np.array_equal(tex, again)


def test_backgrounds_noise_and_compositing():
    rng = np.random.default_rng(0)
    for kind in P.BACKGROUND_KINDS:
        bg = P.background(kind, (32, 40), rng)
        assert bg.shape == (32, 40, 3) and 0 <= bg.min() and bg.max() <= 1
    img = np.zeros((20, 20, 3), np.float32)
    # A mask hanging over the corner is clipped, and only the covered pixels change.
    out = P.composite(img, np.ones((10, 10), np.float32), (1.0, 1.0, 1.0), (15, -5))
    assert out[:5, 15:].min() == 1 and out[5:].max() == 0 and out[:, :15].max() == 0 and img.max() == 0
    star = P.draw_shape(img, "star", (10, 10), 16, fill=(0.0, 1.0, 0.0), outline=(1.0, 0.0, 0.0))
    assert star[..., 1].max() == pytest.approx(1.0) and star[..., 0].max() > 0.5
    noisy = P.add_gaussian_noise(np.full((16, 16, 3), 0.5, np.float32), 0.1, rng)
    assert 0.05 < noisy.std() < 0.15
    with pytest.raises(ValueError, match="unknown shape kind"):
        P.shape_mask("blob", 10)
    with pytest.raises(ValueError, match="unknown texture kind"):
        P.texture("plaid", (8, 8), rng)
    with pytest.raises(ValueError, match="unknown background kind"):
        P.background("sky", (8, 8), rng)


# ---------------------------------------------------------------------------------------- built-in sets
@pytest.mark.parametrize("name", list(BUILTIN_SETS))
def test_builtin_sets_are_deterministic_and_cached(tinytl_home, name):
    a = load_builtin(name, n_per_class=3, image_size=24, seed=1)
    path = builtin_cache_path(name, n_per_class=3, image_size=24, seed=1)
    assert path.is_file() and str(path).startswith(str(tinytl_home))
    b = load_builtin(name, n_per_class=3, image_size=24, seed=1)  # from the cache
    fresh = load_builtin(name, n_per_class=3, image_size=24, seed=1, cache=False)
    assert a.images.shape == (30, 24, 24, 3) and len(a.classes) == 10
    assert np.array_equal(a.images, b.images) and np.array_equal(a.images, fresh.images)
    assert np.array_equal(np.bincount(a.labels), [3] * 10)
    if name != "digits":  # digits are fixed real data; the procedural sets depend on the seed
        other = load_builtin(name, n_per_class=3, image_size=24, seed=2, cache=False)
        assert not np.array_equal(a.images, other.images)
        # Each image has its own generator: a larger set starts with the same images.
        bigger = load_builtin(name, n_per_class=4, image_size=24, seed=1, cache=False)
        assert np.array_equal(bigger.images[bigger.labels == 5][:3], a.images[a.labels == 5])


def test_builtin_rebuilds_a_damaged_cache(tinytl_home):
    a = load_builtin("textures", n_per_class=2, image_size=16)
    path = builtin_cache_path("textures", n_per_class=2, image_size=16, seed=0)
    path.write_bytes(b"garbage")
    b = load_builtin("textures", n_per_class=2, image_size=16)
    assert np.array_equal(a.images, b.images)
    with pytest.raises(ValueError, match="unknown built-in dataset"):
        load_builtin("nope")
    with pytest.raises(ValueError, match="n_per_class"):
        load_builtin("shapes", n_per_class=1)


# ------------------------------------------------------------------------------------ splits, few-shot
def test_stratified_split_and_few_shot_cap():
    labels = np.repeat(np.arange(4), [10, 5, 2, 1])
    train, val = stratified_split(labels, 0.2, seed=0)
    assert set(train).isdisjoint(val) and sorted([*train, *val]) == list(range(len(labels)))
    assert list(np.bincount(labels[val], minlength=4)) == [2, 1, 1, 0]  # a lone image stays in training
    assert np.array_equal(stratified_split(labels, 0.2, seed=0)[1], val)
    assert not np.array_equal(stratified_split(labels, 0.5, seed=1)[1], stratified_split(labels, 0.5, 2)[1])
    capped = cap_per_class(train, labels, 3, seed=0)
    assert list(np.bincount(labels[capped], minlength=4)) == [3, 3, 1, 1] and set(capped) <= set(train)
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(labels, 1.0, seed=0)
    with pytest.raises(ValueError, match="shots"):
        cap_per_class(train, labels, 0, seed=0)


def test_transforms_follow_config_and_resolution():
    from PIL import Image

    img = Image.fromarray(np.full((50, 70, 3), 128, np.uint8))
    x = build_transform(CONFIG, train=False, resolution=40)(img)
    assert x.shape == (3, 40, 40)
    assert torch.allclose(x, torch.full_like(x, (128 / 255 - 0.5) / 0.25), atol=1e-4)
    assert build_transform(CONFIG, train=True)(img).shape == (3, 224, 224)
    names = [type(t).__name__ for t in build_transform(CONFIG, train=True, hflip=False).transforms]
    assert "RandomHorizontalFlip" not in names and "RandomResizedCrop" in names
    with pytest.raises(ValueError, match="resolution"):
        build_transform(CONFIG, train=False, resolution=2)


# ------------------------------------------------------------------------------------------- registry
def test_registry_lists_and_loads_builtin_sets(tinytl_home):
    names = {d.name: d for d in list_datasets()}
    assert {"shapes", "textures", "digits"} <= {d.name for d in list_datasets("builtin")}
    paper = {"flowers102", "pets", "aircraft", "food101", "cifar10", "cifar100", "cars"}
    assert paper <= {n for n, d in names.items() if d.paper}
    assert all(d.description for d in names.values())
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*shapes"):
        dataset_info("imagenet")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")

    digits = load_dataset("digits", shots=4, val_cap=2, seed=3)
    assert digits.num_classes == 10 and len(digits.train) == 40 and len(digits.val) == 20
    assert not digits.hflip and not digits.center_crop  # flipping digits changes them
    size = attach_transforms(digits, CONFIG, resolution=32)
    x, y = digits.train[0]
    assert size == 32 and x.shape == (3, 32, 32) and 0 <= y < 10
    again = load_dataset("digits", shots=4, val_cap=2, seed=3)
    assert np.array_equal(again.train.indices, digits.train.indices)


def test_torchvision_set_offline_is_a_clear_fast_error(tinytl_home, monkeypatch):
    monkeypatch.setenv("TINYTL_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DatasetUnavailable, match="CIFAR-10 is not in .*offline.*built-in dataset"):
        load_dataset("cifar10")
    assert time.monotonic() - start < 10  # no network wait at all (generous bound for a loaded machine)
    with pytest.raises(DatasetUnavailable, match="cannot download it"):
        load_dataset("cars")
    assert isinstance(DatasetUnavailable("x"), FileNotFoundError)  # the CLI prints it as `error: ...`


def test_torchvision_unreachable_host_is_bounded(tinytl_home, monkeypatch):
    from tinytl_core.data import torchvision_sets as tvs

    monkeypatch.delenv("TINYTL_OFFLINE", raising=False)
    monkeypatch.setattr(tvs, "_reachable", lambda host, timeout: False)
    with pytest.raises(DatasetUnavailable, match="cannot be reached within 2 s"):
        tvs.load_torchvision("flowers102", timeout=2)
    assert not tvs.is_downloaded("flowers102")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_cap": 0}, "validation images per class must be 1 to"),
        ({"shots": 1.5}, "images per class must be a whole number"),
        ({"val_cap": 1.5}, "validation images per class must be a whole number"),
        ({"seed": -1}, "seed must be 0 to"),
        ({"seed": None}, "seed must be a number, got None"),
        ({"val_fraction": 1.0}, "validation fraction must be more than 0"),
    ],
)
def test_load_dataset_names_the_argument_it_refuses(kwargs, message, tinytl_home):
    """Bad numbers failed deep in NumPy ("slice indices must be integers"), under another argument's name
    (val_cap=0 was "shots"), or silently (seed=None gave an unseeded split)."""
    with pytest.raises(ValueError, match=message):
        load_dataset("digits", **kwargs)
