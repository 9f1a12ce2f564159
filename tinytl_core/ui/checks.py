"""Input checks the app runs before heavy work, each returning a message fit to show to the user.

- :func:`resolution_problem` -- does the backbone run at this input size at all (shape-only, on ``meta``)?
- :func:`memory_problem` -- would a step need more memory than the device has free, by the model's own
  estimate?
- :func:`run_problems` -- everything that stops an adaptation run before it starts (modes, upload, size,
  applicability of each mode, memory fit); :func:`setup_problems` -- what stops a run once its model
  is built (e.g. batch 1 with BatchNorm), checked on ``meta`` before it is queued;
- :func:`pretrained_availability` -- can pretrained weights be had now? (``backbones.weights_availability``)
- :func:`save_upload` / :func:`load_upload` -- keep an uploaded .zip of class folders and load it, turning
  every way it can be wrong (empty, not a zip, unsafe, too few classes, over the uploads quota) into a
  :class:`~tinytl_core.data.DatasetError` (a ``ValueError``); a refused upload is deleted at once.
  ``tinytl_core.data.kept_uploads().message()`` says what the server keeps, and
  ``tinytl_core.data.dataset_display_name`` turns a stored dataset value into the upload's own name.
"""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from tinytl_core.adapt import AdaptConfig, check_setup
from tinytl_core.backbones import WeightsAvailability as WeightsAvailability  # re-exported for the app
from tinytl_core.backbones import weights_availability

# The resolution checks live with the backbones (the CLI uses them too); re-exported for the app.
# small_resolution_warning: the run works but the feature maps collapse to 1x1 (say so, do not refuse).
from tinytl_core.backbones.config import RESOLUTION_STEP as RESOLUTION_STEP
from tinytl_core.backbones.config import resolution_problem as resolution_problem
from tinytl_core.backbones.config import small_resolution_warning as small_resolution_warning
from tinytl_core.backbones.config import smallest_resolution as smallest_resolution
from tinytl_core.data import (
    BadArchiveError,
    DatasetError,
    UploadQuotaError,
    dataset_display_name,
    discard_upload,
    kept_uploads,
    load_dataset,
)
from tinytl_core.data.uploads import display_filename, safe_stem, save_archive
from tinytl_core.memory import memory_problem as memory_problem  # re-exported for the pages
from tinytl_core.modes import MODES
from tinytl_core.ui.text import sentences


def run_problems(
    *,
    backbone: str,
    resolution: int,
    batch_size: int,
    modes: Sequence[str],
    dataset_ready: bool,
    resolution_problem: str | None,
    mode_table: Callable[[], pd.DataFrame],
    device: str | torch.device,
) -> list[str]:
    """Everything that stops an adaptation run before it starts, as messages for the user (empty: go).

    Args:
        backbone, resolution, batch_size: the sidebar's settings.
        modes: the modes chosen (at least one is needed).
        dataset_ready: False while an upload is chosen but no valid archive is there yet.
        resolution_problem: :func:`resolution_problem` of this backbone and size (the page caches it).
        mode_table: returns the :func:`tinytl_core.comparisons.compare_modes` table at these settings
            (called only when the rest is fine; the page caches it); ValueError / RuntimeError means the
            backbone cannot be modelled.
        device: where the run would train (for the memory check).
    """
    errors: list[str] = []
    if not modes:
        errors.append("Choose at least one mode.")
    if not dataset_ready:
        errors.append("Upload a valid .zip of class folders first (or choose a built-in dataset).")
    if resolution_problem:
        errors.append(resolution_problem)
    if errors:
        return errors
    try:
        table = mode_table()
    except (ValueError, RuntimeError) as exc:
        return [f"Cannot model {backbone} at {resolution} px, batch {batch_size}: {exc}"]
    chosen = table.set_index("mode").loc[list(modes)]
    for mode, reason in chosen.loc[~chosen["applicable"], "reason"].items():
        errors.append(f"{MODES[mode].title} does not apply to {backbone}: {reason}. Deselect it.")
    if not errors:
        fit = memory_problem(
            chosen["total_stock_bytes"].max(),
            device,
            what=f"Training {backbone} at batch {batch_size}, {resolution} px",
        )
        errors += [fit] if fit else []
    return errors


def setup_problems(configs: Sequence[AdaptConfig]) -> list[str]:
    """What stops each of ``configs`` once its model is built, as messages for the user (empty: go):
    :func:`tinytl_core.adapt.check_setup` of each (its model on ``meta``, one forward: e.g. batch 1 with
    BatchNorm at a size where a feature map shrinks to 1x1), so the run is refused here rather than
    failing in a worker after its dataset loaded."""
    errors = []
    for config in configs:
        try:
            check_setup(config)
        except ValueError as exc:  # ModeNotApplicable included
            errors.append(sentences(f"{MODES[config.mode].title}: {exc}"))
    return errors


pretrained_availability = weights_availability
"""Whether pretrained weights can be had now, without downloading (see ``backbones.weights_availability``)."""


_safe_stem = safe_stem  # the upload's file-system-safe stem (kept for callers of the old name)


def save_upload(filename: str, data: bytes) -> Path:
    """Keep an uploaded archive under ``cache_dir("uploads")`` and return its path.

    The name is ``<sanitised stem>-<sha256 prefix>.zip``, so the same upload is kept once; the user's own
    file name is kept beside it for labels (:func:`tinytl_core.data.dataset_display_name`). Uploads stay
    within the uploads quota (least recently used ones are evicted). Raises
    :class:`~tinytl_core.data.DatasetError` (a ``ValueError``) for an empty file, a name not ending in
    ``.zip``, content that is not a zip archive, or an upload that does not fit in the quota.
    """
    shown = repr(display_filename(filename))
    if not data:
        raise BadArchiveError(f"the uploaded file {shown} is empty")
    if not filename.lower().endswith(".zip"):
        raise BadArchiveError(f"{shown} is not a .zip file: upload a .zip of class folders")
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise BadArchiveError(f"{shown} is not a valid .zip archive (damaged or another format)")
    return save_archive(filename, data)


def load_upload(path: str | Path, **kwargs):
    """Load a saved upload with :func:`tinytl_core.data.load_dataset` (``kwargs`` passed on).

    Every problem with the archive's content (unsafe entries, odd names, fewer than 2 classes, a class
    without images, damaged data, over the quota) comes back as a :class:`~tinytl_core.data.DatasetError`
    (a ``ValueError``) whose message names the upload as the user called it and says what is wrong; the
    refused upload and anything extracted from it are deleted at once.
    """
    try:
        return load_dataset(path, **kwargs)
    except (ValueError, FileNotFoundError) as exc:
        label = dataset_display_name(str(path)) or Path(path).name
        discard_upload(path)
        kind = type(exc) if isinstance(exc, DatasetError) else DatasetError
        raise kind(f"cannot use {label}: {exc}") from None


@dataclass(frozen=True)
class UploadCheck:
    """The outcome of :func:`check_upload`: the saved archive's ``path`` and the dataset's ``summary``, or
    the ``error`` that refused it; ``kept`` says what the server keeps (``kept_uploads().message()``)."""

    path: Path | None
    summary: str = ""
    error: str = ""
    kept: str = ""


_CHECKED: OrderedDict[str, UploadCheck] = OrderedDict()
_CHECKED_LOCK = threading.Lock()
CHECKED_UPLOADS = 64
"""How many upload outcomes :func:`check_upload` remembers (by content hash and name)."""


def check_upload(filename: str, data: bytes) -> UploadCheck:
    """Save and load an uploaded archive once per content: :func:`save_upload` then :func:`load_upload`.

    The outcome is remembered by the upload's SHA-256 (and file name), so the page's reruns do not save,
    extract and refuse the same archive again and again. A refusal for room (the uploads quota) is not
    remembered: it may fit later. A remembered success whose archive was since evicted is checked again.
    """
    key = f"{hashlib.sha256(data).hexdigest()}:{filename}"
    with _CHECKED_LOCK:
        known = _CHECKED.get(key)
        if known is not None:
            _CHECKED.move_to_end(key)
    if known is None or (known.path is not None and not known.path.exists()):
        try:
            path = save_upload(filename, data)
            known = UploadCheck(path, summary=load_upload(path).summary())
        except UploadQuotaError as exc:
            return UploadCheck(None, error=str(exc), kept=kept_uploads().message())
        except DatasetError as exc:
            known = UploadCheck(None, error=str(exc))
        with _CHECKED_LOCK:
            _CHECKED[key] = known
            while len(_CHECKED) > CHECKED_UPLOADS:
                _CHECKED.popitem(last=False)
    return UploadCheck(known.path, known.summary, known.error, kept_uploads().message())
