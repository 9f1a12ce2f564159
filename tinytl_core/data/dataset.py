"""Image sources, deterministic splits and the train/validation bundle every loader returns.

A *source* holds the images of one dataset (in memory, as files, or a torchvision dataset) with integer
labels known up front, so splitting and few-shot capping never decode an image. An :class:`ImageSplit` is
a torch ``Dataset`` over some indices of a source with a transform; a :class:`DatasetSplits` bundles the
train and validation splits with the class names and what was skipped while reading.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from tinytl_core.data.images import open_rgb, to_rgb

Transform = Callable[[Image.Image], Any]


class ImageSource(Protocol):
    """Read-only, indexable images with labels known without decoding."""

    classes: list[str]
    labels: np.ndarray

    def __len__(self) -> int: ...

    def image(self, index: int) -> Image.Image:
        """Return image ``index`` as an RGB PIL image."""
        ...


class ArraySource:
    """Images held in memory as one ``uint8`` array of shape ``(N, H, W, 3)`` (the built-in sets)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.classes = images, np.asarray(labels, dtype=np.int64), list(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])


class FileSource:
    """Image files on disk, decoded and converted to RGB on access (user folders and archives).

    Every image mode is converted by :func:`tinytl_core.data.images.to_rgb` (16-bit scaled, not clipped;
    transparency composited). ``lease`` keeps an extracted upload from being evicted while this source is
    alive (see :mod:`tinytl_core.data.uploads`).
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], classes: Sequence[str]):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths, self.labels, self.classes = list(paths), np.asarray(labels, dtype=np.int64), list(classes)
        self.lease: Any = None

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        return open_rgb(self.paths[index])


class TorchvisionSource:
    """A torchvision dataset (created with ``transform=None``) whose labels are read once up front."""

    def __init__(self, dataset: torch.utils.data.Dataset, labels: Sequence[int], classes: Sequence[str]):
        self.dataset, self.labels, self.classes = dataset, np.asarray(labels, dtype=np.int64), list(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        img = self.dataset[index][0]
        if not isinstance(img, Image.Image):  # a few sets return arrays or tensors
            img = Image.fromarray(np.asarray(img))
        return to_rgb(img)


class ImageSplit(torch.utils.data.Dataset):
    """A torch ``Dataset`` over ``indices`` of a source: ``(transform(image), label)`` pairs."""

    def __init__(self, source: ImageSource, indices: Sequence[int], transform: Transform | None = None):
        self.source, self.indices, self.transform = source, np.asarray(indices, dtype=np.int64), transform

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        """Labels of this split, in order."""
        return self.source.labels[self.indices]

    def image(self, k: int) -> Image.Image:
        """The untransformed RGB image of item ``k`` (for previews)."""
        return self.source.image(int(self.indices[k]))

    def __getitem__(self, k: int) -> tuple[Any, int]:
        img = self.image(k)
        return (self.transform(img) if self.transform is not None else img), int(self.labels[k])

    def class_counts(self) -> np.ndarray:
        """Number of items per class (length = number of classes)."""
        return np.bincount(self.labels, minlength=len(self.source.classes))


@dataclass
class DatasetSplits:
    """What every dataset loader returns: train and validation splits plus reading notes.

    ``skipped`` counts files that could not be used (unreadable, not images, unsupported image modes);
    ``skipped_reasons`` counts them by reason and ``skipped_examples`` names a few of them so a user can
    find the culprits. ``hflip`` says whether horizontal flips preserve the
    label (false for digits), ``center_crop`` whether objects are centred (false for the built-in sets,
    whose objects may sit near an edge).
    """

    name: str
    classes: list[str]
    train: ImageSplit
    val: ImageSplit
    description: str = ""
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    hflip: bool = True
    center_crop: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def set_transforms(self, train: Transform | None, val: Transform | None) -> None:
        """Attach the (backbone-specific) transforms to both splits."""
        self.train.transform, self.val.transform = train, val

    def summary(self) -> str:
        """One line: classes, images per split, skipped files and why."""
        text = (
            f"{self.name}: {self.num_classes} classes, {len(self.train)} train / {len(self.val)} "
            f"validation images"
        )
        if self.skipped:
            reasons = sorted(self.skipped_reasons.items(), key=lambda kv: (-kv[1], kv[0]))
            why = ", ".join(f"{n} {reason}" for reason, n in reasons) or "unreadable or not images"
            text += f", {self.skipped} file(s) skipped ({why})"
        return text


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class into train/validation, deterministically from ``seed``.

    Each class with at least 2 items puts ``round(n * val_fraction)`` of them (at least 1, at most n-1)
    into validation, so every class is seen in both splits when possible.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, int(round(len(idx) * val_fraction))))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def cap_per_class(indices: np.ndarray, labels: np.ndarray, shots: int | None, seed: int) -> np.ndarray:
    """Keep at most ``shots`` randomly chosen indices per class (few-shot); ``None`` keeps all."""
    if shots is None:
        return np.asarray(indices)
    if shots < 1:
        raise ValueError(f"shots (images per class) must be >= 1, got {shots}")
    rng = np.random.default_rng(seed + 1)  # independent of the split's permutation
    indices = np.asarray(indices)
    keep = []
    for c in np.unique(labels[indices]):
        idx = indices[labels[indices] == c]
        keep.append(idx[rng.permutation(len(idx))[:shots]])
    return np.sort(np.concatenate(keep))


def make_splits(
    name: str,
    source: ImageSource,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    shots: int | None = None,
    **notes: Any,
) -> DatasetSplits:
    """Split one source into train/validation (stratified, seeded) and cap the train images per class."""
    train, val = stratified_split(source.labels, val_fraction, seed)
    train = cap_per_class(train, source.labels, shots, seed)
    return DatasetSplits(
        name=name,
        classes=list(source.classes),
        train=ImageSplit(source, train),
        val=ImageSplit(source, val),
        **notes,
    )
