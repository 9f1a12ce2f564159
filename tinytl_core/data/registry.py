"""One entry point for every dataset: the list of known sets and :func:`load_dataset`.

A dataset is named by a built-in name (``shapes``, ``textures``, ``digits``), a torchvision name
(``cifar10``, ``flowers102``, ...), a folder with one sub-folder per class, or a ``.zip`` of such a folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tinytl_core.data.archive import extract_archive
from tinytl_core.data.builtin import BUILTIN_SETS, load_builtin
from tinytl_core.data.dataset import DatasetSplits, ImageSplit, cap_per_class, make_splits
from tinytl_core.data.folder import load_image_folder
from tinytl_core.data.torchvision_sets import DEFAULT_TIMEOUT_S, TORCHVISION_SETS, load_torchvision
from tinytl_core.paths import cache_dir


@dataclass(frozen=True)
class DatasetInfo:
    """One row of :func:`list_datasets`. ``kind`` is ``builtin`` or ``torchvision``."""

    name: str
    title: str
    kind: str
    num_classes: int
    description: str
    download_size: str = ""
    paper: bool = False
    downloadable: bool = True


def list_datasets(kind: str | None = None) -> list[DatasetInfo]:
    """Every named dataset (built-in first, then torchvision); ``kind`` filters by kind."""
    rows = [DatasetInfo(s.name, s.title, "builtin", 10, s.description) for s in BUILTIN_SETS.values()]
    rows += [DatasetInfo(s.name, s.title, "torchvision", s.num_classes, s.description, s.size, s.paper,
                         s.downloadable) for s in TORCHVISION_SETS.values()]
    if kind is not None:
        if kind not in ("builtin", "torchvision"):
            raise ValueError(f"unknown dataset kind {kind!r}; use builtin or torchvision")
        rows = [r for r in rows if r.kind == kind]
    return rows


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a named dataset (``ValueError`` listing the names if unknown)."""
    for row in list_datasets():
        if row.name == name.lower():
            return row
    raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(r.name for r in list_datasets())} "
                     "or give a folder / .zip of class sub-folders")


def extract_archive_cached(archive: str | Path | bytes) -> Path:
    """Extract an untrusted .zip (a path, or the bytes of an upload) once, with every safety rule of
    :func:`~tinytl_core.data.archive.extract_archive`; the same archive again reuses ``uploads/zip-<sha256>``.
    """
    digest = hashlib.sha256()
    if isinstance(archive, bytes):
        digest.update(archive)
    else:
        if not Path(archive).is_file():
            raise FileNotFoundError(f"archive not found: {archive}")
        with open(archive, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    final = cache_dir("uploads") / f"zip-{digest.hexdigest()[:24]}"
    if final.is_dir():
        return final
    fresh = extract_archive(io.BytesIO(archive) if isinstance(archive, bytes) else archive)
    try:
        os.rename(fresh, final)  # atomic; fails if a concurrent extraction won the race
    except OSError:
        shutil.rmtree(fresh, ignore_errors=True)
        if not final.is_dir():
            raise
    return final


def load_dataset(name: str | Path, *, val_fraction: float = 0.2, seed: int = 0, shots: int | None = None,
                 val_cap: int | None = None, download: bool = True, timeout: float = DEFAULT_TIMEOUT_S,
                 progress: bool = False) -> DatasetSplits:
    """Load a dataset as deterministic train/validation splits (transforms are attached later).

    Args:
        name: built-in or torchvision name, an image folder, or a .zip of one.
        val_fraction: share of each class held out for validation (sets without an official split).
        seed: seed of the split and of the few-shot selection.
        shots: keep at most this many training images per class (few-shot); None keeps all.
        val_cap: keep at most this many validation images per class (faster evaluation); None keeps all.
        download: allow torchvision downloads.
        timeout: network time-out in seconds for torchvision downloads.
        progress: show progress bars (building, checking images).
    """
    key = str(name)
    if key.lower() in BUILTIN_SETS:
        spec = BUILTIN_SETS[key.lower()]
        splits = make_splits(spec.name, load_builtin(spec.name, progress=progress), val_fraction=val_fraction,
                             seed=seed, shots=shots, description=spec.description, hflip=spec.hflip,
                             center_crop=False)
    elif key.lower() in TORCHVISION_SETS:
        spec_tv = TORCHVISION_SETS[key.lower()]
        train, val = load_torchvision(spec_tv.name, download=download, timeout=timeout, progress=progress)
        if val is None:
            splits = make_splits(spec_tv.name, train, val_fraction=val_fraction, seed=seed, shots=shots,
                                 description=spec_tv.description, hflip=spec_tv.hflip)
        else:
            train_idx = cap_per_class(range(len(train)), train.labels, shots, seed)
            splits = DatasetSplits(spec_tv.name, train.classes, ImageSplit(train, train_idx),
                                   ImageSplit(val, range(len(val))), description=spec_tv.description,
                                   hflip=spec_tv.hflip)
    else:
        path = Path(key).expanduser()
        if path.is_file() and path.suffix.lower() == ".zip":
            folder = extract_archive_cached(path)
            splits = load_image_folder(folder, val_fraction=val_fraction, seed=seed, shots=shots,
                                       progress=progress, name=path.stem)
        elif path.is_dir():
            splits = load_image_folder(path, val_fraction=val_fraction, seed=seed, shots=shots,
                                       progress=progress)
        elif path.exists():
            raise ValueError(f"{path} is neither a folder nor a .zip archive")
        elif "/" in key or os.sep in key or path.suffix.lower() == ".zip":
            raise FileNotFoundError(f"no such image folder or .zip archive: {path}")
        else:
            dataset_info(key)  # raises the "unknown dataset" error listing valid names
            raise AssertionError("unreachable")
    if val_cap is not None:
        splits.val.indices = cap_per_class(splits.val.indices, splits.val.source.labels, val_cap, seed)
    return splits
