"""The user's own images: a folder with one sub-folder per class (also what an extracted .zip holds).

Every file is opened and decoded once while scanning, so unreadable files, non-images and image modes that
cannot be converted are skipped up front and counted with their reason (the run then trains on the rest);
images are converted to RGB when read (:mod:`tinytl_core.data.images`: 16-bit scaled, transparency
composited). Every problem with the folder is an :class:`~tinytl_core.data.errors.ImageFolderError` (or
``DatasetNotFoundError``), both :class:`~tinytl_core.data.errors.DatasetError`.

Class names are the folders' names as valid text (:func:`~tinytl_core.paths.valid_text`), one per folder.
Folders whose names differ only in letter case (``A`` and ``a``, e.g. a letters set) are two classes, as on
the file system. Two folders that would show as the same name (a name that is not valid UTF-8 shown as
``caf\\xe9`` beside a folder really called ``caf\\xe9``) are two classes, the one not really so named shown
with a suffix (``caf\\xe9 (2)``). Two folders whose names differ only in Unicode form (``café`` typed on
Linux, NFC, beside one copied from a Mac, NFD) look the same everywhere and are refused: merge or rename
them. Every per-class figure is kept by class index, never by name.
"""

from __future__ import annotations

import os
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from tinytl_core.data.dataset import DatasetSplits, FileSource, make_splits
from tinytl_core.data.errors import DatasetNotFoundError, ImageFolderError
from tinytl_core.data.images import image_problem
from tinytl_core.paths import valid_text

_IGNORED_DIRS = {"__macosx"}  # compared case-folded: macOS resource forks, any case


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.casefold() in _IGNORED_DIRS


@dataclass
class FolderScan:
    """What :func:`scan_image_folder` found: usable images per class and the skipped files with reasons.

    ``classes`` are distinct display names, indexed by label; ``reasons[i]`` says why ``skipped[i]`` was
    skipped (lists, not dicts keyed by the shown path: two files can show as the same text).
    """

    root: Path
    classes: list[str]
    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # paths relative to root, as valid text
    reasons: list[str] = field(default_factory=list)  # why each skipped file was skipped

    def skip(self, rel: str, reason: str) -> None:
        """Count the file ``rel`` (relative to the root) as skipped, for ``reason``."""
        self.skipped.append(rel)
        self.reasons.append(reason)

    def skipped_by_reason(self) -> dict[str, int]:
        """How many files were skipped for each reason."""
        return dict(Counter(self.reasons))

    def counts_by_label(self) -> list[int]:
        """Usable images per class, by class index (what every per-class check uses)."""
        out = [0] * len(self.classes)
        for y in self.labels:
            out[y] += 1
        return out

    def counts(self) -> dict[str, int]:
        """Usable images per class name (names are distinct: see :func:`class_names`)."""
        return dict(zip(self.classes, self.counts_by_label()))


def class_names(folders: list[str], shown: str = "the image folder") -> list[str]:
    """Distinct display names, valid text, for class folders (their real names, sorted).

    A folder keeps its name as :func:`~tinytl_core.paths.valid_text` shows it; when several show as the
    same text (a name that is not valid UTF-8 shown as ``caf\\xe9`` beside a folder really named so), the
    one whose name is real text (else the first) keeps it and the others get `` (2)``, `` (3)``, ...
    Raises :class:`~tinytl_core.data.errors.ImageFolderError` when names differ only in Unicode form
    (NFC ``café`` and NFD ``café``): they look identical, so the classes could not be told apart.
    """
    texts = [valid_text(name) for name in folders]
    groups: dict[str, list[int]] = {}  # NFC form of the shown name -> indices of the folders showing it
    for i, text in enumerate(texts):
        groups.setdefault(unicodedata.normalize("NFC", text), []).append(i)
    for members in groups.values():
        forms = list(dict.fromkeys(texts[i] for i in members))
        if len(forms) > 1:
            raise ImageFolderError(
                f"class folders {' and '.join(ascii(f) for f in forms)} in {shown} have the same name in "
                "different Unicode forms (one was probably copied from a Mac): they would show as one "
                "class; merge them into one folder or rename one"
            )
    names = list(texts)
    taken = set(groups)
    for members in groups.values():
        if len(members) < 2:
            continue
        keeper = next((i for i in members if texts[i] == folders[i]), members[0])
        suffix = 2
        for i in members:
            if i == keeper:
                continue
            while unicodedata.normalize("NFC", f"{texts[i]} ({suffix})") in taken:
                suffix += 1
            names[i] = f"{texts[i]} ({suffix})"
            taken.add(unicodedata.normalize("NFC", names[i]))
    return names


def _effective_root(root: Path) -> Path:
    """Descend through a lone wrapper folder (``x.zip`` holding only ``x/<class>/...``)."""
    while True:
        entries = [e for e in os.scandir(root) if not _hidden(e.name)]
        dirs = [e for e in entries if e.is_dir(follow_symlinks=False)]
        if (
            len(entries) == 1
            and len(dirs) == 1
            and any(e.is_dir(follow_symlinks=False) and not _hidden(e.name) for e in os.scandir(dirs[0].path))
        ):
            root = Path(dirs[0].path)
        else:
            return root


def scan_image_folder(root: str | Path, *, progress: bool = False, label: str | None = None) -> FolderScan:
    """Scan ``root/<class>/**/<image>``: sub-folders are classes (sorted), every readable image counts.

    Hidden files and folders (``.name``, ``__MACOSX``) are ignored; symbolic links are not followed;
    other files that are not usable images, including files lying directly in ``root``, are skipped
    and listed with their reason. Raises :class:`~tinytl_core.data.errors.DatasetNotFoundError` (a
    ``FileNotFoundError``) for a missing folder and :class:`~tinytl_core.data.errors.ImageFolderError` (a
    ``ValueError``) when fewer than two classes are found, a class has no usable image, or the folder
    cannot be read. Messages name the folder as ``label`` (default: its name).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder not found: {root}")
    try:
        return _scan(root, progress, label or root.name or str(root))
    except OSError as exc:  # unreadable sub-folder, names the file system refuses, ...
        raise ImageFolderError(
            f"cannot read the image folder {label or root.name}: {exc.strerror or exc}; "
            "check that its files are readable"
        ) from None


def _scan(root: Path, progress: bool, shown: str) -> FolderScan:
    root = _effective_root(root)
    folders = sorted(
        e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False) and not _hidden(e.name)
    )
    # Class names are labels: valid text even where a folder's name is not (its bytes shown as \xe9),
    # distinct per folder; the files are still read through the folders' own names.
    classes = class_names(folders, shown)
    scan = FolderScan(root=root, classes=classes)
    for loose in sorted(
        e.name for e in os.scandir(root) if not e.is_dir(follow_symlinks=False) and not _hidden(e.name)
    ):
        scan.skip(valid_text(loose), "not in a class folder")
    if len(classes) < 2:
        raise ImageFolderError(
            f"found {len(classes)} class folder(s) in {shown}; need at least 2 "
            "(one sub-folder per class, each holding that class's images)"
        )
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(folders):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
            files += [(Path(dirpath) / f, label) for f in sorted(filenames) if not _hidden(f)]
    for path, label in tqdm(files, desc="checking images", unit="img", disable=not progress):
        problem = "symbolic link" if path.is_symlink() else image_problem(path)
        if problem is None:
            scan.paths.append(path)
            scan.labels.append(label)
        else:
            scan.skip(valid_text(str(path.relative_to(root))), problem)
    empty = [scan.classes[y] for y, n in enumerate(scan.counts_by_label()) if n == 0]
    if empty:
        raise ImageFolderError(
            f"class folder(s) without any usable image in {shown}: {', '.join(empty)}"
            + (f" ({_why(scan)})" if scan.skipped else "")
            + "; add images (PNG, JPEG, ...) to each class folder"
        )
    return scan


def _why(scan: FolderScan) -> str:
    reasons = sorted(scan.skipped_by_reason().items(), key=lambda kv: (-kv[1], kv[0]))
    return "skipped: " + ", ".join(f"{n} {reason}" for reason, n in reasons)


def load_image_folder(
    root: str | Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    shots: int | None = None,
    progress: bool = False,
    name: str | None = None,
) -> DatasetSplits:
    """Load a class-per-sub-folder image folder as train/validation splits (stratified, seeded)."""
    scan = scan_image_folder(root, progress=progress, label=name)
    source = FileSource(scan.paths, scan.labels, scan.classes)
    return make_splits(
        valid_text(name or scan.root.name),
        source,
        val_fraction=val_fraction,
        seed=seed,
        shots=shots,
        description=valid_text(f"images from {name or scan.root}"),
        skipped=len(scan.skipped),
        skipped_examples=scan.skipped[:10],
        skipped_reasons=scan.skipped_by_reason(),
    )
