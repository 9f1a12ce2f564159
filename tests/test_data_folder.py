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
    entries = {f"data/{c}/{i}.png": _png(col) for c, col in (("a", (9, 9, 9)), ("b", (200, 9, 9)))
               for i in range(3)}
    entries["__MACOSX/data/._a"] = b"resource fork"
    entries["data/b/bad.png"] = b"\x89PNG truncated"
    archive = tmp_path / "upload.zip"
    archive.write_bytes(make_zip(entries))
    splits = load_dataset(archive)
    assert splits.classes == ["a", "b"] and splits.skipped == 1 and splits.name == "upload"
    again = load_dataset(archive)  # same archive: the extraction is reused, not repeated
    assert again.train.source.paths == splits.train.source.paths
    assert len(list((tinytl_home / "uploads").iterdir())) == 1
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
