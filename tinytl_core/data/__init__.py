"""Datasets for short adaptations: procedural primitives, built-in sets, torchvision sets, user folders.

- :mod:`~tinytl_core.data.procedural` -- drawing primitives (shapes, textures, backgrounds, noise);
- :mod:`~tinytl_core.data.builtin` -- the offline sample sets (shapes, textures, digits), cached;
- :mod:`~tinytl_core.data.torchvision_sets` -- the paper's datasets via torchvision;
- :mod:`~tinytl_core.data.folder` / :mod:`~tinytl_core.data.archive` -- user folders and untrusted .zip files;
- :mod:`~tinytl_core.data.images` -- any image mode to the right RGB (16-bit scaled, transparency flattened);
- :mod:`~tinytl_core.data.uploads` -- uploaded archives: their names, the uploads quota, eviction;
- :mod:`~tinytl_core.data.errors` -- :class:`DatasetError`, the one exception family of this layer;
- :mod:`~tinytl_core.data.dataset` -- sources, splits and the :class:`DatasetSplits` bundle;
- :mod:`~tinytl_core.data.transforms` -- transforms from a backbone's data config;
- :mod:`~tinytl_core.data.registry` -- :func:`list_datasets` and :func:`load_dataset`.
"""

from tinytl_core.data.archive import extract_archive
from tinytl_core.data.dataset import DatasetSplits, ImageSplit
from tinytl_core.data.errors import (
    BadArchiveError,
    DatasetError,
    DatasetNotFoundError,
    ImageFolderError,
    UnsafeArchiveError,
    UploadQuotaError,
)
from tinytl_core.data.images import to_rgb
from tinytl_core.data.registry import (
    DatasetInfo,
    canonical_dataset_name,
    check_dataset_name,
    dataset_info,
    extract_archive_cached,
    list_datasets,
    load_dataset,
)
from tinytl_core.data.torchvision_sets import DatasetUnavailable
from tinytl_core.data.transforms import attach_transforms, build_transform
from tinytl_core.data.uploads import (
    UploadsUsage,
    dataset_display_name,
    discard_upload,
    kept_uploads,
    save_archive,
    upload_quota_bytes,
)

__all__ = [
    "BadArchiveError",
    "DatasetError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DatasetSplits",
    "DatasetUnavailable",
    "ImageFolderError",
    "ImageSplit",
    "UnsafeArchiveError",
    "UploadQuotaError",
    "UploadsUsage",
    "attach_transforms",
    "build_transform",
    "canonical_dataset_name",
    "check_dataset_name",
    "dataset_display_name",
    "dataset_info",
    "discard_upload",
    "extract_archive",
    "extract_archive_cached",
    "kept_uploads",
    "list_datasets",
    "load_dataset",
    "save_archive",
    "to_rgb",
    "upload_quota_bytes",
]
