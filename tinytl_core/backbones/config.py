"""The input a backbone expects: :func:`data_config` resolves size, mean, std, crop and interpolation."""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass

import timm
import torch
from torch import nn

from tinytl_core.backbones.builder import create_backbone, meta_backbone
from tinytl_core.backbones.catalog import backbone_info
from tinytl_core.backbones.local import LOCAL_BACKBONES


@dataclass(frozen=True)
class DataConfig:
    """Input preprocessing a backbone expects (from its timm pretrained config)."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    interpolation: str

    @property
    def resolution(self) -> int:
        """The (square) input resolution in pixels."""
        return int(self.input_size[-1])


def data_config(model_or_name: nn.Module | str) -> DataConfig:
    """Resolve input size, mean, std, crop and interpolation from timm's pretrained config.

    A name is built on the meta device first (shapes only), so this costs no memory for any size.
    """
    model = meta_backbone(model_or_name) if isinstance(model_or_name, str) else model_or_name
    cfg = timm.data.resolve_model_data_config(model)
    return DataConfig(
        input_size=tuple(int(v) for v in cfg["input_size"]),  # type: ignore[arg-type]
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(cfg.get("interpolation", "bilinear")),
    )


@functools.lru_cache(maxsize=2048)
def own_resolution(name: str) -> int:
    """``data_config(name).resolution`` without building the model where timm registers the name's
    pretrained config (its ``input_size``, what the built model resolves to); a shipped backbone or an
    unregistered name is built on the meta device, as :func:`data_config` does. Milliseconds instead of
    a model build per name: the CLI looks up the own resolution of every backbone it plans."""
    if name not in LOCAL_BACKBONES:
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is not None and cfg.input_size:
            return int(cfg.input_size[-1])
    return data_config(name).resolution


@functools.lru_cache(maxsize=256)
def feature_stride(name: str) -> int | None:
    """How many times smaller than the input the backbone's last feature map is (32 for resnet50 and
    MobileNetV2), from one shape-only forward at its own resolution on the ``meta`` device; None when its
    features are not a spatial map (e.g. a ViT's tokens) or the model cannot say."""
    try:
        model = meta_backbone(name)
        size = data_config(model).resolution
        with torch.no_grad():
            out = model.forward_features(torch.empty(1, 3, size, size, device="meta"))
    except (RuntimeError, ValueError, AssertionError, TypeError, AttributeError):
        return None
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        return None
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and info and isinstance(info[-1], dict) and info[-1].get("reduction"):
        return int(info[-1]["reduction"])  # timm's declared reduction (exact; a forward at odd sizes rounds)
    channels = getattr(model, "num_features", None)
    height = out.shape[1] if channels == out.shape[-1] and channels != out.shape[1] else out.shape[2]
    return max(1, round(size / int(height))) if height else None


def small_resolution_warning(name: str, resolution: int) -> str | None:
    """A warning when ``resolution`` px is below the size at which ``name``'s last stage is 1x1 (its
    :func:`feature_stride`): the network still runs, but its last stages see no spatial extent at all, so
    what it learns says little. None when the size is sensible (or the backbone's features are not maps).
    Shape-only and cached per backbone: cheap to call on every page run."""
    stride = feature_stride(name)
    if stride is None or resolution >= stride:
        return None
    default = data_config(name).resolution
    return (
        f"{resolution} px is below {stride} px, the size at which {name}'s last stage is 1x1 (it "
        f"reduces its input {stride}x): its feature maps collapse to 1x1 early and the last stages see "
        f"no spatial extent. Use at least {stride} px (its default is {default} px)."
    )


RESOLUTION_STEP = 16
"""Granularity of the smallest-working-resolution search."""


_PLAIN_REASONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"input size per channel: \((\d+) x (\d+)\)\. Kernel size: \((\d+) x (\d+)\)"),
        "a layer's {2}x{3} kernel (or patch) is larger than the {0}x{1} feature map it gets",
    ),
    (re.compile(r"Output size is too small"), "a pooling layer's output would be empty"),
    (
        re.compile(r"Input (?:height|width|image size) \((\d+)\) doesn't match model \((\d+)\)"),
        "it is built for {1} px inputs",
    ),
)
"""PyTorch's and timm's shape errors, said in words a newcomer can act on (anything else is quoted)."""


def known_shape_error(text: str) -> str | None:
    """``text`` (an error from a forward pass) in plain words when it holds a known shape error: a kernel
    larger than its feature map, an empty pooling output, a model built for one size; else None."""
    for pattern, plain in _PLAIN_REASONS:
        match = pattern.search(text)
        if match:
            return plain.format(*match.groups())
    return None


def plain_shape_error(text: str) -> str:
    """:func:`known_shape_error`, or ``text`` framed as a failing forward pass."""
    return known_shape_error(text) or f"its forward pass fails ({text})"


@functools.lru_cache(maxsize=512)
def _runs_at(backbone: str, resolution: int) -> str | None:
    """None when one sample of ``resolution`` px goes through ``backbone`` (on ``meta``), else why not (in
    plain words, :func:`plain_shape_error`)."""
    try:
        with warnings.catch_warnings():  # e.g. "zero-element tensors": the refusal says what matters
            warnings.simplefilter("ignore")
            model, _ = create_backbone(backbone, 10, False, device="meta", resolution=resolution)
            model.eval()  # batch statistics of one sample are no concern here: only sizes
            with torch.no_grad():
                model(torch.empty(1, 3, resolution, resolution, device="meta"))
    except (RuntimeError, ValueError, AssertionError, TypeError) as exc:
        return plain_shape_error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return None


def smallest_resolution(backbone: str, upper: int | None = None) -> int | None:
    """The smallest multiple of :data:`RESOLUTION_STEP` px (up to ``upper``, default: the backbone's own
    input size) at which ``backbone`` runs, found by bisection; None if it does not even run at ``upper``."""
    upper = upper or data_config(backbone).resolution
    hi = max(1, upper // RESOLUTION_STEP)
    if _runs_at(backbone, hi * RESOLUTION_STEP) is not None:
        return None
    lo = 0  # multiples <= lo are known (or assumed) not to work
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _runs_at(backbone, mid * RESOLUTION_STEP) is None:
            hi = mid
        else:
            lo = mid
    return hi * RESOLUTION_STEP


def resolution_problem(backbone: str, resolution: int) -> str | None:
    """None when ``backbone`` accepts ``resolution`` px inputs; otherwise why not and what would work.

    Checked with a shape-only forward on the ``meta`` device (no memory, well under a second for common
    models). Raises ValueError for an unknown backbone.
    """
    backbone_info(backbone)  # unknown name -> ValueError with close matches
    if resolution < 8:
        return f"{resolution} px is too small: use at least 8 px"
    error = _runs_at(backbone, resolution)
    if error is None:
        return None
    default = data_config(backbone).resolution
    smallest = smallest_resolution(backbone, max(default, resolution))
    hint = f" The smallest multiple of {RESOLUTION_STEP} px that works is {smallest} px." if smallest else ""
    return (
        f"{resolution} px is too small (or unsupported) for {backbone} (its default is {default} px): "
        f"{error}.{hint}"
    )
