"""Procedural image primitives: shapes, textures, backgrounds and noise (numpy + PIL only).

Everything here is deterministic given a ``numpy.random.Generator`` and works on float images:

- an *image* is a ``float32`` array of shape ``(H, W, 3)`` with values in ``[0, 1]``;
- a *mask* is a ``float32`` array of shape ``(H, W)`` in ``[0, 1]`` (anti-aliased coverage).

Building blocks, meant to be combined by dataset builders (the built-in sample sets, synthetic source tasks):

- colours: :func:`random_color`, :func:`hsv_to_rgb`;
- shapes: :data:`SHAPE_KINDS`, :func:`shape_polygon`, :func:`shape_mask`, :func:`draw_shape`;
- textures: :data:`TEXTURE_KINDS`, :func:`texture`, :func:`random_texture`;
- backgrounds: :data:`BACKGROUND_KINDS`, :func:`background`, :func:`add_clutter`;
- noise and degradations: :func:`value_noise`, :func:`add_gaussian_noise`, :func:`add_salt_pepper`,
  :func:`blur`, :func:`jitter_brightness_contrast`;
- compositing and conversion: :func:`composite`, :func:`to_uint8`, :func:`to_pil`.

Example -- a red star with a striped fill on a cluttered background::

    rng = np.random.default_rng(0)
    img = background("clutter", (96, 96), rng)
    fill = texture("stripes", (96, 96), rng, colors=((1, 0, 0), (0.5, 0, 0)))
    img = draw_shape(img, "star", center=(48, 48), size=50, angle=20, fill=fill)
    to_pil(add_gaussian_noise(img, 0.03, rng)).save("star.png")
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Color = tuple[float, float, float]
"""An RGB colour with components in ``[0, 1]``."""

SHAPE_KINDS: tuple[str, ...] = (
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
    "diamond",
    "pentagon",
)
"""Shape classes :func:`shape_mask` can draw. All are centred and scaled to the same bounding circle."""

TEXTURE_KINDS: tuple[str, ...] = (
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
    "bricks",
    "spots",
)
"""Texture classes :func:`texture` can make. Each is a two-colour pattern controlled by scale and angle."""

BACKGROUND_KINDS: tuple[str, ...] = ("plain", "gradient", "noise", "texture", "clutter")
"""Background styles :func:`background` can make, from easy (plain) to hard (clutter)."""


# --------------------------------------------------------------------------------------------- colours
def hsv_to_rgb(h: float, s: float, v: float) -> Color:
    """Convert HSV (each in ``[0, 1]``, hue wraps) to an RGB tuple in ``[0, 1]``."""
    return colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))


def random_color(
    rng: np.random.Generator,
    *,
    hue: float | None = None,
    saturation: tuple[float, float] = (0.5, 1.0),
    value: tuple[float, float] = (0.5, 1.0),
) -> Color:
    """Draw a random colour; fix ``hue`` (in ``[0, 1]``) to get shades of one colour family."""
    h = rng.random() if hue is None else hue
    return hsv_to_rgb(h, rng.uniform(*saturation), rng.uniform(*value))


def contrasting_color(rng: np.random.Generator, other: Color, *, min_distance: float = 0.45) -> Color:
    """Draw a random colour at least ``min_distance`` (Euclidean RGB) from ``other`` so it stays visible."""
    ref = np.asarray(other, dtype=np.float32)
    best, best_d = None, -1.0
    for _ in range(32):  # rejection sampling; keep the farthest candidate if none passes
        c = random_color(rng, saturation=(0.3, 1.0), value=(0.25, 1.0))
        d = float(np.linalg.norm(np.asarray(c) - ref))
        if d >= min_distance:
            return c
        if d > best_d:
            best, best_d = c, d
    return best  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- shapes
def _regular_polygon(n: int, radius: float, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [
        (radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star(points: int, outer: float, inner: float) -> list[tuple[float, float]]:
    out = []
    for k in range(2 * points):
        r = outer if k % 2 == 0 else inner
        a = -math.pi / 2 + math.pi * k / points
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def _heart(n: int = 48) -> list[tuple[float, float]]:
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        pts.append((x / 17.0, (y + 2.5) / 17.0))
    return pts


def shape_polygon(kind: str, radius: float = 1.0, angle: float = 0.0) -> list[tuple[float, float]]:
    """Return the outline of a polygonal shape kind, centred at the origin, rotated by ``angle`` degrees.

    ``radius`` is the radius of the bounding circle. Kinds drawn as curves (circle, ring, crescent) are
    approximated by 64-gons; for those prefer :func:`shape_mask`, which draws them exactly.
    """
    if kind == "square":
        pts = _regular_polygon(4, 1.0, phase=-math.pi / 4)
    elif kind == "diamond":
        pts = [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]
    elif kind == "triangle":
        pts = _regular_polygon(3, 1.0)
    elif kind == "pentagon":
        pts = _regular_polygon(5, 1.0)
    elif kind == "hexagon":
        pts = _regular_polygon(6, 1.0)
    elif kind == "star":
        pts = _star(5, 1.0, 0.42)
    elif kind == "cross":
        w = 0.33
        pts = [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ]
    elif kind == "arrow":
        pts = [(-1, -0.3), (0.15, -0.3), (0.15, -0.75), (1, 0), (0.15, 0.75), (0.15, 0.3), (-1, 0.3)]
    elif kind == "heart":
        pts = _heart()
    elif kind in ("circle", "ring", "crescent"):
        pts = _regular_polygon(64, 1.0)
    else:
        raise ValueError(f"unknown shape kind {kind!r}; choose from {', '.join(SHAPE_KINDS)}")
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(radius * (x * c - y * s), radius * (x * s + y * c)) for x, y in pts]


def shape_mask(
    kind: str, size: int, angle: float = 0.0, *, supersample: int = 4, thickness: float = 0.35
) -> np.ndarray:
    """Return an anti-aliased ``(size, size)`` coverage mask of ``kind`` filling its bounding circle.

    ``angle`` rotates the shape (degrees); ``thickness`` is the ring/crescent width as a fraction of the
    radius. Drawn at ``supersample`` times the size, then box-filtered down, so edges are smooth.
    """
    if size < 1:
        raise ValueError(f"shape size must be >= 1 pixel, got {size}")
    big = size * supersample
    r = big / 2.0 - 0.5
    cx = cy = big / 2.0
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif kind == "ring":
        inner = r * (1 - thickness)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif kind == "crescent":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        # A second disc, shifted along the rotation direction, bites out the crescent.
        off = r * (0.25 + thickness)
        a = math.radians(angle)
        ox, oy = cx + off * math.cos(a), cy + off * math.sin(a)
        draw.ellipse((ox - r * 0.85, oy - r * 0.85, ox + r * 0.85, oy + r * 0.85), fill=0)
    else:
        pts = [(cx + x, cy + y) for x, y in shape_polygon(kind, r, angle)]
        draw.polygon(pts, fill=255)
    if supersample > 1:
        canvas = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _fill_array(fill: Color | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if isinstance(fill, np.ndarray) and fill.ndim == 3:
        if fill.shape[:2] != shape:
            raise ValueError(f"fill texture has shape {fill.shape[:2]}, expected {shape}")
        return fill.astype(np.float32, copy=False)
    return np.broadcast_to(np.asarray(fill, dtype=np.float32).reshape(1, 1, 3), (*shape, 3))


def composite(
    image: np.ndarray,
    mask: np.ndarray,
    fill: Color | np.ndarray,
    top_left: tuple[int, int],
    *,
    opacity: float = 1.0,
) -> np.ndarray:
    """Blend ``fill`` into ``image`` where ``mask`` covers, with the mask's top-left at ``(x, y)``.

    ``fill`` is a colour or an image the size of ``image`` (for textured shapes). Parts of the mask
    outside the image are clipped. Returns a new image; the input is not modified.
    """
    out = image.copy()
    h, w = image.shape[:2]
    mh, mw = mask.shape
    x0, y0 = top_left
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + mw, w), min(y0 + mh, h)
    if ix0 >= ix1 or iy0 >= iy1:
        return out
    m = mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0, None] * opacity
    src = _fill_array(fill, (h, w))[iy0:iy1, ix0:ix1]
    out[iy0:iy1, ix0:ix1] = out[iy0:iy1, ix0:ix1] * (1 - m) + src * m
    return out


def draw_shape(
    image: np.ndarray,
    kind: str,
    center: tuple[float, float],
    size: int,
    angle: float = 0.0,
    *,
    fill: Color | np.ndarray = (1.0, 1.0, 1.0),
    outline: Color | None = None,
    outline_width: int = 2,
    opacity: float = 1.0,
    shadow: float = 0.0,
) -> np.ndarray:
    """Draw shape ``kind`` of diameter ``size`` px centred at ``(x, y)`` onto ``image`` (returns a copy).

    ``fill`` is a colour or a texture image of the same size as ``image``; ``outline`` adds a border of
    ``outline_width`` px; ``shadow`` (0-1) darkens a slightly offset copy below the shape for depth.
    """
    mask = shape_mask(kind, size, angle)
    x0, y0 = int(round(center[0] - size / 2)), int(round(center[1] - size / 2))
    out = image
    if shadow > 0:
        off = max(1, size // 16)
        out = composite(out, mask, (0.0, 0.0, 0.0), (x0 + off, y0 + off), opacity=shadow)
    if outline is not None and outline_width > 0:
        border = (
            np.asarray(
                Image.fromarray((mask * 255).astype(np.uint8)).filter(
                    ImageFilter.MaxFilter(2 * outline_width + 1)
                ),
                dtype=np.float32,
            )
            / 255.0
        )
        out = composite(out, border, outline, (x0, y0), opacity=opacity)
    return composite(out, mask, fill, (x0, y0), opacity=opacity)


# -------------------------------------------------------------------------------------------- textures
def _coords(
    shape: tuple[int, int], scale: float, angle: float, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rotated pixel coordinates divided by ``scale`` (one pattern period ~ ``scale`` px), random offset."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng is not None:
        x += rng.uniform(0, scale * 4)
        y += rng.uniform(0, scale * 4)
    a = math.radians(angle)
    u = (x * math.cos(a) + y * math.sin(a)) / scale
    v = (-x * math.sin(a) + y * math.cos(a)) / scale
    return u, v


def value_noise(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    scale: float = 16.0,
    octaves: int = 3,
    persistence: float = 0.5,
) -> np.ndarray:
    """Smooth fractal value noise in ``[0, 1]`` of ``shape`` (H, W); ``scale`` is the coarsest cell in px."""
    h, w = shape
    total = np.zeros((h, w), dtype=np.float32)
    amp, norm, cell = 1.0, 0.0, float(scale)
    for _ in range(max(1, octaves)):
        gh, gw = int(math.ceil(h / cell)) + 2, int(math.ceil(w / cell)) + 2
        grid = rng.random((gh, gw), dtype=np.float32)
        # Bicubic upsampling of a random lattice = smooth noise; crop a random sub-pixel window.
        big = Image.fromarray(grid).resize((int(gw * cell), int(gh * cell)), Image.Resampling.BICUBIC)
        arr = np.asarray(big, dtype=np.float32)
        oy = int(rng.integers(0, max(1, arr.shape[0] - h)))
        ox = int(rng.integers(0, max(1, arr.shape[1] - w)))
        total += amp * arr[oy : oy + h, ox : ox + w]
        norm += amp
        amp *= persistence
        cell = max(1.0, cell / 2)
    total /= norm
    lo, hi = float(total.min()), float(total.max())
    return (total - lo) / (hi - lo + 1e-8)


def _pattern(
    kind: str, shape: tuple[int, int], rng: np.random.Generator, scale: float, angle: float
) -> np.ndarray:
    """Return a ``(H, W)`` pattern in ``[0, 1]`` for texture ``kind`` (1 = first colour)."""
    u, v = _coords(shape, scale, angle, rng)
    tau = 2 * math.pi
    if kind == "stripes":
        return (np.sin(tau * u) > 0).astype(np.float32)
    if kind == "checker":
        return ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    if kind == "dots":
        du, dv = u - np.floor(u) - 0.5, v - np.floor(v) - 0.5
        return (du * du + dv * dv < 0.09).astype(np.float32)
    if kind == "spots":  # irregular dots: random radius per cell via a hashed lattice
        iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        table = rng.uniform(0.12, 0.42, size=(64, 64))
        rad = table[iu % 64, iv % 64]
        du, dv = u - iu - 0.5, v - iv - 0.5
        return (np.sqrt(du * du + dv * dv) < rad).astype(np.float32)
    if kind == "waves":
        return 0.5 + 0.5 * np.sin(tau * (u + 0.35 * np.sin(tau * v * 0.5)))
    if kind == "grid":
        fu, fv = u - np.floor(u), v - np.floor(v)
        return ((fu < 0.18) | (fv < 0.18)).astype(np.float32)
    if kind == "rings":
        h, w = shape
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / scale
        return (np.sin(tau * r) > 0).astype(np.float32)
    if kind == "zigzag":
        tri = np.abs((v * 1.0) % 2 - 1)  # triangle wave along v shifts the stripes along u
        return (np.sin(tau * (u + 0.8 * tri)) > 0).astype(np.float32)
    if kind == "crosshatch":
        a = np.sin(tau * (u + v) / math.sqrt(2)) > 0.6
        b = np.sin(tau * (u - v) / math.sqrt(2)) > 0.6
        return (a | b).astype(np.float32)
    if kind == "blobs":
        return (value_noise(shape, rng, scale=scale * 1.5, octaves=2) > 0.5).astype(np.float32)
    if kind == "marble":
        turb = value_noise(shape, rng, scale=scale * 2, octaves=4)
        return 0.5 + 0.5 * np.sin(tau * (u * 0.5 + 3.0 * turb))
    if kind == "bricks":
        row = np.floor(v * 2)
        uu = u + 0.5 * (row % 2)
        fu, fv = uu - np.floor(uu), v * 2 - row
        return ((fu > 0.08) & (fv > 0.15)).astype(np.float32)
    raise ValueError(f"unknown texture kind {kind!r}; choose from {', '.join(TEXTURE_KINDS)}")


def texture(
    kind: str,
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    scale: float = 8.0,
    angle: float = 0.0,
    colors: tuple[Color, Color] = ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
    softness: float = 0.0,
) -> np.ndarray:
    """Make an ``(H, W, 3)`` two-colour texture of ``kind`` (see :data:`TEXTURE_KINDS`).

    ``scale`` is the pattern period in pixels, ``angle`` its orientation in degrees, ``colors`` the
    (foreground, background) pair and ``softness`` (pixels) a blur radius that softens hard edges.
    """
    if scale <= 0:
        raise ValueError(f"texture scale must be > 0, got {scale}")
    p = _pattern(kind, shape, rng, scale, angle)
    if softness > 0:
        # PIL blurs only 8-bit images; 256 levels are plenty for a soft edge.
        p8 = Image.fromarray((np.clip(p, 0, 1) * 255 + 0.5).astype(np.uint8))
        p = np.asarray(p8.filter(ImageFilter.GaussianBlur(softness)), dtype=np.float32) / 255.0
    fg, bg = (np.asarray(c, dtype=np.float32).reshape(1, 1, 3) for c in colors)
    return (p[..., None] * fg + (1 - p[..., None]) * bg).astype(np.float32)


def random_texture(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    kinds: Sequence[str] = TEXTURE_KINDS,
    scale: tuple[float, float] = (4.0, 14.0),
) -> np.ndarray:
    """A texture of a random kind, scale, angle and contrasting colour pair (for fills and backgrounds)."""
    fg = random_color(rng)
    bg = contrasting_color(rng, fg, min_distance=0.3)
    return texture(
        str(rng.choice(list(kinds))),
        shape,
        rng,
        scale=rng.uniform(*scale),
        angle=rng.uniform(0, 180),
        colors=(fg, bg),
    )


# ----------------------------------------------------------------------------------------- backgrounds
def add_clutter(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    count: int = 12,
    size: tuple[float, float] = (0.05, 0.2),
    opacity: tuple[float, float] = (0.3, 0.8),
    kinds: Sequence[str] = ("line", "rect", "ellipse"),
) -> np.ndarray:
    """Scatter ``count`` random distractors (lines, rectangles, ellipses) over ``image``; returns a copy.

    ``size`` is the distractor extent as a fraction of the image side. Distractors are deliberately not
    the :data:`SHAPE_KINDS` so they never look like a class of a shapes task.
    """
    h, w = image.shape[:2]
    out = image.copy()
    side = min(h, w)
    for _ in range(count):
        kind = str(rng.choice(list(kinds)))
        layer = Image.new("L", (w, h), 0)
        d = ImageDraw.Draw(layer)
        ext = rng.uniform(*size) * side
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if kind == "line":
            a = rng.uniform(0, math.pi)
            dx, dy = ext * math.cos(a), ext * math.sin(a)
            d.line((x - dx, y - dy, x + dx, y + dy), fill=255, width=max(1, int(side / 48)))
        elif kind == "rect":
            d.rectangle((x, y, x + ext, y + ext * rng.uniform(0.3, 1.0)), fill=255)
        elif kind == "ellipse":
            d.ellipse((x, y, x + ext, y + ext * rng.uniform(0.3, 1.0)), fill=255)
        else:
            raise ValueError(f"unknown clutter kind {kind!r}; use line, rect or ellipse")
        mask = np.asarray(layer, dtype=np.float32) / 255.0
        out = composite(
            out, mask, random_color(rng, saturation=(0.0, 0.8)), (0, 0), opacity=rng.uniform(*opacity)
        )
    return out


def background(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Make an ``(H, W, 3)`` background of ``kind`` (see :data:`BACKGROUND_KINDS`) with random colours.

    plain: one colour; gradient: linear blend of two colours at a random angle; noise: value noise
    between two colours; texture: a muted random texture; clutter: gradient plus random distractors.
    """
    h, w = shape
    c1 = np.asarray(random_color(rng, saturation=(0.0, 0.7), value=(0.2, 1.0)), np.float32)
    c2 = np.asarray(random_color(rng, saturation=(0.0, 0.7), value=(0.2, 1.0)), np.float32)
    if kind == "plain":
        return np.broadcast_to(c1, (h, w, 3)).copy()
    if kind in ("gradient", "clutter"):
        u, _ = _coords(shape, max(h, w), rng.uniform(0, 360))
        t = np.clip(u - u.min(), 0, 1)[..., None]
        img = (c1 * (1 - t) + c2 * t).astype(np.float32)
        return add_clutter(img, rng) if kind == "clutter" else img
    if kind == "noise":
        t = value_noise(shape, rng, scale=rng.uniform(8, 32))[..., None]
        return (c1 * (1 - t) + c2 * t).astype(np.float32)
    if kind == "texture":
        tex = random_texture(shape, rng)
        # Muted (pulled towards mid-grey) so a foreground object still stands out.
        return (0.5 * tex + 0.5 * c1).astype(np.float32)
    raise ValueError(f"unknown background kind {kind!r}; choose from {', '.join(BACKGROUND_KINDS)}")


# -------------------------------------------------------------------------------------- noise, output
def add_gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add i.i.d. Gaussian pixel noise of standard deviation ``sigma``, clipped to ``[0, 1]``."""
    if sigma <= 0:
        return image.copy()
    return np.clip(image + rng.normal(0, sigma, image.shape).astype(np.float32), 0, 1)


def add_salt_pepper(image: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Set a fraction ``amount`` of pixels to pure black or white."""
    out = image.copy()
    hit = rng.random(image.shape[:2]) < amount
    out[hit] = rng.integers(0, 2, size=(int(hit.sum()), 1)).astype(np.float32)
    return out


def blur(image: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur with ``radius`` px (PIL), e.g. to simulate defocus."""
    if radius <= 0:
        return image.copy()
    return np.asarray(to_pil(image).filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0


def jitter_brightness_contrast(
    image: np.ndarray, rng: np.random.Generator, *, brightness: float = 0.15, contrast: float = 0.2
) -> np.ndarray:
    """Random global brightness shift (+-``brightness``) and contrast scale (1 +- ``contrast``)."""
    mean = image.mean()
    c = 1 + rng.uniform(-contrast, contrast)
    b = rng.uniform(-brightness, brightness)
    return np.clip((image - mean) * c + mean + b, 0, 1).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Convert a float image in ``[0, 1]`` to ``uint8`` (rounding)."""
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def to_pil(image: np.ndarray) -> Image.Image:
    """Convert a float ``(H, W, 3)`` image in ``[0, 1]`` to an RGB PIL image."""
    return Image.fromarray(to_uint8(image))
