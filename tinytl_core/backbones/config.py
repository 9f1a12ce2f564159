"""The input a backbone expects: :func:`data_config` resolves size, mean, std, crop and interpolation."""

from __future__ import annotations

from dataclasses import dataclass

import timm
from torch import nn

from tinytl_core.backbones.builder import meta_backbone


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
