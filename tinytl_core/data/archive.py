"""Safe extraction of untrusted .zip uploads (one sub-folder per class inside).

An uploaded archive is untrusted. :func:`check_archive` refuses the whole archive, before anything is
written, when any entry

- has an absolute path (``/x``, ``C:x``, ``\\\\server\\x``), a ``..`` component, a NUL byte or control
  characters, an empty or blank name, a name that is not valid text;
- has a file name over :data:`MAX_NAME_BYTES` bytes, a path over :data:`MAX_PATH_BYTES` bytes or deeper
  than :data:`MAX_DEPTH` folders;
- is a symbolic link or a device, is encrypted, or uses a compression method Python cannot read;
- appears twice, also when the names differ only in letter case or Unicode form (they would overwrite
  each other on macOS and Windows), or is both a file and a folder;

or when the archive holds no file at all, more than :data:`MAX_ARCHIVE_FILES` entries or more than
``max_bytes`` uncompressed. The size cap is enforced on the bytes actually written (declared sizes can
lie: zip bombs). Extraction goes only into a fresh folder created for it, which is removed again if
anything goes wrong. Every failure is a :class:`~tinytl_core.data.errors.DatasetError`
(:class:`UnsafeArchiveError` or :class:`BadArchiveError`) whose message names the entry and says what to do.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import tempfile
import unicodedata
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tinytl_core.data.errors import (
    BadArchiveError,
    DatasetError,
    DatasetNotFoundError,
    ImageFolderError,
    UnsafeArchiveError,
)
from tinytl_core.paths import cache_dir

__all__ = [
    "MAX_ARCHIVE_BYTES",
    "MAX_ARCHIVE_FILES",
    "MAX_DEPTH",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "BadArchiveError",
    "UnsafeArchiveError",
    "check_archive",
    "declared_size",
    "extract_archive",
    "extracted_disk_bytes",
]

log = logging.getLogger(__name__)

MAX_ARCHIVE_BYTES = 1 << 30
"""Default cap on the total uncompressed size of an archive (1 GiB)."""
MAX_ARCHIVE_FILES = 20_000
"""Default cap on the number of entries in an archive."""
MAX_NAME_BYTES = 255
"""Longest file or folder name (one path component, UTF-8 bytes): NAME_MAX of Linux and macOS."""
MAX_PATH_BYTES = 1024
"""Longest entry path inside the archive (UTF-8 bytes), well under PATH_MAX with the extraction folder."""
MAX_DEPTH = 32
"""Most folder levels an entry may be nested in."""
WINDOWS_NAME_RULES = os.name == "nt"
"""Also refuse names Windows cannot hold (``<>:"|?*``, ``CON``, ``NUL``, trailing dots); on by default
only on Windows, where such names would fail or alias other files."""

_IGNORED_DIRS = ("__macosx",)  # resource forks macOS adds to zips (any case): never images, never extracted
_CHUNK = 1 << 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_WINDOWS_CHARS = re.compile(r'[<>:"|?*]')
_WINDOWS_DEVICES = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(10)),
    *(f"LPT{i}" for i in range(10)),
}
_SPECIAL_TYPES = (stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)
_ENCRYPTED = 0x1 | 0x40  # traditional (and AES, which also sets bit 0) and "strong" encryption
_FIX = "; fix the name (short, plain file and folder names) and zip again"


def _compressions() -> set[int]:
    """Compression methods this Python can decompress (bz2 / lzma are optional modules)."""
    methods = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
    for method, module in ((zipfile.ZIP_BZIP2, "bz2"), (zipfile.ZIP_LZMA, "lzma")):
        try:
            __import__(module)
            methods.add(method)
        except ImportError:
            pass
    return methods


_SUPPORTED_COMPRESSION = _compressions()


def _show(name: str) -> str:
    """An entry name fit for a message: printable, and shortened (with its length) when long."""
    text = _CONTROL.sub("?", name)
    if len(text) > 80:
        return f"'{text[:50]}…{text[-20:]}' ({len(name)} characters)"
    return repr(text)


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _safe_member_path(name: str, *, windows: bool | None = None) -> PurePosixPath:
    """Validate one entry name; return it as a clean relative path or raise :class:`UnsafeArchiveError`."""
    windows = WINDOWS_NAME_RULES if windows is None else windows
    shown = _show(name)
    if "\x00" in name:
        raise UnsafeArchiveError(f"archive entry {shown} contains a NUL byte")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeArchiveError(f"archive entry {shown} is not a valid text name{_FIX}") from None
    norm = name.replace("\\", "/")  # Windows tools sometimes write backslashes
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UnsafeArchiveError(f"archive entry {shown} has an absolute path")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"archive entry {shown} points outside the archive folder ('..')")
    if not parts:
        raise UnsafeArchiveError(f"archive has an entry with an empty name ({shown}){_FIX}")
    if _CONTROL.search(name):
        raise UnsafeArchiveError(f"archive entry {shown} has control characters in its name{_FIX}")
    if any(not p.strip() for p in parts):
        raise UnsafeArchiveError(f"archive entry {shown} has a blank file or folder name{_FIX}")
    longest = max(parts, key=_utf8_len)
    if _utf8_len(longest) > MAX_NAME_BYTES:
        raise UnsafeArchiveError(
            f"archive entry {shown} has a name of {_utf8_len(longest)} bytes; the limit is "
            f"{MAX_NAME_BYTES}{_FIX}"
        )
    if _utf8_len("/".join(parts)) > MAX_PATH_BYTES:
        raise UnsafeArchiveError(
            f"archive entry {shown} has a path of {_utf8_len('/'.join(parts))} bytes; the limit is "
            f"{MAX_PATH_BYTES}{_FIX}"
        )
    if len(parts) > MAX_DEPTH + 1:
        raise UnsafeArchiveError(
            f"archive entry {shown} is nested {len(parts) - 1} folders deep; the limit is {MAX_DEPTH}{_FIX}"
        )
    if windows:
        for part in parts:
            if (
                _WINDOWS_CHARS.search(part)
                or part[-1] in ". "
                or part.split(".")[0].upper() in _WINDOWS_DEVICES
            ):
                raise UnsafeArchiveError(
                    f"archive entry {shown} has a name this server's file system cannot hold{_FIX}"
                )
    return PurePosixPath(*parts)


def _key(path: PurePosixPath | str) -> str:
    """How a file system that ignores case and Unicode form sees a path (macOS, Windows)."""
    return unicodedata.normalize("NFC", str(path)).casefold()


BLOCK_BYTES = 4096
"""The disk block an extracted file is counted in (a file takes whole blocks): the size cap and the uploads
quota count what the extraction takes on disk, not the bytes alone."""


def _too_large(max_bytes: int) -> str:
    return f"archive is too large: over {max_bytes / 1e6:.0f} MB uncompressed (limit {max_bytes} bytes)"


def check_archive(
    zf: zipfile.ZipFile, *, max_bytes: int = MAX_ARCHIVE_BYTES, max_files: int = MAX_ARCHIVE_FILES
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Check every entry of an open archive against the safety rules; return the entries to extract.

    Raises :class:`UnsafeArchiveError` or :class:`BadArchiveError` naming the first offending entry, and
    :class:`~tinytl_core.data.errors.ImageFolderError` when the archive holds no file at all.
    """
    infos = zf.infolist()
    if len(infos) > max_files:
        raise UnsafeArchiveError(f"archive has {len(infos)} entries; the limit is {max_files}")
    members: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    declared = 0
    files: dict[str, str] = {}  # case/Unicode-folded path -> the entry's name
    folders: dict[str, str] = {}
    for info in infos:
        rel = _safe_member_path(info.filename)
        shown = _show(info.filename)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise UnsafeArchiveError(f"archive entry {shown} is a symbolic link (not allowed)")
        if kind in _SPECIAL_TYPES:
            raise UnsafeArchiveError(f"archive entry {shown} is a device or pipe, not a file (not allowed)")
        if info.flag_bits & _ENCRYPTED:
            raise UnsafeArchiveError(f"archive entry {shown} is encrypted: zip the images without a password")
        if info.compress_type not in _SUPPORTED_COMPRESSION:
            raise BadArchiveError(
                f"archive entry {shown} uses compression method {info.compress_type}, which cannot be read "
                "here; zip the folder again with standard (deflate) compression"
            )
        declared += max(info.file_size, 0)
        if declared > max_bytes:
            raise UnsafeArchiveError(_too_large(max_bytes))
        if rel.parts[0].casefold() in _IGNORED_DIRS:
            continue
        parents = [_key(PurePosixPath(*rel.parts[:i])) for i in range(1, len(rel.parts))]
        if info.filename.endswith(("/", "\\")):  # a folder, also as Windows tools write it (ZipInfo.is_dir
            # only knows "/": "cats\\" would be taken for a file named like the folder)
            parents.append(_key(rel))
        else:
            key = _key(rel)
            if key in folders:
                raise UnsafeArchiveError(
                    f"archive holds {_show(str(rel))} both as a file and as a folder; "
                    "rename one and zip again"
                )
            if key in files:
                other = files[key]
                if other == str(rel):
                    raise UnsafeArchiveError(
                        f"archive holds the file {_show(other)} twice; zip the folder again"
                    )
                raise UnsafeArchiveError(
                    f"archive holds {_show(other)} and {_show(str(rel))}: names that differ only in letter "
                    "case (or Unicode form) overwrite each other on macOS and Windows; rename one and zip "
                    "again"
                )
            files[key] = str(rel)
            members.append((info, rel))
        for folder in parents:
            if folder in files:
                raise UnsafeArchiveError(
                    f"archive holds {_show(files[folder])} both as a file and as a "
                    "folder; rename one and zip again"
                )
            folders.setdefault(folder, str(rel))
    if not members:
        raise ImageFolderError(
            "the archive holds no files (only folders, or nothing): zip the class "
            "folders together with their images"
        )
    return members


def declared_size(zf: zipfile.ZipFile) -> int:
    """Total uncompressed size the archive declares (may lie; extraction caps the real bytes)."""
    return sum(max(info.file_size, 0) for info in zf.infolist())


def extracted_disk_bytes(zf: zipfile.ZipFile) -> int:
    """The disk space :func:`extract_archive` will take by the sizes the archive declares, counted as the
    uploads quota counts it: each file in whole :data:`BLOCK_BYTES` blocks (at least one), each folder one
    block; what extraction skips (``__MACOSX``) not at all. Declared sizes may lie: extraction still caps
    the bytes really written."""
    files = 0
    folders: set[str] = set()
    for info in zf.infolist():
        parts = [p for p in info.filename.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts or parts[0].casefold() in _IGNORED_DIRS:
            continue
        is_dir = info.filename.endswith(("/", "\\"))
        folders.update("/".join(parts[:i]) for i in range(1, len(parts) + (1 if is_dir else 0)))
        if not is_dir:
            files += max(BLOCK_BYTES, -(-max(info.file_size, 0) // BLOCK_BYTES) * BLOCK_BYTES)
    return files + BLOCK_BYTES * len(folders)


def _write_error(info: zipfile.ZipInfo, exc: OSError) -> DatasetError:
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return DatasetError(
            "the server's disk is full: the archive could not be extracted; try a smaller "
            "archive or ask whoever runs the app to free space"
        )
    reason = exc.strerror or type(exc).__name__
    return BadArchiveError(
        f"archive entry {_show(info.filename)} cannot be written on this server ({reason}){_FIX}"
    )


def _open_zip(archive: str | Path | BinaryIO) -> zipfile.ZipFile:
    if isinstance(archive, (str, Path)) and not Path(archive).is_file():
        raise DatasetNotFoundError(f"archive not found: {Path(archive).name}")
    try:
        return zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise BadArchiveError(f"not a valid .zip archive ({exc}): upload a .zip of class folders") from None
    except OSError as exc:
        raise BadArchiveError(
            f"the archive cannot be read ({exc.strerror or exc}); upload it again"
        ) from None
    except Exception as exc:  # damaged directories raise ValueError, EOFError, struct.error, ...
        raise BadArchiveError(
            f"damaged .zip archive ({type(exc).__name__}: {exc}); zip the folder again "
            "and upload the new file"
        ) from None


def extract_archive(
    archive: str | Path | BinaryIO,
    dest_root: str | Path | None = None,
    *,
    max_bytes: int = MAX_ARCHIVE_BYTES,
    max_files: int = MAX_ARCHIVE_FILES,
) -> Path:
    """Extract an untrusted .zip (a path or a binary file object, e.g. an upload) into a fresh folder.

    The new folder is created inside ``dest_root`` (default ``cache_dir("uploads")``) and returned.
    Raises a :class:`~tinytl_core.data.errors.DatasetError` (a ``ValueError``) for anything wrong with the
    archive -- :class:`UnsafeArchiveError` when it breaks a rule, :class:`BadArchiveError` when it is not
    a zip, is damaged or cannot be written here, ``DatasetNotFoundError`` for a missing path -- and
    nothing is left behind.
    """
    with _open_zip(archive) as zf:
        members = check_archive(zf, max_bytes=max_bytes, max_files=max_files)
        root = Path(dest_root) if dest_root is not None else cache_dir("uploads")
        try:
            root.mkdir(parents=True, exist_ok=True)
            dest = Path(tempfile.mkdtemp(prefix="upload-", dir=root)).resolve()
        except OSError as exc:
            raise DatasetError(
                f"cannot create a folder for the extraction ({exc.strerror or exc}); ask "
                "whoever runs the app to check the data folder"
            ) from None
        done = False
        try:
            written = 0
            for info, rel in members:
                written = _extract_one(zf, info, dest, dest.joinpath(*rel.parts), written, max_bytes)
            done = True
        except DatasetError:
            raise
        except Exception as exc:  # anything unforeseen still becomes one clear error (traceback in the log)
            log.exception("unexpected error while extracting an archive")
            raise BadArchiveError(
                f"the archive could not be extracted ({type(exc).__name__}); zip the "
                "folder again with a standard tool and upload the new file"
            ) from None
        finally:
            if not done:
                shutil.rmtree(dest, ignore_errors=True)
    return dest


def _extract_one(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, target: Path, written: int, max_bytes: int
) -> int:
    """Write one checked entry to ``target``; return the running total of bytes written."""
    try:
        if not target.resolve().is_relative_to(dest):  # belt and braces after the name checks
            raise UnsafeArchiveError(f"archive entry {_show(info.filename)} escapes the target folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        out = open(target, "xb")  # "x": never overwrite (duplicates are refused up front already)
    except FileExistsError:
        raise UnsafeArchiveError(f"archive has a duplicate entry: {_show(info.filename)}") from None
    except OSError as exc:
        raise _write_error(info, exc) from None
    with out:
        try:
            src = zf.open(info)
        except Exception as exc:  # header mismatch, unsupported feature, password needed, ...
            raise BadArchiveError(
                f"archive entry {_show(info.filename)} cannot be read ({exc}); the .zip "
                "is damaged or uses an unsupported feature: zip the folder again"
            ) from None
        start = written
        with src:
            while True:
                try:
                    chunk = src.read(_CHUNK)
                except Exception as exc:  # bad CRC, truncated stream, corrupt deflate/bz2/lzma data
                    raise BadArchiveError(
                        f"damaged .zip archive: entry {_show(info.filename)} ({exc}); "
                        "zip the folder again and upload the new file"
                    ) from None
                if not chunk:
                    # what the file takes on disk: whole blocks (20,000 one-byte files fill 80 MB)
                    written = start + max(BLOCK_BYTES, -(-(written - start) // BLOCK_BYTES) * BLOCK_BYTES)
                    if written > max_bytes:
                        raise UnsafeArchiveError(_too_large(max_bytes))
                    return written
                written += len(chunk)
                if written > max_bytes:
                    raise UnsafeArchiveError(_too_large(max_bytes))
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise _write_error(info, exc) from None
