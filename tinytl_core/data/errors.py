"""The one exception family of the data layer: every way a dataset can be unusable is a :class:`DatasetError`.

Callers (the CLI, the app's pages) catch :class:`DatasetError` and show its message, which says what is
wrong and what to do; nothing else escapes from loading a folder, an archive or an image.

- :class:`DatasetError` (a ``ValueError``) -- the base;
- :class:`DatasetNotFoundError` (also a ``FileNotFoundError``) -- no such folder or archive;
  :class:`~tinytl_core.data.torchvision_sets.DatasetUnavailable` -- a named set not on disk and not
  downloadable now;
- :class:`UnsafeArchiveError` -- an archive breaks a safety rule (traversal, link, odd names, too large);
- :class:`BadArchiveError` -- not a .zip, damaged, unsupported compression, or not writable here;
- :class:`ImageFolderError` -- the folder's layout is unusable (fewer than 2 classes, a class without images);
- :class:`UploadQuotaError` -- an upload does not fit in the uploads quota.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset cannot be used as given; the message says what is wrong and what to do."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The folder or archive named does not exist (also a ``FileNotFoundError``)."""


class UnsafeArchiveError(DatasetError):
    """The archive breaks a safety rule (traversal, link, odd or too long names, too large, encrypted)."""


class BadArchiveError(DatasetError):
    """The file is not a usable .zip: damaged, another format, unsupported compression, or not extractable."""


class ImageFolderError(DatasetError):
    """The images are not laid out as one sub-folder per class with usable images in each."""


class UploadQuotaError(DatasetError):
    """The upload does not fit in the uploads quota (``$TINYTL_UPLOAD_QUOTA_MB``)."""
