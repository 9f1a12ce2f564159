"""The user's own images: a folder with one sub-folder per class (also what an extracted .zip holds).

Every file is opened and decoded once while scanning, so unreadable files, non-images and image modes that
cannot be converted are skipped up front and counted with their reason (the run then trains on the rest);
images are converted to RGB when read (:mod:`tinytl_core.data.images`: 16-bit scaled, transparency
composited). Every problem with the folder is an :class:`~tinytl_core.data.errors.ImageFolderError` (or
``DatasetNotFoundError``), both :class:`~tinytl_core.data.errors.DatasetError`.
"""

from __future__ import annotations

import os
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
    """What :func:`scan_image_folder` found: usable images per class and the skipped files with reasons."""

    root: Path
    classes: list[str]
    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # paths relative to root
    reasons: dict[str, str] = field(default_factory=dict)  # skipped path -> why

    def skip(self, rel: str, reason: str) -> None:
        self.skipped.append(rel)
        self.reasons[rel] = reason

    def skipped_by_reason(self) -> dict[str, int]:
        """How many files were skipped for each reason."""
        return dict(Counter(self.reasons.values()))

    def counts(self) -> dict[str, int]:
        """Usable images per class."""
        out = dict.fromkeys(self.classes, 0)
        for y in self.labels:
            out[self.classes[y]] += 1
        return out


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
    # Class names are labels: valid text even where a folder's name is not (its bytes shown as \xe9);
    # the files are still read through the folders' own names.
    classes = [valid_text(name) for name in folders]
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
    empty = [c for c, n in scan.counts().items() if n == 0]
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
