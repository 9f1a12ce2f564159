"""Reading one user image as the right RGB picture, whatever its mode; or saying why it cannot be used.

PIL's own ``convert("RGB")`` clips high-bit-depth images instead of scaling them (a 16-bit PNG comes out
almost white) and drops transparency onto black. :func:`to_rgb` converts every mode PIL opens:

==================  =======================================================================================
mode                becomes
==================  =======================================================================================
RGB                 itself
1, L, P, RGBX,      PIL's conversion (black/white, grey replicated, palette looked up, padding dropped,
YCbCr, HSV          JPEG's YCbCr formula, HSV to RGB)
LA, La, PA, RGBA,   composited over a white background by their alpha (premultiplied modes un-premultiplied
RGBa; P, L, RGB     first); palette and grey images with a transparent colour (``transparency`` in their
with transparency   info) likewise
CMYK                R = (255 - C)(255 - K) / 255, and so on (independent of the Pillow version)
LAB                 CIE L*a*b* to sRGB through LittleCMS (``ImageCms``)
I;16, I;16L, I;16B, scaled by their bit depth: 0..65535 -> 0..255 (a 16-bit ramp gives a grey ramp)
I;16N
I (32-bit integer)  values within 0..255 kept, within 0..65535 scaled as 16-bit, otherwise scaled by their
                    real range (min..max -> 0..255)
F (32-bit float)    within 0..1 times 255, within 0..255 kept, otherwise scaled by their real range; NaN
                    becomes 0
==================  =======================================================================================

Anything else (a mode a future Pillow adds, LAB without LittleCMS) is not guessed at: :func:`image_problem`
reports it, and folder scans skip such files and count them with the reason. Images are also turned
upright by their EXIF orientation (phone photos).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from tinytl_core.data.errors import DatasetError

BACKGROUND = (255, 255, 255)
"""What transparent pixels are composited over."""

_PIL_CONVERTS = {"1", "L", "P", "RGBX", "YCbCr", "HSV"}
_ALPHA = {"LA": "LA", "La": "LA", "PA": "RGBA", "RGBA": "RGBA", "RGBa": "RGBA"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


def _lab_transform():
    try:
        from PIL import ImageCms

        return ImageCms.buildTransformFromOpenProfiles(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
    except Exception:  # Pillow built without LittleCMS
        return None


_LAB = _lab_transform()

SUPPORTED_MODES = frozenset(
    {"RGB", *_PIL_CONVERTS, *_ALPHA, "CMYK", "I", "F", *_SIXTEEN_BIT}
    | ({"LAB"} if _LAB is not None else set())
)
"""Every image mode :func:`to_rgb` converts."""


def _grey(values: np.ndarray) -> Image.Image:
    """Grey levels already on the 0..255 scale (floats) as an RGB image."""
    levels = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(levels[..., None], 3, axis=-1), "RGB")


def _scale_range(values: np.ndarray) -> np.ndarray:
    """Map the real range of ``values`` (min..max) onto 0..255; a constant image becomes mid-grey."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.full(values.shape, 128.0)
    return (values - lo) * (255.0 / (hi - lo))


def _deep_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images: scaled, never clipped."""
    values = np.asarray(im).astype(np.float64)
    if im.mode in _SIXTEEN_BIT:
        return _grey(values / 257.0)
    if values.size == 0:
        return _grey(values)
    if im.mode == "F":
        finite = np.isfinite(values)
        values = np.where(finite, values, 0.0)
        lo, hi = float(values.min()), float(values.max())
        if lo >= 0 and hi <= 1.0:
            return _grey(values * 255.0)
        return _grey(values if lo >= 0 and hi <= 255 else _scale_range(values))
    lo, hi = float(values.min()), float(values.max())  # mode I
    if lo >= 0 and hi <= 255:
        return _grey(values)
    if lo >= 0 and hi <= 65535:
        return _grey(values / 257.0)
    return _grey(_scale_range(values))


def _composite(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    rgba = im.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def to_rgb(im: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """The RGB picture of ``im`` (see the module's table); raises :class:`DatasetError` for other modes."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im.copy()
    if mode in _ALPHA:
        return _composite(im.convert(_ALPHA[mode]) if mode != _ALPHA[mode] else im, background)
    if mode in ("P", "L", "RGB") and "transparency" in im.info:
        return _composite(im.convert("RGBA"), background)
    if mode in _PIL_CONVERTS:
        return im.convert("RGB")
    if mode == "CMYK":
        c, m, y, k = (np.asarray(im).astype(np.float64) / 255.0).transpose(2, 0, 1)
        rgb = np.stack([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)], axis=-1) * 255.0
        return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")
    if mode == "LAB" and _LAB is not None:
        from PIL import ImageCms

        return ImageCms.applyTransform(im, _LAB)
    if mode in ("I", "F") or mode in _SIXTEEN_BIT:
        return _deep_to_rgb(im)
    raise DatasetError(f"image mode {mode!r} is not supported: save the image as 8-bit RGB (PNG or JPEG)")


def open_rgb(path: str | Path, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Open an image file upright (EXIF orientation) and convert it with :func:`to_rgb`.

    Raises :class:`DatasetError` naming the file when it cannot be read or converted (e.g. it changed on
    disk after the folder was scanned).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the scan already vetted it
            with Image.open(path) as im:
                im.load()
                try:
                    upright = ImageOps.exif_transpose(im)
                except Exception:  # a malformed EXIF block: keep the pixels as stored
                    upright = im
                return to_rgb(upright if upright is not None else im, background)
    except DatasetError as exc:
        raise DatasetError(f"{Path(path).name}: {exc}") from None
    except Exception as exc:
        raise DatasetError(
            f"image {Path(path).name} cannot be read any more ({type(exc).__name__}: {exc}); "
            "load the dataset again"
        ) from None


def image_problem(path: str | Path) -> str | None:
    """None when ``path`` is an image :func:`open_rgb` can use; otherwise the reason, as a short phrase.

    Fully decodes the file (catches truncated files), refuses decompression bombs (PIL's pixel limit),
    empty images and modes :func:`to_rgb` does not convert.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.mode not in SUPPORTED_MODES:
                    return f"unsupported image mode {im.mode}"
                if im.width == 0 or im.height == 0:
                    return "empty image (0 pixels)"
                im.draft("RGB", (256, 256))  # JPEG: decode at reduced scale, still checks the stream
                im.load()
        return None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        return "too many pixels (decompression-bomb guard)"
    except Image.UnidentifiedImageError:
        return "not an image"
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError):
        return "damaged or truncated image"
    except Exception:  # a decoder bug on a hostile file is still just an unusable file
        return "damaged or truncated image"
