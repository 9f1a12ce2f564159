"""Image transforms built from a backbone's timm data config (size, mean, std, crop), resolution overridable.

Training uses light augmentation that suits short adaptations (random resized crop with a mild scale
range, optional horizontal flip); evaluation resizes and, for natural photos, centre-crops as timm does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torchvision import transforms as T

from tinytl_core.data.dataset import DatasetSplits

_INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


def _field(config: Any, name: str) -> Any:
    """Read ``name`` from a DataConfig-like object or a timm data-config dict."""
    if isinstance(config, Mapping):
        return config[name]
    return getattr(config, name)


def resolve_resolution(config: Any, resolution: int | None) -> int:
    """The square training resolution: ``resolution`` if given, else the config's input height."""
    if resolution is not None:
        if int(resolution) < 8:
            raise ValueError(f"resolution must be >= 8 px, got {resolution}")
        return int(resolution)
    return int(_field(config, "input_size")[-1])


def build_transform(
    config: Any,
    *,
    train: bool,
    resolution: int | None = None,
    augment: bool = True,
    hflip: bool = True,
    center_crop: bool = True,
) -> T.Compose:
    """Build a torchvision transform from a backbone data config.

    ``config`` is a :class:`tinytl_core.backbones.DataConfig` or a timm data-config dict (``input_size``,
    ``mean``, ``std``, ``crop_pct``, ``interpolation``). ``resolution`` overrides the input size.
    ``augment`` enables random resized crops (scale 0.6-1) in training; ``hflip`` adds horizontal flips
    (turn off when flipping changes the class, as for digits); ``center_crop=False`` resizes the whole
    image instead of cropping its centre at evaluation (for sets whose objects may touch the border).
    """
    size = resolve_resolution(config, resolution)
    interp = _INTERPOLATION.get(str(_field(config, "interpolation")), T.InterpolationMode.BICUBIC)
    mean = tuple(float(v) for v in _field(config, "mean"))
    std = tuple(float(v) for v in _field(config, "std"))
    steps: list[Any]
    if train and augment:
        steps = [T.RandomResizedCrop(size, scale=(0.6, 1.0), interpolation=interp, antialias=True)]
        if hflip:
            steps.append(T.RandomHorizontalFlip())
    elif center_crop:
        crop_pct = float(_field(config, "crop_pct") or 1.0)
        resize = T.Resize(int(round(size / crop_pct)), interpolation=interp, antialias=True)
        steps = [resize, T.CenterCrop(size)]
    else:
        steps = [T.Resize((size, size), interpolation=interp, antialias=True)]
    steps += [T.PILToTensor(), T.ConvertImageDtype(torch.float32), T.Normalize(mean, std)]
    return T.Compose(steps)


def attach_transforms(
    splits: DatasetSplits, config: Any, *, resolution: int | None = None, augment: bool = True
) -> int:
    """Attach train/eval transforms for a backbone to both splits, honouring the set's flip/crop notes.

    Returns the resolution used.
    """
    size = resolve_resolution(config, resolution)
    common = {"resolution": size, "hflip": splits.hflip, "center_crop": splits.center_crop}
    splits.set_transforms(
        build_transform(config, train=True, augment=augment, **common),
        build_transform(config, train=False, **common),
    )
    return size
