"""One entry point for every dataset: the list of known sets and :func:`load_dataset`.

A dataset is named by a built-in name (``shapes``, ``textures``, ``digits``), a torchvision name
(``cifar10``, ``flowers102``, ...), a folder with one sub-folder per class, or a ``.zip`` of such a folder.
Whatever is wrong with the name, the folder, the archive or its images comes back as a
:class:`~tinytl_core.data.errors.DatasetError` (a ``ValueError``; the not-found kinds are also
``FileNotFoundError``) whose message says what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tinytl_core import limits as L
from tinytl_core.data.builtin import BUILTIN_SETS, load_builtin
from tinytl_core.data.dataset import DatasetSplits, ImageSplit, cap_per_class, make_splits
from tinytl_core.data.errors import DatasetError, DatasetNotFoundError
from tinytl_core.data.folder import load_image_folder
from tinytl_core.data.torchvision_sets import DEFAULT_TIMEOUT_S, TORCHVISION_SETS, load_torchvision
from tinytl_core.data.uploads import (
    dataset_display_name,
    discard_extraction,
    extract_archive_cached,
    extract_leased,
)

__all__ = ["DatasetInfo", "dataset_info", "extract_archive_cached", "list_datasets", "load_dataset"]


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
    rows += [
        DatasetInfo(
            s.name, s.title, "torchvision", s.num_classes, s.description, s.size, s.paper, s.downloadable
        )
        for s in TORCHVISION_SETS.values()
    ]
    if kind is not None:
        if kind not in ("builtin", "torchvision"):
            raise ValueError(f"unknown dataset kind {kind!r}; use builtin or torchvision")
        rows = [r for r in rows if r.kind == kind]
    return rows


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a named dataset (``DatasetError`` listing the names if unknown)."""
    for row in list_datasets():
        if row.name == name.lower():
            return row
    raise DatasetError(
        f"unknown dataset {name!r}; choose from {', '.join(r.name for r in list_datasets())} "
        "or give a folder / .zip of class sub-folders"
    )


def load_dataset(
    name: str | Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    shots: int | None = None,
    val_cap: int | None = None,
    download: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: bool = False,
) -> DatasetSplits:
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
    # every number checked first, naming the argument: a bad one used to fail deep in NumPy
    # ("slice indices must be integers") or under another name
    for value, limit, optional in (
        (val_fraction, L.VALIDATION_FRACTION, False),
        (seed, L.SEED, False),
        (shots, L.IMAGES_PER_CLASS, True),
        (val_cap, L.VALIDATION_IMAGES_PER_CLASS, True),
    ):
        if not (optional and value is None):
            limit.check(value)
    key = str(name)
    if key.lower() in BUILTIN_SETS:
        spec = BUILTIN_SETS[key.lower()]
        splits = make_splits(
            spec.name,
            load_builtin(spec.name, progress=progress),
            val_fraction=val_fraction,
            seed=seed,
            shots=shots,
            description=spec.description,
            hflip=spec.hflip,
            center_crop=False,
        )
    elif key.lower() in TORCHVISION_SETS:
        spec_tv = TORCHVISION_SETS[key.lower()]
        train, val = load_torchvision(spec_tv.name, download=download, timeout=timeout, progress=progress)
        if val is None:
            splits = make_splits(
                spec_tv.name,
                train,
                val_fraction=val_fraction,
                seed=seed,
                shots=shots,
                description=spec_tv.description,
                hflip=spec_tv.hflip,
            )
        else:
            train_idx = cap_per_class(range(len(train)), train.labels, shots, seed)
            splits = DatasetSplits(
                spec_tv.name,
                train.classes,
                ImageSplit(train, train_idx),
                ImageSplit(val, range(len(val))),
                description=spec_tv.description,
                hflip=spec_tv.hflip,
            )
    else:
        path, kind = _local(key)
        if kind == "zip":
            folder, lease = extract_leased(path)
            try:
                splits = load_image_folder(
                    folder,
                    val_fraction=val_fraction,
                    seed=seed,
                    shots=shots,
                    progress=progress,
                    name=Path(dataset_display_name(str(path))).stem,
                )
            except DatasetError:
                lease.release()
                discard_extraction(folder)  # refused: nothing of it is kept
                raise
            splits.train.source.lease = lease  # no eviction while these splits are alive
        elif kind == "dir":
            splits = load_image_folder(
                path, val_fraction=val_fraction, seed=seed, shots=shots, progress=progress
            )
        elif kind == "other":
            raise DatasetError(f"{path} is neither a folder nor a .zip archive")
        elif "/" in key or os.sep in key or path.suffix.lower() == ".zip":
            raise DatasetNotFoundError(f"no such image folder or .zip archive: {path}")
        else:
            dataset_info(key)  # raises the "unknown dataset" error listing valid names
            raise AssertionError("unreachable")
    if val_cap is not None:
        splits.val.indices = cap_per_class(splits.val.indices, splits.val.source.labels, val_cap, seed)
    return splits


def canonical_dataset_name(name: str | Path) -> str | Path:
    """A built-in or torchvision set's own name for ``name`` in any letter case (``SHAPES`` is
    ``shapes``, as :func:`load_dataset` reads it); anything else (a folder, a .zip) as given. One
    configuration, one key: a sweep of ``shapes,SHAPES`` trained the same set twice."""
    if isinstance(name, str):
        for sets in (BUILTIN_SETS, TORCHVISION_SETS):
            spec = sets.get(name.lower())
            if spec is not None:
                return spec.name
    return name


def check_dataset_name(name: str | Path) -> None:
    """Raise the error :func:`load_dataset` would raise for a name that cannot be a dataset (unknown name,
    missing path, a file that is neither a folder nor a .zip), without loading anything: cheap, so
    commands check it before any slow work. A name that passes may still fail to load (bad content,
    a torchvision set offline)."""
    key = str(name)
    if key.lower() in BUILTIN_SETS or key.lower() in TORCHVISION_SETS:
        return
    path, kind = _local(key)
    if kind == "other":
        raise DatasetError(f"{path} is neither a folder nor a .zip archive")
    if kind == "missing":
        if "/" in key or os.sep in key or path.suffix.lower() == ".zip":
            raise DatasetNotFoundError(f"no such image folder or .zip archive: {path}")
        dataset_info(key)


def _local(key: str) -> tuple[Path, str]:
    """What a local dataset name points to: ``zip``, ``dir``, ``other`` (exists) or ``missing``."""
    if not key.strip():  # Path("") is the current folder: never a dataset by accident
        raise DatasetNotFoundError("no dataset given: give a built-in name, an image folder or a .zip")
    try:
        path = Path(key).expanduser()
        if path.is_file() and path.suffix.lower() == ".zip":
            return path, "zip"
        if path.is_dir():
            return path, "dir"
        return path, "other" if path.exists() else "missing"
    except (OSError, ValueError, RuntimeError) as exc:  # too long, NUL byte, unknown ~user, no permission
        shown = key if len(key) <= 80 else f"{key[:50]}…{key[-20:]} ({len(key)} characters)"
        reason = getattr(exc, "strerror", None) or str(exc)
        raise DatasetNotFoundError(
            f"no usable image folder or .zip archive at {shown!r} ({reason}); "
            "give a built-in name, a folder or a .zip"
        ) from None
