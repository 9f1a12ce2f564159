"""Fuzz: whatever an archive holds, loading it gives a dataset or one clear DatasetError, never anything
else, and nothing is ever written outside the extraction folder.

Hypothesis draws archives of 1-6 entries whose names mix hostile pieces ("..", absolute and drive paths,
backslashes, 300-character names, control characters, case and Unicode twins, reserved names, deep
nesting) with plain ones; entries are files, folders or symbolic links with random bytes, valid PNGs or
runs of zeros (bombs against a 60 KB quota); the archive may be stored or deflated, carry an invalid UTF-8
name, be flagged encrypted, or be damaged. Each example goes through the same path as the CLI and the
app (``load_dataset`` on a .zip, within the uploads quota) in a fresh data folder.
"""

import io
import os
import stat
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tinytl_core.data import DatasetError, load_dataset


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


PNGS = [_png(v) for v in (0, 90, 180, 255)]

PLAIN = st.one_of(
    st.sampled_from(
        [
            "a",
            "A",
            "b",
            "cats",
            "Cats",
            "dogs",
            "img.png",
            "IMG.PNG",
            "1.png",
            "caf\u00e9",
            "cafe\u0301",
            "\u4e00",
            ".hidden",
            "__MACOSX",
            "a?b",
            "a:b",
            "CON",
            "nul.png",
            "~",
            "$HOME",
            "x" * 100,
        ]
    ),
    st.text(
        st.characters(min_codepoint=32, blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12
    ).filter(lambda s: s.strip() not in ("", ".", "..") and "/" not in s and "\\" not in s),
)
HOSTILE = st.one_of(
    st.sampled_from(
        [
            "..",
            ".",
            "",
            " ",
            "x" * 300,
            "é" * 130,
            "bell\x07",
            "tab\t",
            "new\nline",
            "C:",
            "c:evil",
            "..\\..",
            "/",
            "\\",
        ]
    ),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
)


@st.composite
def pieces(draw, hostile_in_20):
    return draw(HOSTILE) if draw(st.integers(0, 19)) < hostile_in_20 else draw(PLAIN)


@st.composite
def entry_names(draw, hostile_in_20):
    parts = draw(st.lists(pieces(hostile_in_20), min_size=1, max_size=3))
    if draw(st.integers(0, 19)) == 0:
        parts = ["d"] * draw(st.integers(30, 40)) + parts  # deep nesting
    name = draw(st.sampled_from(["/"] * 4 + ["\\"])).join(parts)
    prefix = draw(st.sampled_from([""] * 12 + ["/", "\\\\srv\\", "C:/", "./"])) if hostile_in_20 else ""
    suffix = draw(st.sampled_from(["", "", ".png", ".png", "/"]))
    return prefix + name + suffix


CONTENT = st.one_of(
    st.sampled_from(PNGS),
    st.sampled_from(PNGS),
    st.binary(max_size=64),
    st.integers(0, 100_000).map(lambda n: b"\0" * n),  # compresses to almost nothing
)


@st.composite
def archives(draw):
    hostile_in_20 = draw(st.sampled_from([0, 0, 1, 4]))  # half the archives have plain names only
    kinds = st.sampled_from(["file"] * 8 + ["dir"] + (["link"] if hostile_in_20 else []))
    entries = draw(st.lists(st.tuples(entry_names(hostile_in_20), kinds, CONTENT), min_size=1, max_size=5))
    if draw(st.integers(0, 4)) > 0:  # mostly a well-formed dataset next to the drawn entries
        entries += [(f"{c}/{i}.png", "file", PNGS[i]) for c in ("red", "blue") for i in range(2)]
    compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names on purpose
        with zipfile.ZipFile(buf, "w", compression=compression) as zf:
            for name, kind, data in entries:
                info = zipfile.ZipInfo(name + ("/" if kind == "dir" and not name.endswith("/") else ""))
                info.compress_type = compression
                if kind == "link":
                    info.external_attr = (stat.S_IFLNK | 0o777) << 16
                    data = b"../../../../etc/passwd"
                zf.writestr(info, data if kind != "dir" else b"")
    raw = buf.getvalue()
    damage = draw(st.sampled_from(["none"] * 12 + ["utf8", "encrypted", "flip", "truncate"]))
    if damage == "utf8":
        raw = raw.replace("\u4e00".encode(), b"\xff\xfe\xfd")
    elif damage == "encrypted" and b"PK\x01\x02" in raw:
        at = raw.index(b"PK\x01\x02")
        raw = raw[: at + 8] + bytes([raw[at + 8] | 1]) + raw[at + 9 :]
    elif damage == "flip":
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1 :]
    elif damage == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    return raw


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.timeout(300)
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(archives())
def test_any_archive_gives_a_dataset_or_a_dataset_error(raw):
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Path(tmp)
        home, incoming = sandbox / "home", sandbox / "in"
        incoming.mkdir()
        (sandbox / "outside.txt").write_text("untouched")
        archive = incoming / "upload.zip"
        archive.write_bytes(raw)
        before = _snapshot(sandbox)
        saved = {k: os.environ.get(k) for k in ("TINYTL_HOME", "TINYTL_UPLOAD_QUOTA_MB")}
        os.environ["TINYTL_HOME"], os.environ["TINYTL_UPLOAD_QUOTA_MB"] = str(home), "0.06"
        try:
            try:
                splits = load_dataset(archive)
            except DatasetError as exc:
                splits = None
                assert str(exc) and "\n" not in str(exc)[:2000]  # a message, not a dump
            # Anything not there before lies inside the uploads folder's extraction (or is its lock file).
            uploads = home / "uploads"
            for new in _snapshot(sandbox) - before:
                path = sandbox / new
                if path in (home, uploads):
                    continue
                rel = path.relative_to(uploads)  # raises if a file landed anywhere else
                assert rel.parts[0].startswith("zip-"), rel
                assert not path.is_symlink()
            assert (sandbox / "outside.txt").read_text() == "untouched"
            extracted = [p for p in uploads.iterdir() if p.is_dir()] if uploads.exists() else []
            if splits is None:
                assert extracted == []  # a refused archive leaves nothing behind
            else:
                assert len(extracted) == 1 and splits.num_classes >= 2
                assert all(extracted[0] in p.parents for p in splits.train.source.paths)
                assert splits.train.image(0).mode == "RGB"
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
