"""Safe extraction of untrusted .zip uploads (one sub-folder per class inside).

An uploaded archive is untrusted. :func:`extract_archive` therefore refuses the whole archive when any
entry has an absolute path, a ``..`` component, a NUL byte, is a symbolic link or encrypted, or when the
entry count or total uncompressed size is over a cap. The size cap is enforced on the bytes actually
written (declared sizes can lie: zip bombs), and extraction goes only into a fresh folder created for it,
which is removed again if anything goes wrong.
"""

from __future__ import annotations

import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tinytl_core.paths import cache_dir

MAX_ARCHIVE_BYTES = 1 << 30
"""Default cap on the total uncompressed size of an archive (1 GiB)."""
MAX_ARCHIVE_FILES = 20_000
"""Default cap on the number of entries in an archive."""

_IGNORED_PREFIXES = ("__MACOSX/",)  # resource forks macOS adds to zips: never images, never extracted
_CHUNK = 1 << 20


class UnsafeArchiveError(ValueError):
    """The archive breaks a safety rule (path traversal, link, too large, too many files, encrypted)."""


def _safe_member_path(name: str) -> PurePosixPath:
    """Validate one entry name and return it as a relative path, or raise :class:`UnsafeArchiveError`."""
    if "\x00" in name:
        raise UnsafeArchiveError(f"archive entry {name!r} contains a NUL byte")
    norm = name.replace("\\", "/")  # Windows tools sometimes write backslashes
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UnsafeArchiveError(f"archive entry {name!r} has an absolute path")
    path = PurePosixPath(norm)
    if ".." in path.parts:
        raise UnsafeArchiveError(f"archive entry {name!r} points outside the archive folder ('..')")
    return path


def check_archive(zf: zipfile.ZipFile, *, max_bytes: int = MAX_ARCHIVE_BYTES,
                  max_files: int = MAX_ARCHIVE_FILES) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Check every entry of an open archive against the safety rules; return the entries to extract."""
    infos = zf.infolist()
    if len(infos) > max_files:
        raise UnsafeArchiveError(f"archive has {len(infos)} entries; the limit is {max_files}")
    members, declared = [], 0
    for info in infos:
        rel = _safe_member_path(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"archive entry {info.filename!r} is a symbolic link (not allowed)")
        if info.flag_bits & 0x1:
            raise UnsafeArchiveError(f"archive entry {info.filename!r} is encrypted")
        declared += info.file_size
        if declared > max_bytes:
            raise UnsafeArchiveError(
                f"archive is too large: over {max_bytes / 1e6:.0f} MB uncompressed (limit {max_bytes} bytes)")
        if info.is_dir() or info.filename.replace("\\", "/").startswith(_IGNORED_PREFIXES):
            continue
        members.append((info, rel))
    return members


def extract_archive(archive: str | Path | BinaryIO, dest_root: str | Path | None = None, *,
                    max_bytes: int = MAX_ARCHIVE_BYTES, max_files: int = MAX_ARCHIVE_FILES) -> Path:
    """Extract an untrusted .zip (a path or a binary file object, e.g. an upload) into a fresh folder.

    The new folder is created inside ``dest_root`` (default ``cache_dir("uploads")``) and returned.
    Raises :class:`UnsafeArchiveError` (a ``ValueError``) if the archive breaks a rule, ``ValueError``
    if it is not a zip file; in both cases nothing is left behind.
    """
    if isinstance(archive, (str, Path)) and not Path(archive).is_file():
        raise FileNotFoundError(f"archive not found: {archive}")
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"not a valid .zip archive: {exc}") from None
    with zf:
        members = check_archive(zf, max_bytes=max_bytes, max_files=max_files)
        root = Path(dest_root) if dest_root is not None else cache_dir("uploads")
        root.mkdir(parents=True, exist_ok=True)
        dest = Path(tempfile.mkdtemp(prefix="upload-", dir=root)).resolve()
        try:
            written = 0
            for info, rel in members:
                target = dest.joinpath(*rel.parts)
                if not target.resolve().is_relative_to(dest):  # belt and braces after the name checks
                    raise UnsafeArchiveError(f"archive entry {info.filename!r} escapes the target folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "xb") as out:  # "x": duplicate names fail
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > max_bytes:
                            raise UnsafeArchiveError(
                                f"archive is too large: over {max_bytes / 1e6:.0f} MB uncompressed "
                                f"(limit {max_bytes} bytes)")
                        out.write(chunk)
        except FileExistsError as exc:
            shutil.rmtree(dest, ignore_errors=True)
            raise UnsafeArchiveError(f"archive has a duplicate entry: {exc.filename}") from None
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            shutil.rmtree(dest, ignore_errors=True)
            raise ValueError(f"damaged .zip archive: {exc}") from None
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    return dest
