"""The paper's datasets (and a few more) through torchvision, cached under ``cache_dir("datasets")``.

Downloads show torchvision's progress bar. Without a network nothing hangs and nothing prints a
traceback: with ``$TINYTL_OFFLINE`` set a missing set fails at once, otherwise the host is probed with a
bounded time-out first and every socket read during the download has that time-out too; all failures
become :class:`DatasetUnavailable` with a message that says what to do instead.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tinytl_core.data.dataset import TorchvisionSource
from tinytl_core.data.errors import DatasetNotFoundError
from tinytl_core.paths import cache_dir

DEFAULT_TIMEOUT_S = 15.0
"""Time-out for the reachability probe and for each socket read while downloading."""

ENV_OFFLINE = "TINYTL_OFFLINE"


class DatasetUnavailable(DatasetNotFoundError):
    """A dataset is not on disk and cannot be downloaded now (offline, unreachable, or no download).

    A :class:`~tinytl_core.data.errors.DatasetError` and, as before, a ``FileNotFoundError``."""


@dataclass(frozen=True)
class TorchvisionSet:
    """How to build one torchvision dataset's train and validation splits.

    ``train``/``val`` are keyword arguments for the dataset class; ``val=None`` means the set has a
    single split that is divided with a stratified split instead.
    """

    name: str
    cls: str
    title: str
    description: str
    host: str
    size: str
    num_classes: int
    train: dict[str, Any]
    val: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)
    paper: bool = False
    downloadable: bool = True
    hflip: bool = True


TORCHVISION_SETS: dict[str, TorchvisionSet] = {
    s.name: s
    for s in (
        TorchvisionSet(
            "flowers102",
            "Flowers102",
            "Oxford Flowers-102",
            "102 flower species (train 1020 / val 1020).",
            "www.robots.ox.ac.uk",
            "345 MB",
            102,
            {"split": "train"},
            {"split": "val"},
            paper=True,
        ),
        TorchvisionSet(
            "pets",
            "OxfordIIITPet",
            "Oxford-IIIT Pets",
            "37 cat and dog breeds (trainval 3680 / test 3669).",
            "www.robots.ox.ac.uk",
            "800 MB",
            37,
            {"split": "trainval"},
            {"split": "test"},
            {"target_types": "category"},
            paper=True,
        ),
        TorchvisionSet(
            "aircraft",
            "FGVCAircraft",
            "FGVC-Aircraft",
            "100 aircraft variants (train 3334 / val 3333).",
            "www.robots.ox.ac.uk",
            "2.7 GB",
            100,
            {"split": "train"},
            {"split": "val"},
            {"annotation_level": "variant"},
            paper=True,
        ),
        TorchvisionSet(
            "food101",
            "Food101",
            "Food-101",
            "101 dishes (train 75750 / test 25250).",
            "data.vision.ee.ethz.ch",
            "5 GB",
            101,
            {"split": "train"},
            {"split": "test"},
            paper=True,
        ),
        TorchvisionSet(
            "cifar10",
            "CIFAR10",
            "CIFAR-10",
            "10 object classes, 32 px (train 50000 / test 10000).",
            "www.cs.toronto.edu",
            "170 MB",
            10,
            {"train": True},
            {"train": False},
            paper=True,
        ),
        TorchvisionSet(
            "cifar100",
            "CIFAR100",
            "CIFAR-100",
            "100 object classes, 32 px (train 50000 / test 10000).",
            "www.cs.toronto.edu",
            "170 MB",
            100,
            {"train": True},
            {"train": False},
            paper=True,
        ),
        TorchvisionSet(
            "cars",
            "StanfordCars",
            "Stanford Cars",
            "196 car models. torchvision can no longer "
            "download it: place the files in the cache folder by hand.",
            "",
            "1.9 GB",
            196,
            {"split": "train"},
            {"split": "test"},
            paper=True,
            downloadable=False,
        ),
        TorchvisionSet(
            "dtd",
            "DTD",
            "Describable Textures",
            "47 texture classes (train 1880 / val 1880).",
            "www.robots.ox.ac.uk",
            "625 MB",
            47,
            {"split": "train"},
            {"split": "val"},
        ),
        TorchvisionSet(
            "eurosat",
            "EuroSAT",
            "EuroSAT (RGB)",
            "10 land-use classes from Sentinel-2, 64 px (27000 images, split here).",
            "huggingface.co",
            "90 MB",
            10,
            {},
            None,
        ),
        TorchvisionSet(
            "svhn",
            "SVHN",
            "SVHN",
            "house-number digits, 32 px (train 73257 / test 26032).",
            "ufldl.stanford.edu",
            "400 MB",
            10,
            {"split": "train"},
            {"split": "test"},
            hflip=False,
        ),
        TorchvisionSet(
            "stl10",
            "STL10",
            "STL-10",
            "10 object classes, 96 px (train 5000 / test 8000).",
            "ai.stanford.edu",
            "2.6 GB",
            10,
            {"split": "train"},
            {"split": "test"},
        ),
        TorchvisionSet(
            "gtsrb",
            "GTSRB",
            "German Traffic Signs",
            "43 traffic-sign classes (train 26640 / test 12630).",
            "sid.erda.dk",
            "350 MB",
            43,
            {"split": "train"},
            {"split": "test"},
            hflip=False,
        ),
    )
}
"""Supported torchvision datasets by short name (``paper=True``: used in the TinyTL paper)."""


def offline() -> bool:
    """True when ``$TINYTL_OFFLINE`` asks never to touch the network."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


def torchvision_root(name: str) -> Path:
    """Folder where torchvision keeps dataset ``name``."""
    return cache_dir("datasets") / "torchvision" / name


def _reachable(host: str, timeout: float) -> bool:
    """Probe ``host:443`` in a daemon thread so even a stuck DNS lookup cannot block longer than timeout."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Give every new socket a read time-out (torchvision's urllib calls set none) for the download."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _labels(ds: Any, progress: bool) -> list[int]:
    """Labels of a torchvision dataset without decoding images when it keeps them in an attribute."""
    for attr in ("targets", "_labels", "labels", "y"):
        value = getattr(ds, attr, None)
        if value is not None:
            return [int(v) for v in (value.tolist() if hasattr(value, "tolist") else value)]
    samples = getattr(ds, "_samples", None) or getattr(ds, "samples", None)
    if samples is not None:
        return [int(s[1]) for s in samples]
    return [int(ds[i][1]) for i in tqdm(range(len(ds)), desc="reading labels", disable=not progress)]


def _classes(ds: Any, labels: list[int], n: int) -> list[str]:
    classes = getattr(ds, "classes", None)
    if classes and len(classes) >= max(labels, default=0) + 1:
        return [str(c) for c in classes]
    return [str(i) for i in range(max(n, max(labels, default=0) + 1))]


def _construct(spec: TorchvisionSet, split: dict[str, Any], root: Path, download: bool) -> Any:
    import torchvision.datasets as tvd

    cls: Callable[..., Any] = getattr(tvd, spec.cls)
    return cls(root=str(root), download=download, **spec.extra, **split)


def _open_split(
    spec: TorchvisionSet, split: dict[str, Any], root: Path, *, download: bool, timeout: float
) -> Any:
    """Open one split from disk, downloading it first if allowed and possible."""
    try:
        return _construct(spec, split, root, download=False)
    except (RuntimeError, FileNotFoundError, ValueError, OSError):
        pass  # not on disk (torchvision raises RuntimeError "Dataset not found ..." for most sets)
    where = f"{spec.title} is not in {root}"
    if not spec.downloadable:
        raise DatasetUnavailable(
            f"{where}, and torchvision cannot download it; place its files there "
            "by hand, or use a built-in dataset (shapes, textures, digits) or an image "
            "folder"
        )
    if not download:
        raise DatasetUnavailable(f"{where} and downloading was turned off")
    if offline():
        raise DatasetUnavailable(
            f"{where} and {ENV_OFFLINE} is set (offline); use a built-in dataset "
            "(shapes, textures, digits) or your own image folder"
        )
    if not _reachable(spec.host, timeout):
        raise DatasetUnavailable(
            f"{where} and {spec.host} cannot be reached within {timeout:.0f} s (no "
            "network?); use a built-in dataset (shapes, textures, digits) or your own "
            "image folder"
        )
    try:
        with _socket_timeout(timeout):
            return _construct(spec, split, root, download=True)
    except (urllib.error.URLError, OSError, RuntimeError, ValueError) as exc:
        raise DatasetUnavailable(f"downloading {spec.title} failed: {exc}") from None


def load_torchvision(
    name: str, *, download: bool = True, timeout: float = DEFAULT_TIMEOUT_S, progress: bool = False
) -> tuple[TorchvisionSource, TorchvisionSource | None]:
    """Return (train, validation) sources of torchvision set ``name``; validation is None for one-split sets.

    Raises ``ValueError`` for an unknown name and :class:`DatasetUnavailable` when the data is missing and
    cannot be downloaded now.
    """
    if name not in TORCHVISION_SETS:
        raise ValueError(f"unknown torchvision dataset {name!r}; choose from {', '.join(TORCHVISION_SETS)}")
    spec = TORCHVISION_SETS[name]
    root = torchvision_root(name)
    out: list[TorchvisionSource | None] = []
    for split in (spec.train, spec.val):
        if split is None:
            out.append(None)
            continue
        ds = _open_split(spec, split, root, download=download, timeout=timeout)
        labels = _labels(ds, progress)
        out.append(TorchvisionSource(ds, labels, _classes(ds, labels, spec.num_classes)))
    assert out[0] is not None
    return out[0], out[1]


def is_downloaded(name: str) -> bool:
    """True when the train split of ``name`` opens from the cache without any download."""
    spec = TORCHVISION_SETS[name]
    try:
        _construct(spec, spec.train, torchvision_root(name), download=False)
        return True
    except (RuntimeError, FileNotFoundError, ValueError, OSError):
        return False
