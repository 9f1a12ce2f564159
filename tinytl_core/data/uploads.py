"""Uploaded archives and their extractions under ``cache_dir("uploads")``: names, quota, eviction.

What the folder holds, per uploaded archive (its *key* is the first 16 hex digits of its SHA-256):

- ``<stem>-<key>.zip`` -- the archive as uploaded (:func:`save_archive`); ``<stem>`` is the sanitised file
  name, and ``<stem>-<key>.json`` keeps the user's own file name for labels (:func:`dataset_display_name`);
- ``zip-<sha256[:24]>/`` -- its extraction (:func:`extract_archive_cached`), also made for a .zip given on
  the command line; ``zip-<...>.lock`` is held (shared) while a loaded dataset reads from it.

Quota: archives and extractions together stay under :func:`upload_quota_bytes` (``$TINYTL_UPLOAD_QUOTA_MB``,
default :data:`DEFAULT_QUOTA_MB`). Before an archive is extracted and after anything is added, the least
recently used archives and extractions are deleted until everything fits; extractions in use (a run is
reading them, in this process or another) are never deleted, nor uploads *pinned* by a registered pin
source (:func:`register_pin_source`: the job queue pins the datasets of its queued and running jobs). An
upload needs room for itself *and* its extraction (the sizes its entries declare, in disk blocks): one
that needs more than the whole quota is refused at once, before anything is written or extracted; one
that cannot fit because uploads in use hold the room is refused saying so (try again later). Both are
:class:`~tinytl_core.data.errors.UploadQuotaError`. Refused and failed uploads are deleted at once
(:func:`discard_upload`); leftovers of an interrupted extraction are deleted after :data:`STALE_S`. Name
files (a few hundred bytes) are kept, so old runs keep their labels. :func:`kept_uploads` says what is
kept and how much room it takes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tinytl_core.data.archive import BLOCK_BYTES, MAX_ARCHIVE_BYTES, extract_archive, extracted_disk_bytes
from tinytl_core.data.errors import DatasetError, DatasetNotFoundError, UploadQuotaError
from tinytl_core.paths import cache_dir

try:  # POSIX: leases work across processes (the app and a CLI run sharing one data folder)
    import fcntl
except ImportError:  # pragma: no cover - Windows: leases within this process only
    fcntl = None  # type: ignore[assignment]

ENV_QUOTA = "TINYTL_UPLOAD_QUOTA_MB"
DEFAULT_QUOTA_MB = 2000
"""Default uploads quota in MB (10^6 bytes): archives and extractions together."""
STALE_S = 3600.0
"""Age after which a half-written archive or extraction folder counts as a leftover of a crash."""
MAX_NAME_CHARS = 120
"""Longest upload name kept for labels."""

_ARCHIVE = re.compile(r"^(?P<stem>.+)-(?P<key>[0-9a-f]{16})(?:-(?P<alt>[0-9a-f]{8}))?\.(?P<ext>zip|json)$")
_EXTRACTED = re.compile(r"^zip-(?P<digest>[0-9a-f]{24})(?P<lock>\.lock)?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_QUOTA_LOCK = threading.RLock()
_HELD: Counter[str] = Counter()  # extraction folder -> leases alive in this process
_HELD_LOCK = threading.Lock()
PinSource = Callable[[], Iterable[str | os.PathLike[str]]]
"""A callable naming paths (archives, extraction folders or files inside one) that must not be evicted."""
_PIN_SOURCES: list[PinSource] = []
log = logging.getLogger(__name__)


def register_pin_source(source: PinSource) -> None:
    """Have quota eviction ask ``source`` which uploads are still needed, and keep those (the job queue
    registers its queued and running jobs' datasets: a job must not lose its data while it waits). A
    source that fails makes eviction delete nothing that time (it cannot tell what is safe)."""
    if source not in _PIN_SOURCES:
        _PIN_SOURCES.append(source)


def pinned_paths() -> set[str] | None:
    """Real paths every pin source names now; None when a source failed (then nothing may be evicted)."""
    out: set[str] = set()
    for source in list(_PIN_SOURCES):
        try:
            out.update(os.path.realpath(p) for p in source())
        except Exception:  # noqa: BLE001 -- a locked database: evict nothing rather than a needed upload
            log.warning("an upload pin source failed; nothing is evicted this time", exc_info=True)
            return None
    return out


def _pinned(item: KeptUpload, pins: set[str]) -> bool:
    """True when a pin names one of ``item``'s archives, its extraction, or a path inside the extraction."""
    paths = {os.path.realpath(p) for p in item.archives}
    folder = os.path.realpath(item.extracted) if item.extracted is not None else None
    return any(
        p in paths or (folder is not None and (p == folder or p.startswith(folder + os.sep))) for p in pins
    )


def uploads_root() -> Path:
    """The uploads folder (created if needed)."""
    return cache_dir("uploads")


def upload_quota_bytes() -> int:
    """The uploads quota in bytes: ``$TINYTL_UPLOAD_QUOTA_MB`` (MB = 10^6 bytes), else the default."""
    raw = os.environ.get(ENV_QUOTA, "").strip()
    if not raw:
        return DEFAULT_QUOTA_MB * 10**6
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb > 0 or mb != mb or mb == float("inf"):
        raise DatasetError(f"{ENV_QUOTA} must be a positive number of MB, got {raw!r}; fix it and restart")
    return int(mb * 10**6)


def _size_text(n: float) -> str:
    """Bytes in decimal units, as people read them: 950 KB, 4.2 MB, 897 MB, 1.23 GB."""
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB" if n < 1e7 else f"{n / 1e6:.0f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.0f} KB"
    return f"{int(n)} bytes"


# ----------------------------------------------------------------------------------------------- names
def display_filename(filename: str) -> str:
    """The user's file name fit for a label: no folders, no control characters, at most 120 characters."""
    name = re.split(r"[\\/]", str(filename))[-1]
    name = _CONTROL.sub("", name).strip()
    if len(name) > MAX_NAME_CHARS:
        name = name[: MAX_NAME_CHARS - 1] + "…"
    return name or "upload.zip"


def safe_stem(filename: str) -> str:
    """A file-system-safe stem of ``filename`` (letters, digits, ``_`` and ``-``; at most 40 characters)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(display_filename(filename)).stem).strip("_")
    return stem[:40] or "upload"


def _read_name(sidecar: Path) -> str | None:
    try:
        name = json.loads(sidecar.read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return display_filename(name) if isinstance(name, str) and name.strip() else None


def dataset_display_name(value: str | os.PathLike[str] | None) -> str:
    """How to show a stored dataset value (a run's ``config.dataset``) to people.

    An upload saved by :func:`save_archive` (``…/uploads/<stem>-<key>.zip``) shows the user's own file
    name (``my pets!.zip``), also for runs stored before names were kept (then ``<stem>.zip``); any other
    path shows its last component; names (``digits``, ``cifar10``) show as they are; ``None`` as ``""``.
    """
    if value is None or str(value) == "":
        return ""
    text = str(value)
    if "/" not in text and "\\" not in text:
        return text
    parts = re.split(r"[\\/]+", text.rstrip("/\\"))
    name, parent = parts[-1], (parts[-2] if len(parts) > 1 else "")
    match = _ARCHIVE.match(name)
    if match and match["ext"] == "zip" and parent == "uploads":
        return _read_name(Path(text).with_suffix(".json")) or f"{match['stem']}.zip"
    return name


def save_archive(filename: str, data: bytes) -> Path:
    """Keep an uploaded archive (already checked to be a .zip) in the uploads folder; return its path.

    The path is ``<safe stem>-<sha256[:16]>.zip`` (the same upload is kept once); the user's own file name
    goes into ``<same>.json``. Uploads over the quota evict the least recently used ones; an upload that
    does not fit even then raises :class:`UploadQuotaError` and is not kept.
    """
    root = uploads_root()
    original = display_filename(filename)
    digest = hashlib.sha256(data).hexdigest()
    key = digest[:16]
    path = root / f"{safe_stem(filename)}-{key}.zip"
    known = _read_name(path.with_suffix(".json"))
    if known is not None and known != original:  # same bytes, another name with the same stem
        alt = hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        path = root / f"{safe_stem(filename)}-{key}-{alt}.zip"
    sidecar = path.with_suffix(".json")
    with _QUOTA_LOCK:
        quota = upload_quota_bytes()
        # The room this upload will take: the archive, and its extraction unless that is already kept.
        archive_bytes = _blocks(len(data))
        extracted = 0 if (root / f"zip-{digest[:24]}").is_dir() else _extraction_bytes(data)
        if archive_bytes + extracted > quota:
            raise _too_large_error(original, archive_bytes, extracted, quota)
        new = not path.exists()
        try:
            if new:
                tmp = root / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
                tmp.write_bytes(data)
                tmp.replace(path)  # atomic: readers never see a partial archive
            else:
                with contextlib.suppress(OSError):
                    os.utime(path)  # used again: most recently used
            if not sidecar.exists():
                sidecar.write_text(json.dumps({"name": original}), encoding="utf-8")
        except OSError as exc:
            if new:
                path.unlink(missing_ok=True)
            raise DatasetError(
                f"cannot keep the upload {original} on the server ({exc.strerror or exc}); "
                "try again later or ask whoever runs the app to free space"
            ) from None
        usage = enforce_upload_quota(keep=[path], extra_bytes=extracted)  # room for the extraction too
        if usage.total_bytes + extracted > usage.quota_bytes:
            if new:
                discard_upload(path)
            raise _quota_error(original, archive_bytes, extracted, usage, own=key)
    return path


def _blocks(n: int) -> int:
    """``n`` bytes of a file as disk blocks (what the quota counts)."""
    return -(-n // BLOCK_BYTES) * BLOCK_BYTES


def _extraction_bytes(archive: str | Path | bytes) -> int:
    """What extracting ``archive`` will take on disk by its declared sizes, in blocks and capped at
    :data:`MAX_ARCHIVE_BYTES` (extraction refuses more); 0 when it cannot be read (extraction says why)."""
    try:
        with zipfile.ZipFile(io.BytesIO(archive) if isinstance(archive, bytes) else archive) as zf:
            return min(extracted_disk_bytes(zf), MAX_ARCHIVE_BYTES)
    except Exception:  # noqa: BLE001 -- a damaged archive: extract_archive reports what is wrong with it
        return 0


def _too_large_error(name: str, archive_bytes: int, extracted: int, quota: int) -> UploadQuotaError:
    """The refusal of an upload that needs more than the whole quota by itself: it can never fit."""
    if archive_bytes:
        need = (
            f"{name} needs {_size_text(archive_bytes + extracted)}: the archive ({_size_text(archive_bytes)})"
            f" plus its extracted files ({_size_text(extracted)}), more than the whole uploads quota"
        )
    else:  # an archive outside the uploads folder: only its extraction counts
        need = f"{name} expands to {_size_text(extracted)}, more than the whole uploads quota"
    return UploadQuotaError(
        f"{need} ({_size_text(quota)}), so it can never fit: upload a smaller archive (fewer or smaller "
        f"images) or ask whoever runs the app to raise {ENV_QUOTA}"
    )


def _quota_error(
    name: str, archive_bytes: int, extracted: int, usage: UploadsUsage, *, own: str | None = None
) -> UploadQuotaError:
    """The refusal of an upload that needs ``archive_bytes`` (0: an archive the quota does not hold) plus
    ``extracted`` when what is kept (``usage``) leaves too little room: too large by itself
    (:func:`_too_large_error`), or the room is held by uploads that may not be deleted now (in use, pinned,
    being extracted). ``own``: the upload's key, whose own files do not count as held."""
    need = archive_bytes + extracted
    if need > usage.quota_bytes:
        return _too_large_error(name, archive_bytes, extracted, usage.quota_bytes)
    held = [i for i in usage.items if i.key != own and (i.in_use or i.pinned)]
    busy = sum(i.size_bytes for i in held)
    busy += usage.total_bytes - sum(i.size_bytes for i in usage.items)  # extractions under way
    if busy <= 0:  # others added uploads meanwhile (another session): room may free up in a moment
        return UploadQuotaError(
            f"{name} needs {_size_text(need)}, but the uploads quota ({_size_text(usage.quota_bytes)}) is "
            f"full right now with uploads being saved at the same time; try again in a moment, or ask "
            f"whoever runs the app to raise {ENV_QUOTA}"
        )
    return UploadQuotaError(
        f"{name} needs {_size_text(need)}, but {_size_text(busy)} of the uploads quota "
        f"({_size_text(usage.quota_bytes)}) is held by uploads in use (running or queued trainings, or "
        f"uploads being extracted), which are never deleted; try again when they have ended, or ask "
        f"whoever runs the app to raise {ENV_QUOTA}"
    )


# ---------------------------------------------------------------------------------------------- leases
def _lock_path(folder: Path) -> Path:
    return folder.with_name(folder.name + ".lock")


class ExtractionLease:
    """Held while a loaded dataset reads from an extraction: quota eviction never deletes it meanwhile.

    A shared ``flock`` on ``<folder>.lock`` (POSIX; across processes) plus a count in this process.
    Released by :meth:`release` or when garbage-collected; a pickled copy (a DataLoader worker) holds none.
    """

    def __init__(self, folder: Path):
        self.folder = str(folder)
        self._fh: Any = None
        with _HELD_LOCK:
            _HELD[self.folder] += 1
        self._held = True
        if fcntl is None:
            return
        lock = _lock_path(Path(folder))
        for _ in range(50):  # an eviction may delete the lock file between our open and our lock
            try:
                fh = open(lock, "a+b")
            except OSError:
                return  # read-only data folder: the in-process count still protects this process
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
            try:
                same = os.fstat(fh.fileno()).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fh = fh
                return
            fh.close()

    def release(self) -> None:
        if getattr(self, "_held", False):
            self._held = False
            with _HELD_LOCK:
                _HELD[self.folder] -= 1
                if _HELD[self.folder] <= 0:
                    del _HELD[self.folder]
        fh, self._fh = getattr(self, "_fh", None), None
        if fh is not None:
            with contextlib.suppress(OSError, ValueError):
                fh.close()  # closing the last descriptor drops the flock

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # also at interpreter shutdown
            self.release()

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "_fh": None, "_held": False}


def _try_exclusive(folder: Path) -> Any:
    """An exclusive hold on ``folder``'s lock (an open file), or None when a lease holds it."""
    with _HELD_LOCK:
        if _HELD.get(str(folder), 0) > 0:
            return None
    if fcntl is None:
        return contextlib.nullcontext()
    try:
        fh = open(_lock_path(folder), "a+b")
    except OSError:
        return contextlib.nullcontext()
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh


# ------------------------------------------------------------------------------------------ bookkeeping
@dataclass(frozen=True)
class KeptUpload:
    """One uploaded archive and/or its extraction, as kept on disk."""

    key: str
    name: str
    archives: tuple[Path, ...]
    extracted: Path | None
    size_bytes: int
    last_used: float
    in_use: bool
    pinned: bool = False  # a queued or running job needs it (see register_pin_source)


@dataclass(frozen=True)
class UploadsUsage:
    """What the uploads folder keeps (most recently used first), its total size and the quota."""

    items: tuple[KeptUpload, ...]
    total_bytes: int
    quota_bytes: int
    evicted: tuple[KeptUpload, ...] = field(default=())

    def message(self) -> str:
        """A sentence for people: what is kept, how much room it takes, and what was just deleted."""
        n = len(self.items)
        names = ", ".join(item.name for item in self.items[:5]) + (", …" if n > 5 else "")
        text = (
            f"{n} upload{'s' if n != 1 else ''} kept on the server ({_size_text(self.total_bytes)} of "
            f"the {_size_text(self.quota_bytes)} uploads quota){': ' + names if n else ''}. The least "
            "recently used are deleted when the quota is reached; uploads in use never are."
        )
        if self.evicted:
            text += " Deleted to make room: " + ", ".join(item.name for item in self.evicted) + "."
        return text


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, dirs, files in os.walk(path):
        for name in (*dirs, *files):  # folders take blocks too
            with contextlib.suppress(OSError):
                total += disk_bytes(os.lstat(os.path.join(dirpath, name)))
    return total


def disk_bytes(info: os.stat_result) -> int:
    """What a file takes on disk: its allocated blocks (a one-byte file takes a whole block), at least its
    size -- the quota counts disk, so thousands of tiny files cannot slip under it."""
    return max(info.st_size, getattr(info, "st_blocks", 0) * 512)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _remove_stale(root: Path) -> None:
    """Delete half-written archives and extraction folders an interrupted process left behind, and lock
    files of extractions that are gone."""
    now = time.time()
    for entry in os.scandir(root):
        path = Path(entry.path)
        if now - _mtime(path) <= STALE_S:
            continue
        if entry.name.startswith("upload-") and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        elif entry.name.startswith(".") and entry.name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                path.unlink()
        elif (match := _EXTRACTED.match(entry.name)) and match["lock"] and not path.with_suffix("").exists():
            discard_extraction(path.with_suffix(""))


def kept_uploads(root: Path | None = None, *, quota_bytes: int | None = None) -> UploadsUsage:
    """Every upload kept (archive and/or extraction), most recently used first, with sizes and the quota.

    Use :meth:`UploadsUsage.message` for the sentence the app shows after an upload.
    """
    root = Path(root) if root is not None else uploads_root()
    groups: dict[str, dict[str, Any]] = {}
    partial = 0
    for entry in os.scandir(root):
        path = Path(entry.path)
        archive, extracted = _ARCHIVE.match(entry.name), _EXTRACTED.match(entry.name)
        if archive and archive["ext"] == "zip" and entry.is_file(follow_symlinks=False):
            group = groups.setdefault(archive["key"], {"archives": [], "extracted": None, "locks": []})
            group["archives"].append(path)
        elif extracted and not extracted["lock"] and entry.is_dir(follow_symlinks=False):
            groups.setdefault(extracted["digest"][:16], {"archives": [], "extracted": None, "locks": []})[
                "extracted"
            ] = path
        elif extracted and extracted["lock"]:
            groups.setdefault(extracted["digest"][:16], {"archives": [], "extracted": None, "locks": []})[
                "locks"
            ].append(path)
        elif entry.name.startswith("upload-") and entry.is_dir(follow_symlinks=False):
            partial += _tree_size(path)  # an extraction under way (or a crash's leftover)
        elif entry.name.endswith(".tmp") and entry.is_file(follow_symlinks=False):
            partial += _size_or_zero(path)
    items = []
    for key, group in groups.items():
        archives, folder = tuple(sorted(group["archives"])), group["extracted"]
        if not archives and folder is None:
            continue  # only a lock file left
        size = sum(_size_or_zero(a) for a in archives) + (_tree_size(folder) if folder is not None else 0)
        used = max([_mtime(p) for p in (*archives, *group["locks"])] + [_mtime(folder) if folder else 0.0])
        names = [
            _read_name(a.with_suffix(".json")) or f"{_ARCHIVE.match(a.name)['stem']}.zip" for a in archives
        ]
        in_use = folder is not None and _in_use(folder)
        name = ", ".join(dict.fromkeys(names)) or "an archive given on the command line"
        items.append(KeptUpload(key, name, archives, folder, size, used, in_use))
    items.sort(key=lambda item: -item.last_used)
    quota = upload_quota_bytes() if quota_bytes is None else quota_bytes
    return UploadsUsage(tuple(items), sum(i.size_bytes for i in items) + int(partial), quota)


def _size_or_zero(path: Path) -> int:
    try:
        return disk_bytes(path.stat())
    except OSError:
        return 0


def _let_go(hold: Any) -> None:
    if hold is not None and hasattr(hold, "close"):
        with contextlib.suppress(OSError, ValueError):
            hold.close()


def _in_use(folder: Path) -> bool:
    hold = _try_exclusive(folder)
    _let_go(hold)
    return hold is None


def _evict(item: KeptUpload) -> bool:
    """Delete one upload's archive(s) and extraction unless a lease holds it; True when deleted."""
    hold = None
    if item.extracted is not None:
        hold = _try_exclusive(item.extracted)
        if hold is None:
            return False
    try:
        if item.extracted is not None:
            shutil.rmtree(item.extracted, ignore_errors=True)
        for archive in item.archives:
            with contextlib.suppress(OSError):
                archive.unlink()
        if item.extracted is not None:
            with contextlib.suppress(OSError):
                _lock_path(item.extracted).unlink()
    finally:
        _let_go(hold)
    return True


def enforce_upload_quota(
    *, keep: list[Path] | tuple[Path, ...] = (), extra_bytes: int = 0, root: Path | None = None
) -> UploadsUsage:
    """Delete least-recently-used uploads until everything (plus ``extra_bytes`` about to be written)
    fits the quota; never those in ``keep``, in use, or pinned (:func:`register_pin_source`). Returns
    what is kept afterwards (``evicted`` lists what was deleted); its ``total_bytes`` can still exceed
    the quota when nothing more may go."""
    root = Path(root) if root is not None else uploads_root()
    protected = {os.path.realpath(p) for p in keep}
    with _QUOTA_LOCK:
        _remove_stale(root)
        usage = kept_uploads(root)
        over = usage.total_bytes + extra_bytes - usage.quota_bytes
        if over <= 0:
            return usage
        pins = pinned_paths()  # asked only when something has to go: it reads the job queue
        items = tuple(replace(i, pinned=pins is None or _pinned(i, pins)) for i in usage.items)
        usage = UploadsUsage(items, usage.total_bytes, usage.quota_bytes)
        evicted = []
        for item in sorted(items, key=lambda i: i.last_used):
            if over <= 0:
                break
            paths = {os.path.realpath(p) for p in (*item.archives, item.extracted) if p is not None}
            if paths & protected or item.in_use or item.pinned:
                continue
            if _evict(item):
                evicted.append(item)
                over -= item.size_bytes
        if not evicted:
            return usage
        after = kept_uploads(root, quota_bytes=usage.quota_bytes)
        # pinned as above: a refusal then names the room pinned uploads hold
        kept = tuple(replace(i, pinned=pins is None or _pinned(i, pins)) for i in after.items)
        return UploadsUsage(kept, after.total_bytes, after.quota_bytes, tuple(evicted))


def discard_upload(path: str | Path, *, keep_name: bool = False) -> None:
    """Delete a refused or failed upload at once: archive, extraction (unless in use) and name file.

    Only archives :func:`save_archive` keeps are touched: any other path (a user's own file) is left alone.
    """
    path = Path(path)
    match = _ARCHIVE.match(path.name)
    if match is None or match["ext"] != "zip" or not _inside_uploads(path):
        return
    with _QUOTA_LOCK:
        with contextlib.suppress(OSError):
            path.unlink()
        if not keep_name:
            with contextlib.suppress(OSError):
                path.with_suffix(".json").unlink()
        for entry in path.parent.glob(f"zip-{match['key']}*"):
            if entry.is_dir() and _EXTRACTED.match(entry.name):
                discard_extraction(entry)


def _inside_uploads(path: Path) -> bool:
    try:
        return Path(os.path.realpath(path.parent)) == Path(os.path.realpath(uploads_root()))
    except OSError:
        return False


def discard_extraction(folder: str | Path) -> bool:
    """Delete an extraction nobody is using (a refused dataset); True when it is gone."""
    folder = Path(folder)
    hold = _try_exclusive(folder)
    if hold is None:
        return False
    try:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            _lock_path(folder).unlink()
    finally:
        _let_go(hold)
    return not folder.exists()


# ------------------------------------------------------------------------------------------- extraction
def _digest(archive: str | Path | bytes) -> str:
    digest = hashlib.sha256()
    if isinstance(archive, bytes):
        digest.update(archive)
        return digest.hexdigest()
    try:
        with open(archive, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"archive not found: {Path(archive).name}") from None
    except OSError as exc:
        raise DatasetError(f"cannot read the archive {Path(archive).name}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def extract_leased(archive: str | Path | bytes) -> tuple[Path, ExtractionLease]:
    """:func:`extract_archive_cached`, also returning a lease that keeps the extraction from eviction."""
    if not isinstance(archive, bytes) and not Path(archive).is_file():
        raise DatasetNotFoundError(f"archive not found: {Path(archive).name}")
    root = uploads_root()
    digest = _digest(archive)
    final = root / f"zip-{digest[:24]}"
    lease = ExtractionLease(final)
    try:
        if final.is_dir():
            with contextlib.suppress(OSError):
                os.utime(final)  # used again: most recently used
            return final, lease
        keep = [final] + ([Path(archive)] if not isinstance(archive, bytes) else [])
        quota = upload_quota_bytes()
        declared = _extraction_bytes(archive)
        name = "this archive" if isinstance(archive, bytes) else dataset_display_name(str(Path(archive)))
        archive_bytes = 0  # an upload's archive lies in the uploads folder: it counts against the quota too
        if not isinstance(archive, bytes) and _inside_uploads(Path(archive)):
            archive_bytes = _size_or_zero(Path(archive))
        if archive_bytes + declared > quota:
            raise _too_large_error(name, archive_bytes, declared, quota)
        usage = enforce_upload_quota(keep=keep, extra_bytes=declared)
        if usage.total_bytes + declared > usage.quota_bytes:
            raise _quota_error(name, archive_bytes, declared, usage, own=digest[:16])
        fresh = extract_archive(
            io.BytesIO(archive) if isinstance(archive, bytes) else archive,
            root,
            max_bytes=min(MAX_ARCHIVE_BYTES, quota),
        )
        try:
            os.rename(fresh, final)  # atomic; fails if a concurrent extraction won the race
        except OSError:
            shutil.rmtree(fresh, ignore_errors=True)
            if not final.is_dir():
                raise DatasetError("the extracted archive could not be kept; try again") from None
        usage = enforce_upload_quota(keep=keep)
        if usage.total_bytes > usage.quota_bytes:
            written = max(declared, _tree_size(final))  # declared sizes may lie (a bomb)
            lease.release()
            discard_extraction(final)
            raise _quota_error(name, archive_bytes, written, usage, own=digest[:16])
        return final, lease
    except BaseException:
        lease.release()
        if not final.is_dir():
            discard_extraction(final)  # only the lock file is left: remove it too
        raise


def extract_archive_cached(archive: str | Path | bytes) -> Path:
    """Extract an untrusted .zip (a path, or the bytes of an upload) once, with every safety rule of
    :func:`~tinytl_core.data.archive.extract_archive` and within the uploads quota; the same archive again
    reuses ``uploads/zip-<sha256>``. Raises a :class:`~tinytl_core.data.errors.DatasetError`."""
    folder, lease = extract_leased(archive)
    lease.release()
    return folder
