"""The synthetic *source* task the bundled demo backbone is pretrained on (not a target dataset).

Transfer learning needs a large source task whose features carry over to small target tasks. This one
is compositional: every class is a combination of four factors of one foreground object,

    shape (12 kinds) x colour family (4) x fill (4) x background style (2) = 384 classes,

e.g. ``star/red/stripes/busy``. Position, size, rotation, shade, outline, shadow, occluders, blur,
lighting and noise vary freely. The label space differs from the built-in target sets
(:mod:`tinytl_core.data.builtin`: 10 shapes, 10 full-frame textures, handwritten digits), which label one
factor each, at another resolution and with other seeds; the two share only the drawing primitives of
:mod:`tinytl_core.data.procedural`, as ImageNet shares edges and textures with the paper's target sets.
Digits share nothing with it but pixels, so they are the hardest transfer test.

Images are generated on the fly by :func:`source_batch`: image ``i`` is a pure function of
``(seed, split, i)``, so any chunk can be regenerated exactly and held-out images never repeat training
ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

from tinytl_core.data import procedural as P

SOURCE_SHAPES: tuple[str, ...] = P.SHAPE_KINDS
"""Shape factor: all shape kinds of the procedural primitives."""

SOURCE_COLOURS: dict[str, float] = {"red": 0.0, "yellow": 0.15, "green": 0.33, "blue": 0.62}
"""Colour factor: colour family name -> central hue (the object's hue is jittered by +-0.04)."""

SOURCE_FILLS: tuple[str, ...] = ("solid", "stripes", "dots", "checker")
"""Fill factor: a plain colour or a two-tone pattern in the object's colour family."""

SOURCE_BACKGROUNDS: dict[str, tuple[str, ...]] = {
    "plain": ("plain", "gradient"),
    "busy": ("noise", "texture", "clutter"),
}
"""Background factor: style name -> the procedural background kinds it draws from."""

HUE_JITTER = 0.04
DEFAULT_IMAGE_SIZE = 64


@dataclass(frozen=True)
class SourceClass:
    """One class of the source task: a combination of the four factors."""

    shape: str
    colour: str
    fill: str
    background: str

    @property
    def name(self) -> str:
        return f"{self.shape}/{self.colour}/{self.fill}/{self.background}"


SOURCE_CLASSES: tuple[SourceClass, ...] = tuple(
    SourceClass(*combo) for combo in product(SOURCE_SHAPES, SOURCE_COLOURS, SOURCE_FILLS, SOURCE_BACKGROUNDS)
)
"""All classes, label = index in this tuple."""

SOURCE_CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in SOURCE_CLASSES)

SOURCE_TASK_DESCRIPTION = (
    f"{len(SOURCE_CLASSES)} compositional classes = {len(SOURCE_SHAPES)} shapes x {len(SOURCE_COLOURS)} "
    f"colour families ({', '.join(SOURCE_COLOURS)}) x {len(SOURCE_FILLS)} fills ({', '.join(SOURCE_FILLS)}) "
    f"x {len(SOURCE_BACKGROUNDS)} background styles ({', '.join(SOURCE_BACKGROUNDS)}); one object per "
    "image at random position, size, rotation and shade, with outline, shadow, occluders, blur, lighting "
    "and pixel noise; generated on the fly from a seed"
)


def _desaturate(image: np.ndarray, amount: float) -> np.ndarray:
    """Pull colours towards their grey level so the object's colour family is the salient one."""
    grey = image.mean(axis=-1, keepdims=True)
    return (image * (1 - amount) + grey * amount).astype(np.float32)


def draw_source_image(
    cls: SourceClass, rng: np.random.Generator, size: int = DEFAULT_IMAGE_SIZE
) -> np.ndarray:
    """Draw one image of class ``cls`` as a float ``(size, size, 3)`` array in ``[0, 1]``."""
    kind = str(rng.choice(SOURCE_BACKGROUNDS[cls.background]))
    img = _desaturate(P.background(kind, (size, size), rng), rng.uniform(0.4, 0.8))
    diameter = max(8, int(size * rng.uniform(0.45, 0.8)))
    half = diameter / 2
    center = (rng.uniform(half, size - half), rng.uniform(half, size - half))
    color = P.random_color(
        rng,
        hue=SOURCE_COLOURS[cls.colour] + rng.uniform(-HUE_JITTER, HUE_JITTER),
        saturation=(0.65, 1.0),
        value=(0.55, 1.0),
    )
    fill: P.Color | np.ndarray = color
    if cls.fill != "solid":
        dark = tuple(c * rng.uniform(0.25, 0.5) for c in color)
        fill = P.texture(
            cls.fill,
            (size, size),
            rng,
            scale=rng.uniform(0.07, 0.12) * size,
            angle=rng.uniform(0, 180),
            colors=(color, dark),
        )
    outline = tuple(0.15 * c for c in color) if rng.random() < 0.3 else None
    img = P.draw_shape(
        img,
        cls.shape,
        center,
        diameter,
        rng.uniform(0, 360),
        fill=fill,
        outline=outline,
        outline_width=max(1, size // 48),
        shadow=rng.uniform(0, 0.4),
    )
    if rng.random() < 0.25:  # small occluders: the label must survive partial views
        img = P.add_clutter(img, rng, count=int(rng.integers(1, 3)), size=(0.03, 0.08))
    if rng.random() < 0.2:
        img = P.blur(img, rng.uniform(0.3, 0.9))
    img = P.jitter_brightness_contrast(img, rng, brightness=0.1, contrast=0.15)
    return P.add_gaussian_noise(img, rng.uniform(0.0, 0.04), rng)


SPLITS: dict[str, int] = {"train": 0, "heldout": 1}
"""Image streams: ``heldout`` images never occur in ``train`` (disjoint generator seeds)."""


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return np.random.default_rng([seed, SPLITS[split], index])


def source_batch(
    seed: int, start: int, count: int, size: int = DEFAULT_IMAGE_SIZE, *, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Generate images ``start .. start+count-1`` of a stream: ``uint8 (N, H, W, 3)`` images and labels.

    Image ``i`` uses its own generator seeded with ``(seed, split, i)``: its label (uniform over
    :data:`SOURCE_CLASSES`) is the generator's first draw and the picture is drawn from the rest, so a
    chunk is the same whatever the chunking, and ``split="heldout"`` never repeats a training image.
    """
    if size < 16:
        raise ValueError(f"source images need at least 16 px, got {size}")
    if count < 0 or start < 0:
        raise ValueError(f"start and count must be >= 0, got {start}, {count}")
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    for k, i in enumerate(range(start, start + count)):
        rng = _image_rng(seed, split, i)
        labels[k] = rng.integers(len(SOURCE_CLASSES))
        images[k] = P.to_uint8(draw_source_image(SOURCE_CLASSES[labels[k]], rng, size))
    return images, labels
