"""Built-in sample datasets that need no network: shapes, textures and scikit-learn's digits.

Each set is generated deterministically from a seed (image ``i`` of class ``c`` uses its own generator
seeded with ``(seed, c, i)``, so sizes can change without changing the other images) and cached as a
``.npz`` under ``cache_dir("datasets")/builtin`` after the first build (atomic write).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from tinytl_core.data import procedural as P
from tinytl_core.data.dataset import ArraySource
from tinytl_core.paths import cache_dir

SHAPE_CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "hexagon",
    "ring",
    "crescent",
    "arrow",
    "heart",
)
"""Classes of the ``shapes`` set (a subset of :data:`procedural.SHAPE_KINDS`)."""

TEXTURE_CLASSES: tuple[str, ...] = (
    "stripes",
    "checker",
    "dots",
    "waves",
    "grid",
    "rings",
    "zigzag",
    "crosshatch",
    "blobs",
    "marble",
)
"""Classes of the ``textures`` set (a subset of :data:`procedural.TEXTURE_KINDS`)."""

_SHAPE_BACKGROUNDS = ("plain", "gradient", "noise", "texture", "clutter")


def _image_rng(seed: int, label: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, label, index])


def draw_shapes_image(
    kind: str, rng: np.random.Generator, size: int = 96, backgrounds: Sequence[str] = _SHAPE_BACKGROUNDS
) -> np.ndarray:
    """One ``shapes`` image: a ``kind`` shape at a random pose, colour or texture fill, background, noise."""
    img = P.background(str(rng.choice(list(backgrounds))), (size, size), rng)
    diameter = int(size * rng.uniform(0.38, 0.75))
    half = diameter / 2
    center = (rng.uniform(half, size - half), rng.uniform(half, size - half))
    bg_mean = tuple(float(v) for v in img.reshape(-1, 3).mean(0))
    color = P.contrasting_color(rng, bg_mean)
    fill: P.Color | np.ndarray = color
    if rng.random() < 0.3:  # textured object: pattern in the object's colour and a darker shade
        fill = P.texture(
            str(rng.choice(P.TEXTURE_KINDS)),
            (size, size),
            rng,
            scale=rng.uniform(3, 8),
            angle=rng.uniform(0, 180),
            colors=(color, tuple(0.45 * c for c in color)),
        )
    outline = tuple(0.2 * c for c in color) if rng.random() < 0.4 else None
    img = P.draw_shape(
        img,
        kind,
        center,
        diameter,
        rng.uniform(0, 360),
        fill=fill,
        outline=outline,
        outline_width=max(1, size // 48),
        shadow=rng.uniform(0, 0.4),
    )
    if rng.random() < 0.3:  # a few distractors on top, partly occluding
        img = P.add_clutter(img, rng, count=int(rng.integers(1, 4)), size=(0.03, 0.1))
    if rng.random() < 0.25:
        img = P.blur(img, rng.uniform(0.3, 1.2))
    img = P.jitter_brightness_contrast(img, rng)
    return P.add_gaussian_noise(img, rng.uniform(0.0, 0.06), rng)


def draw_textures_image(kind: str, rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """One ``textures`` image: texture ``kind`` with random colours, period, angle, softness and noise."""
    fg = P.random_color(rng, saturation=(0.2, 1.0), value=(0.35, 1.0))
    bg = P.contrasting_color(rng, fg, min_distance=0.4)
    img = P.texture(
        kind,
        (size, size),
        rng,
        scale=rng.uniform(0.07, 0.16) * size,
        angle=rng.uniform(0, 180),
        colors=(fg, bg),
        softness=rng.uniform(0, 0.012 * size),
    )
    # Uneven lighting: multiply by a smooth noise field.
    light = 0.75 + 0.25 * P.value_noise((size, size), rng, scale=size / 2, octaves=1)[..., None]
    img = P.jitter_brightness_contrast(img * light, rng)
    return P.add_gaussian_noise(img, rng.uniform(0.0, 0.05), rng)


def _build_procedural(
    classes: Sequence[str],
    draw: Callable[[str, np.random.Generator, int], np.ndarray],
    n_per_class: int,
    image_size: int,
    seed: int,
    progress: bool,
    desc: str,
) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(classes) * n_per_class, image_size, image_size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(len(classes)), n_per_class)
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress) as bar:
        for c, kind in enumerate(classes):
            for i in range(n_per_class):
                images[c * n_per_class + i] = P.to_uint8(draw(kind, _image_rng(seed, c, i), image_size))
                bar.update(1)
    return images, labels


def build_shapes(
    n_per_class: int = 120, image_size: int = 96, seed: int = 0, *, progress: bool = False
) -> ArraySource:
    """Generate the ``shapes`` set: :data:`SHAPE_CLASSES` in random pose/colour on varied backgrounds."""
    images, labels = _build_procedural(
        SHAPE_CLASSES, draw_shapes_image, n_per_class, image_size, seed, progress, "shapes"
    )
    return ArraySource(images, labels, SHAPE_CLASSES)


def build_textures(
    n_per_class: int = 120, image_size: int = 96, seed: int = 0, *, progress: bool = False
) -> ArraySource:
    """Generate the ``textures`` set: :data:`TEXTURE_CLASSES` with random colours, period and angle."""
    images, labels = _build_procedural(
        TEXTURE_CLASSES, draw_textures_image, n_per_class, image_size, seed, progress, "textures"
    )
    return ArraySource(images, labels, TEXTURE_CLASSES)


def build_digits(
    n_per_class: int | None = None, image_size: int = 64, seed: int = 0, *, progress: bool = False
) -> ArraySource:
    """scikit-learn's handwritten digits (1797 real 8x8 scans, 10 classes), upscaled bicubically to RGB.

    ``n_per_class`` keeps the first ``n`` of each class (all by default); ``seed`` is unused (the data
    is fixed) but accepted so every builder has the same signature.
    """
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    del seed, progress  # fixed data, fast enough to need no bar
    digits = load_digits()
    keep = np.arange(len(digits.target))
    if n_per_class is not None:
        keep = np.sort(np.concatenate([np.flatnonzero(digits.target == c)[:n_per_class] for c in range(10)]))
    images = np.empty((len(keep), image_size, image_size, 3), dtype=np.uint8)
    for k, idx in enumerate(keep):
        small = Image.fromarray((digits.images[idx] * (255.0 / 16.0)).astype(np.uint8))
        big = np.asarray(small.resize((image_size, image_size), Image.Resampling.BICUBIC))
        images[k] = big[..., None]
    return ArraySource(images, digits.target[keep], [str(d) for d in range(10)])


@dataclass(frozen=True)
class BuiltinSet:
    """How to build one built-in set and its defaults."""

    name: str
    title: str
    description: str
    build: Callable[..., ArraySource]
    n_per_class: int | None
    image_size: int
    hflip: bool
    version: int  # bump when the generator changes so stale caches are not reused


BUILTIN_SETS: dict[str, BuiltinSet] = {
    "shapes": BuiltinSet(
        "shapes",
        "Shapes (procedural)",
        "10 shape classes (circle, square, triangle, star, cross, hexagon, ring, crescent, arrow, heart) "
        "at random size, rotation, position and colour or texture fill, on plain, gradient, noisy, "
        "textured or cluttered backgrounds, with occluders, blur and pixel noise. 120 images/class, 96 px.",
        build_shapes,
        120,
        96,
        True,
        1,
    ),
    "textures": BuiltinSet(
        "textures",
        "Textures (procedural)",
        "10 texture classes (stripes, checker, dots, waves, grid, rings, zigzag, crosshatch, blobs, marble) "
        "with random colours, period, orientation, softness, uneven lighting and noise. 120 images/class, "
        "96 px.",
        build_textures,
        120,
        96,
        True,
        1,
    ),
    "digits": BuiltinSet(
        "digits",
        "Digits (scikit-learn)",
        "1797 real handwritten digits (10 classes) from scikit-learn's offline copy of the UCI set, "
        "8x8 scans upscaled to 64 px grey RGB.",
        build_digits,
        None,
        64,
        False,
        1,
    ),
}
"""The built-in sets by name."""


def builtin_cache_path(name: str, *, n_per_class: int | None, image_size: int, seed: int) -> Path:
    """Where the cached arrays of one built-in configuration live."""
    spec = BUILTIN_SETS[name]
    n = "all" if n_per_class is None else str(n_per_class)
    return cache_dir("datasets") / "builtin" / f"{name}-v{spec.version}-seed{seed}-n{n}-{image_size}px.npz"


def _save_atomic(path: Path, source: ArraySource) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, images=source.images, labels=source.labels, classes=np.asarray(source.classes))
        os.replace(tmp, path)  # readers see the old file or the complete new one, never a partial one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_builtin(
    name: str,
    *,
    n_per_class: int | None = -1,
    image_size: int | None = None,
    seed: int = 0,
    cache: bool = True,
    progress: bool = False,
) -> ArraySource:
    """Return built-in set ``name``, building and caching it on first use.

    ``n_per_class=-1`` and ``image_size=None`` mean the set's defaults. With ``cache=False`` the set is
    always regenerated and nothing is written.
    """
    if name not in BUILTIN_SETS:
        raise ValueError(f"unknown built-in dataset {name!r}; choose from {', '.join(BUILTIN_SETS)}")
    spec = BUILTIN_SETS[name]
    n = spec.n_per_class if n_per_class == -1 else n_per_class
    if n is not None and n < 2:
        raise ValueError(f"n_per_class must be >= 2 (one for training, one for validation), got {n}")
    size = spec.image_size if image_size is None else int(image_size)
    if size < 8:
        raise ValueError(f"image_size must be >= 8 px, got {size}")
    path = builtin_cache_path(name, n_per_class=n, image_size=size, seed=seed)
    if cache and path.exists():
        try:
            with np.load(path) as f:
                return ArraySource(f["images"], f["labels"], [str(c) for c in f["classes"]])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)  # damaged cache: rebuild below
    source = spec.build(n, size, seed, progress=progress)
    if cache:
        _save_atomic(path, source)
    return source
