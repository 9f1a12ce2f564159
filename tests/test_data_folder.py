"""User image folders and untrusted .zip uploads."""

import io
import stat
import zipfile

import numpy as np
import pytest
from PIL import Image

from tinytl_core.data import UnsafeArchiveError, extract_archive, extract_archive_cached, load_dataset
from tinytl_core.data.folder import scan_image_folder


def _png(color, size=(12, 10), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def make_folder(root, per_class=3, extra=True):
    """red/ and blue/ classes; optionally a corrupt .jpg, a text file and a grey-scale image."""
    for name, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.png").write_bytes(_png(color))
    if extra:
        (root / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        (root / "blue" / "notes.txt").write_text("not an image")
        (root / "blue" / "grey.png").write_bytes(_png(128, mode="L"))
        (root / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored, not counted
    return root


def make_zip(entries, symlink=None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink[0])
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, symlink[1])
    return buf.getvalue()


def listing(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_folder_skips_unreadable_files_and_converts_to_rgb(tmp_path):
    root = make_folder(tmp_path / "pics")
    scan = scan_image_folder(root)
    assert scan.classes == ["blue", "red"] and scan.counts() == {"blue": 4, "red": 3}
    assert sorted(scan.skipped) == ["blue/notes.txt", "red/broken.jpg"]
    splits = load_dataset(root, val_fraction=0.34, seed=0)
    assert splits.skipped == 2 and "2 file(s) skipped" in splits.summary()
    assert len(splits.train) + len(splits.val) == 7
    images = [splits.train.image(k) for k in range(len(splits.train))]
    assert all(im.mode == "RGB" for im in images)


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image folder"):
        load_dataset(tmp_path / "missing")
    one = tmp_path / "one"
    (one / "cats").mkdir(parents=True)
    (one / "cats" / "a.png").write_bytes(_png((1, 2, 3)))
    with pytest.raises(ValueError, match="found 1 class folder.*need at least 2"):
        load_dataset(one)
    (one / "dogs").mkdir()
    (one / "dogs" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="without any usable image.*dogs"):
        load_dataset(one)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="neither a folder nor a .zip"):
        load_dataset(tmp_path / "file.txt")


def test_zip_with_wrapper_folder_loads(tinytl_home, tmp_path):
    entries = {
        f"data/{c}/{i}.png": _png(col) for c, col in (("a", (9, 9, 9)), ("b", (200, 9, 9))) for i in range(3)
    }
    entries["__MACOSX/data/._a"] = b"resource fork"
    entries["data/b/bad.png"] = b"\x89PNG truncated"
    archive = tmp_path / "upload.zip"
    archive.write_bytes(make_zip(entries))
    splits = load_dataset(archive)
    assert splits.classes == ["a", "b"] and splits.skipped == 1 and splits.name == "upload"
    again = load_dataset(archive)  # same archive: the extraction is reused, not repeated
    assert again.train.source.paths == splits.train.source.paths
    assert len([p for p in (tinytl_home / "uploads").iterdir() if p.is_dir()]) == 1
    # An upload's bytes (what a file uploader gives) land in the same place.
    assert extract_archive_cached(archive.read_bytes()) == splits.train.source.paths[0].parents[2]


@pytest.mark.parametrize(
    ("entries", "symlink", "message"),
    [
        ({"a/1.png": b"x", "../evil.txt": b"owned"}, None, r"outside the archive folder \('..'\)"),
        ({"a/1.png": b"x", "a/../../evil.txt": b"owned"}, None, r"outside the archive folder"),
        ({"/tmp/evil.txt": b"owned"}, None, "absolute path"),
        ({"C:\\evil.txt": b"owned"}, None, "absolute path"),
        ({"a/1.png": b"x"}, ("a/link.png", "/etc/passwd"), "symbolic link"),
    ],
)
def test_unsafe_archives_are_rejected_and_write_nothing(tmp_path, entries, symlink, message):
    target = tmp_path / "uploads"
    target.mkdir()
    before = listing(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=message):
        extract_archive(io.BytesIO(make_zip(entries, symlink)), target)
    assert listing(tmp_path) == before  # nothing outside, and no half-extracted folder inside


def test_oversized_and_crowded_archives_are_rejected(tmp_path):
    target = tmp_path / "uploads"
    big = make_zip({"a/big.bin": b"\0" * 200_000, "b/x.png": b"x"})  # compresses to a few hundred bytes
    assert len(big) < 5_000
    with pytest.raises(UnsafeArchiveError, match="too large"):
        extract_archive(io.BytesIO(big), target, max_bytes=100_000)
    many = make_zip({f"a/{i}.png": b"x" for i in range(30)})
    with pytest.raises(UnsafeArchiveError, match="30 entries; the limit is 20"):
        extract_archive(io.BytesIO(many), target, max_files=20)
    with pytest.raises(ValueError, match="not a valid .zip"):
        extract_archive(io.BytesIO(b"PK not a zip at all"), target)
    assert not target.exists() or listing(target) == []


def test_safe_archive_extracts_into_a_fresh_folder(tmp_path):
    data = make_zip({"a/1.png": _png((1, 1, 1)), "b/2.png": _png((2, 2, 2))})
    first = extract_archive(io.BytesIO(data), tmp_path)
    second = extract_archive(io.BytesIO(data), tmp_path)
    assert first != second and first.parent == second.parent == tmp_path.resolve()
    assert listing(first) == ["a", "a/1.png", "b", "b/2.png"]
    assert np.asarray(Image.open(first / "b" / "2.png"))[0, 0].tolist() == [2, 2, 2]


# --------------------------------------------------------------------- archive names: one error family
def _raw_zip(entries, *, flag_utf8_garbage=False, encrypted=False) -> bytes:
    """A zip whose bytes are patched afterwards: an invalid UTF-8 name, or the 'encrypted' flag."""
    data = make_zip(entries)
    if flag_utf8_garbage:  # the name "\u4e00" is stored as UTF-8 (flag 0x800); make its bytes invalid
        data = data.replace("\u4e00".encode(), b"\xff\xfe\xfd")
    if encrypted:
        at = data.index(b"PK\x01\x02")
        data = data[: at + 8] + bytes([data[at + 8] | 1]) + data[at + 9 :]
    return data


BAD_NAMES = [
    (
        {"a/" + "x" * 300 + ".png": b"x", "b/1.png": b"x"},
        r"\(306 characters\) has a name of 304 bytes; the"
        " limit is 255",
    ),
    ({"a/" + "é" * 130 + ".png": b"x", "b/1.png": b"x"}, "name of 264 bytes"),
    ({"/".join(["d" * 200] * 6) + "/1.png": b"x"}, "path of 1211 bytes; the limit is 1024"),
    ({"/".join("d" * 40) + "/1.png": b"x"}, "nested 40 folders deep; the limit is 32"),
    ({"a/bell\x07.png": b"x", "b/1.png": b"x"}, "control characters"),
    ({"a/ /1.png": b"x", "b/1.png": b"x"}, "blank file or folder name"),
    ({"./": b"", "b/1.png": b"x"}, "empty name"),
    ({"Cats/1.png": b"x", "cats/1.png": b"y"}, "differ only in letter case"),
    ({"a/caf\u00e9.png": b"x", "a/cafe\u0301.png": b"y"}, "differ only in letter case .or Unicode form"),
    ({"a/1.png": b"x", "a\\1.png": b"y"}, "the file 'a/1.png' twice"),
    ({"a": b"x", "a/1.png": b"y"}, "both as a file and as a folder"),
    ({"a/1.png/": b"", "a/1.png": b"y"}, "both as a file and as a folder"),
    ({"a/": b"", "b/": b"", "b/c/": b""}, "holds no files"),
    ({"C:evil.png": b"x"}, "absolute path"),
    ({"\\\\server\\share\\x.png": b"x"}, "absolute path"),
]


@pytest.mark.parametrize(("entries", "message"), BAD_NAMES)
def test_archive_names_give_one_clear_error_and_write_nothing(tmp_path, entries, message):
    import warnings

    from tinytl_core.data import DatasetError

    target = tmp_path / "uploads"
    target.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names we write on purpose
        data = make_zip(entries)
    with pytest.raises(DatasetError, match=message):
        extract_archive(io.BytesIO(data), target)
    assert listing(target) == []


def test_odd_archives_are_clear_errors(tmp_path):
    from tinytl_core.data import BadArchiveError, DatasetError
    from tinytl_core.data import archive as archive_mod

    target = tmp_path / "uploads"
    with pytest.raises(BadArchiveError, match="damaged .zip archive"):  # UnicodeDecodeError before
        extract_archive(io.BytesIO(_raw_zip({"a/\u4e00.png": b"x"}, flag_utf8_garbage=True)), target)
    with pytest.raises(UnsafeArchiveError, match="encrypted"):
        extract_archive(io.BytesIO(_raw_zip({"a/1.png": b"x"}, encrypted=True)), target)
    good = make_zip({"a/1.png": _png((1, 2, 3)), "b/1.png": _png((3, 2, 1))})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # stored, not compressed: the data can be found and damaged
        zf.writestr("a/1.png", _png((1, 2, 3)))
        zf.writestr("b/1.png", _png((3, 2, 1)))
    crc = bytearray(buf.getvalue())
    at = crc.index(b"IHDR")  # one flipped byte inside the first file's data: bad CRC
    crc[at] ^= 0xFF
    with pytest.raises(BadArchiveError, match="damaged .zip archive: entry 'a/1.png'"):
        extract_archive(io.BytesIO(bytes(crc)), target)
    with pytest.raises(DatasetError, match="not a valid .zip"):
        extract_archive(io.BytesIO(good[: len(good) // 2]), target)
    original = archive_mod._SUPPORTED_COMPRESSION
    try:
        archive_mod._SUPPORTED_COMPRESSION = {zipfile.ZIP_STORED}
        with pytest.raises(BadArchiveError, match="compression method 8"):
            extract_archive(io.BytesIO(good), target)
    finally:
        archive_mod._SUPPORTED_COMPRESSION = original
    assert listing(target) == []
    # Non-ASCII names a zip tool stored in the old code page come out as text, not an error.
    cp437 = make_zip({"caf\u00e9/1.png": _png((1, 1, 1)), "b/1.png": _png((2, 2, 2))})
    assert listing(extract_archive(io.BytesIO(cp437), target))[0] == "b"


def test_windows_name_rules(tmp_path):
    from tinytl_core.data.archive import _safe_member_path

    for name in ("a/CON.png", "a/b?.png", "a/x./1.png", "a/pipe|.png", "nul/1.png"):
        with pytest.raises(UnsafeArchiveError, match="cannot hold"):
            _safe_member_path(name, windows=True)
        _safe_member_path(name, windows=False)  # fine on Linux and macOS
    assert str(_safe_member_path("a\\.\\b//c.png", windows=True)) == "a/b/c.png"


def test_long_names_are_a_one_line_cli_error_not_a_traceback(tinytl_home, tmp_path, capsys):
    from tinytl_core.cli import main
    from tinytl_core.data import DatasetError

    archive = tmp_path / "long.zip"
    archive.write_bytes(make_zip({"a/" + "x" * 300 + ".png": _png((1, 1, 1)), "b/1.png": _png((2, 2, 2))}))
    assert main(["datasets", "info", str(archive)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: archive entry") and "limit is 255" in err and "Traceback" not in err
    assert [p for p in (tinytl_home / "uploads").iterdir() if p.is_dir()] == []
    with pytest.raises(DatasetError, match="300 characters.*File name too long"):  # OSError before
        load_dataset("y" * 300)
    with pytest.raises(DatasetError, match="no such image folder"):
        load_dataset("pics/a\0b")


# ---------------------------------------------------------------------------------------- image modes
def _image(mode, values, size=None):
    """An image of ``mode`` from a flat list of pixel values (one row)."""
    im = Image.new(mode, size or (len(values), 1))
    im.putdata(values)
    return im


def _rgb(im):
    from tinytl_core.data import to_rgb

    out = to_rgb(im)
    assert out.mode == "RGB"
    return np.asarray(out).reshape(-1, 3).tolist()


def test_every_mode_converts_to_the_right_rgb():
    grey = lambda *v: [[x, x, x] for x in v]  # noqa: E731
    assert _rgb(_image("1", [0, 1, 0, 255])) == grey(0, 255, 0, 255)
    assert _rgb(_image("L", [0, 7, 128, 255])) == grey(0, 7, 128, 255)
    assert _rgb(_image("RGB", [(1, 2, 3)])) == [[1, 2, 3]]
    assert _rgb(_image("RGBX", [(1, 2, 3, 0)])) == [[1, 2, 3]]
    # transparency: composited over white, not dropped onto black
    assert _rgb(_image("RGBA", [(255, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 128)])) == [
        [255, 255, 255],
        [255, 0, 0],
        [127, 127, 127],
    ]
    assert _rgb(_image("LA", [(100, 0), (100, 255)])) == grey(255, 100)
    assert _rgb(_image("La", [(0, 0), (100, 255)])) == grey(255, 100)
    assert _rgb(_image("RGBa", [(0, 0, 0, 0), (10, 20, 30, 255)])) == [[255, 255, 255], [10, 20, 30]]
    pal = _image("P", [0, 1])
    pal.putpalette([255, 0, 0, 0, 255, 0])
    assert _rgb(pal) == [[255, 0, 0], [0, 255, 0]]
    pal.info["transparency"] = 1
    assert _rgb(pal) == [[255, 0, 0], [255, 255, 255]]
    pa = Image.new("PA", (2, 1))
    pa.putpalette([0, 0, 255] * 2)
    pa.putdata([(0, 255), (0, 0)])
    assert _rgb(pa) == [[0, 0, 255], [255, 255, 255]]
    l_trns = _image("L", [0, 50])
    l_trns.info["transparency"] = 0
    assert _rgb(l_trns) == grey(255, 50)
    # colour spaces
    assert _rgb(_image("CMYK", [(0, 0, 0, 0), (0, 255, 0, 128), (255, 255, 255, 255)])) == [
        [255, 255, 255],
        [127, 0, 127],
        [0, 0, 0],
    ]
    ycc = np.asarray(_image("RGB", [(255, 0, 0), (128, 128, 128)]).convert("YCbCr")).reshape(-1, 3)
    assert np.allclose(
        _rgb(_image("YCbCr", [tuple(p) for p in ycc.tolist()])), [[255, 0, 0], [128] * 3], atol=3
    )
    assert np.allclose(
        _rgb(_image("HSV", [(0, 255, 255), (85, 255, 255), (0, 0, 200)])),
        [[255, 0, 0], [0, 255, 0], [200, 200, 200]],
        atol=2,
    )
    lab = _rgb(_image("LAB", [(255, 128, 128), (0, 128, 128), (138, 209, 198)]))
    assert np.allclose(lab, [[255, 255, 255], [0, 0, 0], [255, 0, 0]], atol=6)
    # high bit depth: scaled by bit depth or range, never clipped
    ramp16 = [0, 257, 32896, 65535]
    for mode in ("I;16", "I;16B", "I;16L"):
        assert _rgb(_image(mode, ramp16)) == grey(0, 1, 128, 255)
    # an I image made in memory declares no depth: 32-bit, so its own range (files: see the depth test)
    assert _rgb(_image("I", [0, 100, 200])) == grey(0, 128, 255)
    assert _rgb(_image("I", ramp16)) == grey(0, 1, 128, 255)
    assert _rgb(_image("I", [-1000, 0, 1000])) == grey(0, 128, 255)
    assert _rgb(_image("F", [0.0, 0.5, 1.0])) == grey(0, 128, 255)
    assert _rgb(_image("F", [0.0, 100.0, 255.0])) == grey(0, 100, 255)
    assert _rgb(_image("F", [-1.0, 0.0, 3.0])) == grey(0, 64, 255)
    assert _rgb(_image("F", [float("nan"), 0.5, 1.0])) == grey(0, 128, 255)
    assert _rgb(_image("F", [7.5, 7.5])) == grey(8, 8)
    # CMYK in integers equals the float formula, rounded, over a grid of inks
    inks = [(c, m, 0, k) for c in range(0, 256, 17) for m in (0, 128, 255) for k in range(0, 256, 15)]
    expected = [
        [round((255 - c) * (255 - k) / 255), round((255 - m) * (255 - k) / 255), 255 - k]
        for c, m, _, k in inks
    ]
    assert _rgb(_image("CMYK", inks, (len(inks), 1))) == expected


def _save(im, path, **kw):
    im.save(path, **kw)
    return path


@pytest.mark.parametrize(
    ("mode", "fmt", "values", "expected"),
    [
        ("I;16", "png", [0, 4112, 32896, 65535], [0, 16, 128, 255]),  # the 99.6 % white bug
        ("I;16B", "tiff", [0, 4112, 32896, 65535], [0, 16, 128, 255]),
        ("I", "tiff", [0, 4112, 32896, 65535], [0, 16, 128, 255]),
        ("F", "tiff", [0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),
        ("LA", "png", [(10, 255), (10, 0), (200, 255), (200, 0)], [10, 255, 200, 255]),
        ("CMYK", "tiff", [(0, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 128), (0, 0, 0, 64)], [255, 0, 127, 191]),
    ],
)
def test_image_files_of_every_depth_load_as_the_right_rgb(tmp_path, mode, fmt, values, expected):
    root = make_folder(tmp_path / "pics", per_class=2, extra=False)
    path = _save(_image(mode, values), root / "red" / f"odd.{fmt}")
    splits = load_dataset(root, val_fraction=0.5)
    source = splits.train.source
    assert splits.skipped == 0 and path in source.paths
    pixels = np.asarray(source.image(source.paths.index(path)))
    assert pixels.shape == (1, 4, 3) and pixels[0, :, 0].tolist() == expected
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_palette_png_with_transparency_and_exif_rotation(tmp_path):
    from tinytl_core.data.images import open_rgb

    pal = _image("P", [0, 1, 1, 0])
    pal.putpalette([0, 0, 0, 9, 9, 9])
    path = _save(pal, tmp_path / "t.png", transparency=1)
    assert np.asarray(open_rgb(path))[0, :, 0].tolist() == [0, 255, 255, 0]
    tall = Image.new("RGB", (2, 3), (5, 5, 5))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to view
    path = _save(tall, tmp_path / "r.jpg", exif=exif)
    assert open_rgb(path).size == (3, 2)


def _keyed_png(width, height, depth, colour_type, row, trns):
    """A one-row PNG written by hand (Pillow cannot save a 16-bit or 1-bit PNG with a transparent colour)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"tRNS", trns)
        + chunk(b"IDAT", zlib.compress(b"\0" + row))
        + chunk(b"IEND", b"")
    )


def test_transparent_colours_of_every_depth_become_the_background(tmp_path):
    """The class: a transparent colour (PNG tRNS) in any grey depth is composited; one that Pillow cannot
    match exactly (16-bit RGB, read as 8 bits per sample) is skipped with its reason, never half-applied."""
    import struct

    root = make_folder(tmp_path / "pics", per_class=2, extra=False)
    files = {
        "grey16.png": (
            _keyed_png(2, 1, 16, 0, struct.pack(">2H", 1000, 32896), struct.pack(">H", 1000)),
            [255, 128],
        ),
        "grey1.png": (
            _keyed_png(4, 1, 1, 0, bytes([0b01010000]), struct.pack(">H", 0)),
            [255, 255, 255, 255],
        ),
        "grey1_white.png": (
            _keyed_png(4, 1, 1, 0, bytes([0b01010000]), struct.pack(">H", 1)),
            [0, 255, 0, 255],
        ),
        "grey8.png": (_keyed_png(2, 1, 8, 0, bytes([7, 9]), struct.pack(">H", 7)), [255, 9]),
    }
    for name, (data, _) in files.items():
        (root / "red" / name).write_bytes(data)
    rgb16 = _keyed_png(
        2, 1, 16, 2, struct.pack(">6H", *[0x1280] * 3, *[0x8000] * 3), struct.pack(">3H", *[0x1280] * 3)
    )
    (root / "red" / "rgb16.png").write_bytes(rgb16)
    splits = load_dataset(root, val_fraction=0.5)
    source = splits.train.source
    for name, (_, expected) in files.items():
        pixels = np.asarray(source.image(source.paths.index(root / "red" / name)))
        assert pixels[0, :, 0].tolist() == expected, name
    assert splits.skipped == 1 and list(splits.skipped_reasons) == [
        "16-bit RGB with a transparent colour (save it with an alpha channel or as 8-bit)"
    ]


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16", "P", "CMYK", "F"])
@pytest.mark.parametrize("compression", [None, "tiff_lzw"])
def test_rotated_tiffs_come_out_upright_in_every_mode(tmp_path, mode, compression):
    """EXIF orientation 6 on a TIFF: the same upright pixels whatever the mode and compression (Pillow's
    memory-mapped read of an uncompressed file used to scramble them)."""
    from tinytl_core.data.images import image_problem, open_rgb

    grey = Image.new("L", (3, 2))
    grey.putdata([0, 50, 100, 150, 200, 250])
    im = {"I;16": lambda g: g.convert("I").point(lambda v: v * 257).convert("I;16")}.get(
        mode, lambda g: g.convert(mode)
    )(grey)
    if mode == "F":
        im = grey.convert("F").point(lambda v: v / 255.0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "r.tif"
    im.save(path, exif=exif, **({"compression": compression} if compression else {}))
    assert image_problem(path) is None
    pixels = np.asarray(open_rgb(path))[..., 0].astype(int)
    expected = np.array([[150, 0], [200, 50], [250, 100]])
    assert pixels.shape == (3, 2) and np.abs(pixels - expected).max() <= 1, pixels.tolist()


def test_inverted_grey_tiffs_and_infinite_floats_read_right(tmp_path):
    from tinytl_core.data.images import open_rgb

    sixteen = _image("I;16", [0, 16448, 51400, 65535])
    path = tmp_path / "w.tif"
    sixteen.save(path)
    data = path.read_bytes()
    normal = b"\x06\x01\x03\x00\x01\x00\x00\x00\x01\x00"  # tag 262 (photometric) = 1
    assert data.count(normal) == 1
    path.write_bytes(data.replace(normal, normal[:-2] + b"\x00\x00"))  # 0: WhiteIsZero
    assert np.asarray(open_rgb(path))[0, :, 0].tolist() == [255, 191, 55, 0]
    inf = float("inf")
    assert _rgb(_image("F", [0.0, 0.5, inf, 1.0])) == [[v] * 3 for v in (0, 128, 255, 255)]
    assert _rgb(_image("F", [-inf, 0.0, 10.0])) == [[v] * 3 for v in (0, 0, 10)]
    assert _rgb(_image("F", [inf, -inf])) == [[0] * 3, [0] * 3]  # no finite value: nothing to scale by


def test_extreme_aspect_ratios_are_skipped_not_resized_to_gigabytes(tmp_path):
    root = make_folder(tmp_path / "pics", per_class=2, extra=False)
    Image.new("RGB", (40000, 1), (9, 9, 9)).save(root / "red" / "banner.png")  # 199 bytes
    Image.new("RGB", (1, 2000), (9, 9, 9)).save(root / "red" / "pole.png")
    Image.new("RGB", (200, 10), (9, 9, 9)).save(root / "red" / "wide.png")  # 20:1 is still a picture
    splits = load_dataset(root, val_fraction=0.5)
    assert splits.skipped == 2
    assert all(r.startswith("extreme aspect ratio") for r in splits.skipped_reasons)


@pytest.mark.parametrize("mode", ["CMYK", "F", "I", "I;16"])
def test_deep_and_cmyk_conversions_use_a_few_bytes_per_pixel(mode):
    """The conversion of a big image stays within a few bytes per pixel (float64 temporaries took 100 per
    CMYK pixel: 926 MB for a 9-megapixel file)."""
    import tracemalloc

    from tinytl_core.data import to_rgb

    im = Image.new(mode, (1000, 1000))
    tracemalloc.start()
    try:
        to_rgb(im)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1000 * 1000, f"{peak / 1e6:.0f} MB for one megapixel"


def test_unconvertible_images_are_skipped_and_counted_with_their_reason(tmp_path, monkeypatch):
    from tinytl_core.data import images

    root = make_folder(tmp_path / "pics", per_class=3)
    _save(_image("LAB", [(50, 128, 128)] * 4), root / "red" / "lab.tif")
    monkeypatch.setattr(images, "SUPPORTED_MODES", images.SUPPORTED_MODES - {"LAB"})
    (root / "loose.txt").write_text("not in a class")
    splits = load_dataset(root)
    assert splits.skipped == 4
    assert splits.skipped_reasons == {
        "damaged or truncated image": 1,
        "not an image": 1,
        "unsupported image mode LAB": 1,
        "not in a class folder": 1,
    }
    assert (
        "4 file(s) skipped (1 damaged or truncated image, 1 not an image, 1 not in a class folder, "
        "1 unsupported image mode LAB)" in splits.summary()
    )
    (root / "blue" / "notes.txt").unlink()
    for p in (root / "blue").glob("*.png"):
        p.unlink()
    (root / "blue" / "x.tif").write_bytes((root / "red" / "lab.tif").read_bytes())
    with pytest.raises(ValueError, match=r"without any usable image in pics: blue \(skipped: 2 unsupported"):
        load_dataset(root)


def test_windows_folder_entries_and_resource_forks_in_any_case(tmp_path):
    """Folder entries written with a backslash are folders (not files named like them, nor a refusal as
    'both file and folder'); macOS's resource-fork folder is ignored in any letter case."""
    data = make_zip(
        {
            "cats\\": b"",
            "cats\\1.png": _png((1, 1, 1)),
            "dogs\\": b"",
            "dogs\\2.png": _png((2, 2, 2)),
            "empty\\": b"",
            "__macosx/cats/._1.png": b"\0\5\26\7",
            "__MacOSX/x": b"junk",
        }
    )
    root = extract_archive(io.BytesIO(data), tmp_path)
    assert listing(root) == ["cats", "cats/1.png", "dogs", "dogs/2.png"]  # no 0-byte file "empty"
    tree = tmp_path / "tree"
    for name in ("a", "b", "__macosx"):
        (tree / name).mkdir(parents=True)
        (tree / name / "1.png").write_bytes(_png((3, 3, 3)))
    assert scan_image_folder(tree).classes == ["a", "b"]


def test_names_that_are_not_valid_text_become_labels_not_crashes(tinytl_home, tmp_path, capsys):
    """The class: bytes that are not UTF-8 in a folder or file name (a Latin-1 ``café``) reach labels,
    tables, the terminal and the results store as ``\\xe9``; the images still load by their real names."""
    import os

    from tinytl_core.cli import main
    from tinytl_core.results import ResultsStore

    root = os.fsencode(tmp_path / "s\udce9")  # the folder's name too
    for cls in (b"caf\xe9", b"tea"):
        os.makedirs(os.path.join(root, cls))
        for i in range(2):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(os.fsdecode(os.path.join(root, cls, b"%d.png" % i)))
    open(os.path.join(root, b"tea", b"bad\xff.png"), "wb").write(b"junk")
    folder = os.fsdecode(root)
    splits = load_dataset(folder, val_fraction=0.5)
    assert splits.classes == ["caf\\xe9", "tea"] and splits.name == "s\\xe9"
    assert splits.skipped_examples == ["tea/bad\\xff.png"]
    assert len(splits.train) + len(splits.val) == 4 and splits.train.image(0).size == (8, 8)
    assert main(["datasets", "info", folder]) == 0
    out = capsys.readouterr().out
    assert "caf\\xe9" in out and "tea/bad\\xff.png" in out
    store = ResultsStore(tinytl_home / "r.sqlite")
    run = store.save_run({"status": "finished", "backbone": "b", "mode": "bias", "dataset": folder})
    assert store.get_run(run)["dataset"].endswith("s\\xe9")


def test_an_empty_dataset_name_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    from tinytl_core.data import DatasetError, check_dataset_name

    monkeypatch.chdir(tmp_path)
    for blank in ("", "  "):
        with pytest.raises(DatasetError, match="no dataset given"):
            load_dataset(blank)
        with pytest.raises(DatasetError, match="no dataset given"):
            check_dataset_name(blank)


def test_folders_that_show_as_one_name_stay_distinct_classes(tmp_path):
    """The class: two folders whose shown names collide (a Latin-1 ``caf\\xe9`` folder and one literally
    named ``caf\\xe9``) are two classes with two names, and per-class checks go by class index: a class
    left without usable images is found even when its name collides (it merged into the other's count and
    training ran with an empty class)."""
    import os

    from tinytl_core.data import DatasetError

    root = os.fsencode(tmp_path / "pics")
    for cls in (b"caf\xe9", b"caf\\xe9", b"caf\\xe9 (2)", b"tea"):
        os.makedirs(os.path.join(root, cls))
        for i in range(2):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(os.fsdecode(os.path.join(root, cls, b"%d.png" % i)))
        open(os.path.join(root, cls, b"bad.png"), "wb").write(b"junk")
    scan = scan_image_folder(os.fsdecode(root))
    # sorted by real name: "caf\\xe9", "caf\\xe9 (2)", b"caf\xe9" (the undecodable one), "tea"
    assert scan.classes == ["caf\\xe9", "caf\\xe9 (2)", "caf\\xe9 (3)", "tea"]
    assert scan.counts() == dict.fromkeys(scan.classes, 2) and scan.counts_by_label() == [2, 2, 2, 2]
    assert len(scan.skipped) == 4 and scan.skipped_by_reason() == {"not an image": 4}
    splits = load_dataset(os.fsdecode(root), val_fraction=0.5)
    assert splits.num_classes == 4 and splits.train.class_counts().tolist() == [1, 1, 1, 1]
    # The undecodable folder loses its images: an error naming it, not a run with an empty class.
    for i in range(2):
        os.remove(os.path.join(root, b"caf\xe9", b"%d.png" % i))
    with pytest.raises(DatasetError, match=r"without any usable image in pics: caf\\xe9 \(3\) \(skipped"):
        load_dataset(os.fsdecode(root), val_fraction=0.5)


def test_class_folders_differing_in_case_or_unicode_form(tmp_path):
    """Letter case: distinct folders on Linux with distinct names (a letters set has ``A`` and ``a``), so
    two classes. Unicode form (NFC ``café`` and NFD ``café``): they look identical, so the folder is refused
    with an error naming both forms, rather than two classes nobody can tell apart."""
    import unicodedata

    from tinytl_core.data import DatasetError

    cased = tmp_path / "letters"
    for cls in ("A", "a"):
        (cased / cls).mkdir(parents=True)
        for i in range(2):
            (cased / cls / f"{i}.png").write_bytes(_png((i, 0, 0)))
    splits = load_dataset(cased, val_fraction=0.5)
    assert splits.classes == ["A", "a"] and splits.train.class_counts().tolist() == [1, 1]
    forms = tmp_path / "forms"
    for cls in (unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café"), "tea"):
        (forms / cls).mkdir(parents=True)
        (forms / cls / "1.png").write_bytes(_png((1, 0, 0)))
    with pytest.raises(
        DatasetError, match=r"class folders 'cafe\\u0301' and 'caf\\xe9' in forms have the same"
    ):
        load_dataset(forms, val_fraction=0.5)


def _tiff(values, bits, sample_format=1):
    """A one-row grey TIFF written by hand (Pillow saves neither 12-bit nor signed 16-bit TIFFs)."""
    import struct

    if bits % 8:
        packed = "".join(format(v, f"0{bits}b") for v in values)
        packed += "0" * (-len(packed) % 8)
        data = bytes(int(packed[i : i + 8], 2) for i in range(0, len(packed), 8))
    else:
        code = {16: "h", 32: "i"}[bits] if sample_format == 2 else {16: "H", 32: "I"}[bits]
        data = struct.pack(f"<{len(values)}{code}", *values)
    tags = [(256, len(values)), (257, 1), (258, bits), (259, 1), (262, 1), (273, 0), (277, 1), (278, 1)]
    tags += [(279, len(data)), (339, sample_format)]
    offset = 8 + 2 + 12 * len(tags) + 4
    out = b"II*\0" + struct.pack("<IH", 8, len(tags))
    for tag, value in tags:
        out += struct.pack("<HHII", tag, 4, 1, offset if tag == 273 else value)
    return out + b"\0\0\0\0" + data


def test_deep_images_scale_by_the_depth_their_file_declares(tmp_path):
    """The class: integer images scale by the bit depth their file declares, never by the values present.
    A dark 16-bit PGM (0, 100, 255 of 65535) read as 8-bit came out 0, 100, 255, and 256 jumped to 1."""
    import struct

    from PIL import features

    from tinytl_core.data.images import SampleDepth, declared_depth, open_rgb

    dark = [0, 100, 255, 256, 65535]
    expected = [0, 0, 1, 1, 255]  # / 257: continuous, a dark image stays dark
    files = {
        "p5.pgm": b"P5\n5 1\n65535\n" + struct.pack(">5H", *dark),
        "p2.pgm": b"P2\n5 1\n65535\n" + " ".join(map(str, dark)).encode() + b"\n",
        "tiff16.tif": _tiff(dark, 16),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert np.asarray(open_rgb(tmp_path / name))[0, :, 0].tolist() == expected, name
    for name in ("png16.png", "tiff16_pillow.tif"):  # as Pillow writes them (PNG: 16-bit grey)
        Image.fromarray(np.array([dark], dtype=np.uint16)).save(tmp_path / name)
        assert np.asarray(open_rgb(tmp_path / name))[0, :, 0].tolist() == expected, name
    # Other maxvals: Pillow rescales them to 0..65535, so 500 of 1000 is mid-grey, in both PGM flavours.
    (tmp_path / "m.pgm").write_bytes(b"P5\n3 1\n1000\n" + struct.pack(">3H", 0, 500, 1000))
    (tmp_path / "m2.pgm").write_bytes(b"P2\n3 1\n1000\n0 500 1000\n")
    for name in ("m.pgm", "m2.pgm"):
        assert np.asarray(open_rgb(tmp_path / name))[0, :, 0].tolist() == [0, 128, 255], name
    # A 12-bit TIFF (Pillow's I;16 holding 0..4095) scales by 4095, not 65535 (it came out black).
    (tmp_path / "t12.tif").write_bytes(_tiff([0, 100, 2048, 4095], 12))
    with Image.open(tmp_path / "t12.tif") as im:
        assert im.mode == "I;16" and declared_depth(im) == SampleDepth(12)
    assert np.asarray(open_rgb(tmp_path / "t12.tif"))[0, :, 0].tolist() == [0, 6, 128, 255]
    # No white level (32-bit and signed integers): their own range, whatever the values.
    for name, data in (
        ("t32.tif", _tiff([0, 100, 200], 32, 2)),
        ("s16.tif", _tiff([-1000, -900, -800], 16, 2)),
    ):
        (tmp_path / name).write_bytes(data)
        with Image.open(tmp_path / name) as im:
            assert im.mode == "I" and declared_depth(im).signed, name
        assert np.asarray(open_rgb(tmp_path / name))[0, :, 0].tolist() == [0, 128, 255], name
    if features.check("jpg_2000"):
        Image.fromarray(np.array([dark], dtype=np.uint16)).save(tmp_path / "j.j2k", irreversible=False)
        assert np.asarray(open_rgb(tmp_path / "j.j2k"))[0, :, 0].tolist() == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),
        ([0.0, 0.5, 1.01], [0, 128, 255]),  # a hair over 1 used to switch to 0..255: nearly black
        ([0.0, 0.5, 1.2], [0, 128, 255]),  # resampling overshoot: clipped
        ([-0.2, 0.5, 1.0], [0, 128, 255]),  # and undershoot
        ([0.0, 100.0, 255.0], [0, 100, 255]),
        ([0.0, 100.0, 255.4], [0, 100, 255]),
        ([-1.0, 0.0, 1.0], [0, 128, 255]),  # -1..1 (normalised): its range
        ([-1.0, 0.0, 3.0], [0, 64, 255]),
        ([0.0, 500.0, 1000.0], [0, 128, 255]),
    ],
)
def test_float_images_scale_continuously(values, expected):
    assert _rgb(_image("F", values)) == [[v] * 3 for v in expected]


def test_float_images_keep_their_scale_despite_a_few_stray_pixels():
    """Up to 1 % of pixels outside the scale (hot pixels) are clipped, not taken as the scale."""
    from tinytl_core.data import to_rgb

    ramp = np.tile(np.linspace(0, 1, 100, dtype=np.float32), (10, 1))
    hot = ramp.copy()
    hot[0, :10] = 50.0  # 1 % of the pixels
    for pixels in (ramp, hot):
        out = np.asarray(to_rgb(Image.fromarray(pixels)))[..., 0]
        assert out[1].tolist() == np.rint(np.linspace(0, 255, 100)).astype(int).tolist()
    byte = ramp * 255
    byte[0, :10] = -40.0
    assert np.asarray(to_rgb(Image.fromarray(byte)))[5, 50, 0] == round(255 * 50 / 99)
