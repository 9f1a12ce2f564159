"""The user's own images: a folder with one sub-folder per class (also what an extracted .zip holds).

Every file is opened and decoded once while scanning, so unreadable files and non-images are skipped up
front and counted (the run then trains on the rest); images are converted to RGB when read.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from tinytl_core.data.dataset import DatasetSplits, FileSource, make_splits

_IGNORED_DIRS = {"__MACOSX"}


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED_DIRS


@dataclass
class FolderScan:
    """What :func:`scan_image_folder` found: usable images per class and the skipped files."""

    root: Path
    classes: list[str]
    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # paths relative to root

    def counts(self) -> dict[str, int]:
        """Usable images per class."""
        out = dict.fromkeys(self.classes, 0)
        for y in self.labels:
            out[self.classes[y]] += 1
        return out


def _readable_image(path: Path) -> bool:
    """True when PIL can fully decode ``path`` (catches truncated files and decompression bombs)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.draft("RGB", (256, 256))  # JPEG: decode at reduced scale, still checks the stream
                im.load()
        return True
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError):
        return False


def _effective_root(root: Path) -> Path:
    """Descend through a lone wrapper folder (``x.zip`` holding only ``x/<class>/...``)."""
    while True:
        entries = [e for e in os.scandir(root) if not _hidden(e.name)]
        dirs = [e for e in entries if e.is_dir(follow_symlinks=False)]
        if len(entries) == 1 and len(dirs) == 1 and any(
                e.is_dir(follow_symlinks=False) and not _hidden(e.name) for e in os.scandir(dirs[0].path)):
            root = Path(dirs[0].path)
        else:
            return root


def scan_image_folder(root: str | Path, *, progress: bool = False) -> FolderScan:
    """Scan ``root/<class>/**/<image>``: sub-folders are classes (sorted), every readable image counts.

    Hidden files and folders (``.name``, ``__MACOSX``) are ignored; symbolic links are not followed;
    other files that are not readable images, including files lying directly in ``root``, are skipped
    and listed. Raises ``FileNotFoundError`` for a missing folder and ``ValueError`` when fewer than two
    classes are found or a class has no usable image.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    root = _effective_root(root)
    classes = sorted(e.name for e in os.scandir(root)
                     if e.is_dir(follow_symlinks=False) and not _hidden(e.name))
    scan = FolderScan(root=root, classes=classes)
    scan.skipped += sorted(e.name for e in os.scandir(root) if e.is_file(follow_symlinks=False)
                           and not _hidden(e.name))
    if len(classes) < 2:
        raise ValueError(
            f"found {len(classes)} class folder(s) in {root}; need at least 2 "
            "(one sub-folder per class, each holding that class's images)")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
            files += [(Path(dirpath) / f, label) for f in sorted(filenames) if not _hidden(f)]
    for path, label in tqdm(files, desc="checking images", unit="img", disable=not progress):
        if not path.is_symlink() and _readable_image(path):
            scan.paths.append(path)
            scan.labels.append(label)
        else:
            scan.skipped.append(str(path.relative_to(root)))
    empty = [c for c, n in scan.counts().items() if n == 0]
    if empty:
        raise ValueError(f"class folder(s) without any usable image in {root}: {', '.join(empty)}")
    return scan


def load_image_folder(root: str | Path, *, val_fraction: float = 0.2, seed: int = 0, shots: int | None = None,
                      progress: bool = False, name: str | None = None) -> DatasetSplits:
    """Load a class-per-sub-folder image folder as train/validation splits (stratified, seeded)."""
    scan = scan_image_folder(root, progress=progress)
    source = FileSource(scan.paths, scan.labels, scan.classes)
    return make_splits(name or scan.root.name, source, val_fraction=val_fraction, seed=seed, shots=shots,
                       description=f"images from {scan.root}", skipped=len(scan.skipped),
                       skipped_examples=scan.skipped[:10])
