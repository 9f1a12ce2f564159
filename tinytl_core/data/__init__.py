"""Datasets for short adaptations: procedural primitives, built-in sets, torchvision sets, user folders.

- :mod:`~tinytl_core.data.procedural` -- drawing primitives (shapes, textures, backgrounds, noise);
- :mod:`~tinytl_core.data.builtin` -- the offline sample sets (shapes, textures, digits), cached;
- :mod:`~tinytl_core.data.torchvision_sets` -- the paper's datasets via torchvision;
- :mod:`~tinytl_core.data.folder` / :mod:`~tinytl_core.data.archive` -- user folders and untrusted .zip files;
- :mod:`~tinytl_core.data.dataset` -- sources, splits and the :class:`DatasetSplits` bundle;
- :mod:`~tinytl_core.data.transforms` -- transforms from a backbone's data config;
- :mod:`~tinytl_core.data.registry` -- :func:`list_datasets` and :func:`load_dataset`.
"""

from tinytl_core.data.archive import UnsafeArchiveError, extract_archive
from tinytl_core.data.dataset import DatasetSplits, ImageSplit
from tinytl_core.data.registry import (
    DatasetInfo,
    dataset_info,
    extract_archive_cached,
    list_datasets,
    load_dataset,
)
from tinytl_core.data.torchvision_sets import DatasetUnavailable
from tinytl_core.data.transforms import attach_transforms, build_transform

__all__ = [
    "DatasetInfo", "DatasetSplits", "DatasetUnavailable", "ImageSplit", "UnsafeArchiveError",
    "attach_transforms", "build_transform", "dataset_info", "extract_archive", "extract_archive_cached",
    "list_datasets",
    "load_dataset",
]
