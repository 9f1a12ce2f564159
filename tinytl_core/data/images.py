"""Reading one user image as the right RGB picture, whatever its mode; or saying why it cannot be used.

PIL's own ``convert("RGB")`` clips high-bit-depth images instead of scaling them (a 16-bit PNG comes out
almost white) and drops transparency onto black. :func:`to_rgb` converts every mode PIL opens:

====================  ==================================================================================
mode                  becomes
====================  ==================================================================================
RGB                   itself
1, L, P, RGBX,        PIL's conversion (black/white, grey replicated, palette looked up, padding dropped,
YCbCr, HSV            JPEG's YCbCr formula, HSV to RGB)
LA, La, PA, RGBA,     composited over a white background by their alpha (premultiplied modes
RGBa; P, L, RGB,      un-premultiplied first); palette, grey (1-, 8- and 16-bit) and RGB images with a
1, I;16 with          transparent colour (``transparency`` in their info): that colour becomes the
transparency          background
CMYK                  R = (255 - C)(255 - K) / 255, and so on (independent of the Pillow version)
LAB                   CIE L*a*b* to sRGB through LittleCMS (``ImageCms``)
I;16, I;16L, I;16B,   scaled by the bit depth the *file declares* (:func:`declared_depth`), never by the
I;16N, and I holding  values present (a dark 16-bit image stays dark): 0..2^bits - 1 -> 0..255. 16-bit
unsigned integers of  PNG, TIFF and JPEG 2000: 0..65535; a 12-bit TIFF: 0..4095; PGM / PPM with a maxval
up to 16 bits         over 255: 0..65535 (Pillow rescales any maxval to that)
I holding 32-bit or   no white level to scale by: the image's own range (min..max -> 0..255); an ``I``
signed integers       image made in memory (no file to declare a depth) counts as 32-bit
F (32-bit float)      0..1 when its values lie within -0.5..1.5 (up to 1 % stray pixels): times 255, the
                      overshoot clipped (1.01 is white, as 1.0 is); else 0..255 when they lie within
                      -0.5..255.5 the same way, clipped; else their real range (min..max -> 0..255).
                      NaN becomes 0, +inf / -inf the largest / smallest finite value
====================  ==================================================================================

TIFFs storing grey inverted (PhotometricInterpretation 0, *WhiteIsZero*) are inverted back for the deep
modes too (Pillow does it for 8-bit only). Anything not converted exactly is not guessed at:
:func:`image_problem` reports it and folder scans skip such files and count them with the reason -- a mode
a future Pillow adds, LAB without LittleCMS, a 16-bit RGB PNG with a transparent colour (Pillow keeps 8
bits per sample but the 16-bit colour), and images more than :data:`MAX_ASPECT` times longer than wide
(resizing their short side would take gigabytes). Images are also turned upright by their EXIF orientation
(phone photos); files are read through a file object (Pillow's memory-mapped reading of a rotated,
uncompressed TIFF scrambles it).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps

from tinytl_core.data.errors import DatasetError

BACKGROUND = (255, 255, 255)
"""What transparent pixels are composited over."""

_PIL_CONVERTS = {"1", "L", "P", "RGBX", "YCbCr", "HSV"}
_ALPHA = {"LA": "LA", "La": "LA", "PA": "RGBA", "RGBA": "RGBA", "RGBa": "RGBA"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
_INT_RAWMODE = re.compile(r"^I;(?P<bits>\d+)[BLNR]?(?P<signed>S)?$")  # I;16B, I;12, I;16BS, I;32S, ...
UNIT_RANGE = (-0.5, 1.5)
"""Float values within this range (all but :data:`STRAY_FRACTION` of them) are on the 0..1 scale."""
BYTE_RANGE = (-0.5, 255.5)
"""Float values within this range (all but :data:`STRAY_FRACTION` of them) are on the 0..255 scale."""
STRAY_FRACTION = 0.01
"""Share of pixels that may lie outside a float scale's range (hot pixels, resampling overshoot)."""


class SampleDepth(NamedTuple):
    """The depth of an integer image's samples as its file declares it: ``bits`` per sample, ``signed``."""

    bits: int
    signed: bool = False


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


def _grey(values: np.ndarray, keyed: np.ndarray | None = None, background: int = 255) -> Image.Image:
    """Grey levels already on the 0..255 scale (floats) as an RGB image; ``keyed`` pixels (a transparent
    colour) become ``background``."""
    levels = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if keyed is not None:
        levels[keyed] = background
    return Image.fromarray(np.repeat(levels[..., None], 3, axis=-1), "RGB")


def _scale_range(values: np.ndarray) -> np.ndarray:
    """Map the real range of ``values`` (min..max) onto 0..255; a constant image becomes mid-grey."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.full(values.shape, 128.0, dtype=np.float32)
    values -= lo  # in place: the caller's float32 copy (an 89-megapixel image is 356 MB per copy)
    values *= np.float32(255.0 / (hi - lo))
    return values


def _finite(values: np.ndarray) -> np.ndarray:
    """NaN as 0; +inf / -inf as the largest / smallest finite value (0 when there is none)."""
    finite = np.isfinite(values)
    if finite.all():
        return values
    real = values[finite]
    lo = float(real.min()) if real.size else 0.0
    hi = float(real.max()) if real.size else 0.0
    return np.nan_to_num(values, copy=False, nan=0.0, posinf=max(hi, 0.0), neginf=min(lo, 0.0))


def _first(value: Any) -> Any:
    """The first of a TIFF tag's per-sample values (a tuple), or the value itself."""
    return value[0] if isinstance(value, tuple) and value else value


def declared_depth(im: Image.Image) -> SampleDepth | None:
    """The sample depth an integer image's file declares (None for other modes, and for an ``I`` image
    that declares none: one made in memory, which counts as 32-bit).

    Read from what Pillow opened (call it before ``load()``, which drops the decoder's tile; TIFF tags
    stay): a TIFF's BitsPerSample and SampleFormat, else the raw mode Pillow decodes (``I;16B`` for a
    16-bit PNG or PGM, ``I;32S``), else the format (PGM / PPM with a maxval over 255 are decoded to
    0..65535 whatever the maxval), else the mode (``I;16*``: 16 bits).
    """
    if im.mode != "I" and im.mode not in _SIXTEEN_BIT:
        return None
    tags = getattr(im, "tag_v2", None)
    if tags is not None and tags.get(258):  # BitsPerSample is the declaration; SampleFormat 2: signed
        return SampleDepth(int(_first(tags.get(258))), _first(tags.get(339) or 1) == 2)
    for tile in getattr(im, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        rawmode = args[0] if isinstance(args, tuple) and args else args
        match = _INT_RAWMODE.match(rawmode) if isinstance(rawmode, str) else None
        if match:
            return SampleDepth(int(match["bits"]), bool(match["signed"]))
    if im.format == "PPM":
        return SampleDepth(16)
    return SampleDepth(16) if im.mode in _SIXTEEN_BIT else None


def _float_scale(values: np.ndarray) -> np.ndarray:
    """Float samples on the 0..255 scale (see the module's table): 0..1 or 0..255 when all but a few
    stray pixels lie in that scale's range (the strays are clipped later), else their own range."""
    allowed = int(values.size * STRAY_FRACTION)
    below = np.count_nonzero(values < UNIT_RANGE[0])  # both ranges share the lower bound
    if below + np.count_nonzero(values > UNIT_RANGE[1]) <= allowed:
        values *= np.float32(255.0)
        return values
    if below + np.count_nonzero(values > BYTE_RANGE[1]) <= allowed:
        return values
    return _scale_range(values)


def _deep_to_rgb(
    im: Image.Image,
    *,
    depth: SampleDepth | None = None,
    white_is_zero: bool = False,
    background: int = 255,
) -> Image.Image:
    """16-bit, 32-bit integer and float images: scaled by ``depth`` (:func:`declared_depth`) or, for
    floats and depths without a white level, as the module's table says; never clipped wholesale (float32
    working copies: memory stays a few bytes per pixel). ``white_is_zero``: TIFF's inverted grey
    (PhotometricInterpretation 0), which Pillow reads as is for these modes. A transparent grey value
    (``transparency``) becomes ``background``."""
    values = np.asarray(im).astype(np.float32)
    key = im.info.get("transparency")
    keyed = values == key if isinstance(key, int) and not isinstance(key, bool) else None
    if values.size:
        if im.mode == "F":
            values = _float_scale(_finite(values))
        elif depth is not None and not depth.signed and 0 < depth.bits <= 16:
            values /= np.float32((2**depth.bits - 1) / 255.0)  # 16 bits: / 257 exactly
        else:  # 32-bit or signed integers: no white level, so their own range
            values = _scale_range(values)
    if white_is_zero:
        values = 255.0 - values
    return _grey(values, keyed, background)


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    """R = (255 - C)(255 - K) / 255 and so on, rounded, in 16-bit integers (no float copies)."""
    cmyk = np.asarray(im)
    white_k = 255 - cmyk[..., 3].astype(np.uint16)
    rgb = np.empty((*cmyk.shape[:2], 3), dtype=np.uint8)
    for channel in range(3):
        product = (255 - cmyk[..., channel].astype(np.uint16)) * white_k  # <= 65025: fits
        product += 127  # round to nearest (x / 255 is never exactly halfway)
        product //= 255
        rgb[..., channel] = product
    return Image.fromarray(rgb, "RGB")


def _composite(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    rgba = im.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def to_rgb(
    im: Image.Image,
    background: tuple[int, int, int] = BACKGROUND,
    *,
    white_is_zero: bool = False,
    depth: SampleDepth | None = None,
) -> Image.Image:
    """The RGB picture of ``im`` (see the module's table); raises :class:`DatasetError` for other modes.
    ``white_is_zero``: a TIFF whose grey is stored inverted; ``depth``: the sample depth its file declares
    (:func:`open_rgb` reads both from the file before decoding; without ``depth``, what ``im`` itself
    still tells, see :func:`declared_depth`)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im.copy()
    if mode in _ALPHA:
        return _composite(im.convert(_ALPHA[mode]) if mode != _ALPHA[mode] else im, background)
    if mode in ("P", "L", "RGB") and "transparency" in im.info:
        return _composite(im.convert("RGBA"), background)
    if mode == "1" and "transparency" in im.info:  # a 1-bit PNG's transparent value (0 or 1)
        rgb = np.asarray(im.convert("RGB")).copy()
        rgb[np.asarray(im) == bool(im.info["transparency"])] = background
        return Image.fromarray(rgb, "RGB")
    if mode in _PIL_CONVERTS:
        return im.convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(im)
    if mode == "LAB" and _LAB is not None:
        from PIL import ImageCms

        return ImageCms.applyTransform(im, _LAB)
    if mode in ("I", "F") or mode in _SIXTEEN_BIT:
        return _deep_to_rgb(
            im, depth=depth or declared_depth(im), white_is_zero=white_is_zero, background=background[0]
        )
    raise DatasetError(f"image mode {mode!r} is not supported: save the image as 8-bit RGB (PNG or JPEG)")


MAX_ASPECT = 20
"""Longest side over shortest side beyond which an image is skipped: resizing its short side to the input
resolution (the transforms) would make the long side tens of thousands of pixels (a 40000x1 PNG of 199
bytes took 700 MB)."""


def _source_problem(im: Image.Image) -> str | None:
    """Why an opened (not yet loaded) image cannot be converted exactly, or None."""
    if im.mode not in SUPPORTED_MODES:
        return f"unsupported image mode {im.mode}"
    if im.width == 0 or im.height == 0:
        return "empty image (0 pixels)"
    if max(im.size) > MAX_ASPECT * min(im.size):
        return f"extreme aspect ratio ({im.width}x{im.height} px, more than {MAX_ASPECT}:1)"
    if im.mode == "RGB" and "transparency" in im.info and any(";16" in str(t.args) for t in im.tile):
        # Pillow keeps 8 bits of each sample but the 16-bit transparent colour: no exact match possible
        return "16-bit RGB with a transparent colour (save it with an alpha channel or as 8-bit)"
    return None


def _white_is_zero(im: Image.Image) -> bool:
    tags = getattr(im, "tag_v2", None)
    return im.mode in ("I", "F", *_SIXTEEN_BIT) and tags is not None and tags.get(262) == 0


def open_rgb(path: str | Path, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Open an image file upright (EXIF orientation) and convert it with :func:`to_rgb`.

    Raises :class:`DatasetError` naming the file when it cannot be read or converted (e.g. it changed on
    disk after the folder was scanned).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the scan already vetted it
            # From a file object, not a path: Pillow memory-maps uncompressed TIFFs opened by path and
            # then reads a rotated (EXIF 5-8) one with its swapped size, scrambling the pixels.
            with open(path, "rb") as file, Image.open(file) as im:
                problem = _source_problem(im)
                if problem is not None:
                    raise DatasetError(problem)
                inverted = _white_is_zero(im)
                depth = declared_depth(im)  # before load(), which drops the decoder's raw mode
                im.load()
                try:
                    upright = ImageOps.exif_transpose(im)
                except Exception:  # a malformed EXIF block: keep the pixels as stored
                    upright = im
                return to_rgb(
                    upright if upright is not None else im, background, white_is_zero=inverted, depth=depth
                )
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
    empty images, extreme aspect ratios and what :func:`to_rgb` cannot convert exactly.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as file, Image.open(file) as im:
                problem = _source_problem(im)
                if problem is not None:
                    return problem
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
