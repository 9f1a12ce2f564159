"""Backbones pretrained by this project and shipped with the package: they load with no network.

- :class:`LocalBackbone` -- one shipped backbone: a timm architecture, a checkpoint and its JSON card in
  :data:`WEIGHTS_DIR` (``tinytl_core/weights``, package data), and the input configuration it expects.
- :data:`LOCAL_BACKBONES` -- the shipped backbones by name; :data:`DEMO_BACKBONE` is the offline default.
- :func:`load_local_backbone` -- build one with its pretrained weights (safetensors: loading runs no code).

The tests point :data:`WEIGHTS_DIR` elsewhere by patching ``tinytl_core.backbones.local.WEIGHTS_DIR``;
every path here is computed from it at call time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
"""Where the project's own pretrained checkpoints and their JSON cards live (shipped with the package)."""


@dataclass(frozen=True)
class LocalBackbone:
    """A backbone pretrained by this project: a timm ``architecture`` + a checkpoint in :data:`WEIGHTS_DIR`.

    The input configuration is fixed here (not read from the card) so shape-only analysis and the
    pretraining script agree on it even before the checkpoint exists.
    """

    name: str
    architecture: str
    weights_file: str
    card_file: str
    description: str
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    classifier: str = "classifier"  # the architecture's head module (timm pretrained_cfg["classifier"])

    @property
    def weights_path(self) -> Path:
        """The checkpoint (safetensors) in :data:`WEIGHTS_DIR`."""
        return WEIGHTS_DIR / self.weights_file

    @property
    def card_path(self) -> Path:
        """The checkpoint's JSON card in :data:`WEIGHTS_DIR`."""
        return WEIGHTS_DIR / self.card_file

    def card(self) -> dict[str, Any] | None:
        """The checkpoint's JSON card (how it was trained, source accuracy), or None if absent."""
        if not self.card_path.is_file():
            return None
        return json.loads(self.card_path.read_text(encoding="utf-8"))

    def pretrained_cfg_overlay(self) -> dict[str, Any]:
        """timm ``pretrained_cfg`` fields that make ``data_config`` report this backbone's inputs."""
        return {
            "architecture": self.architecture,
            "tag": "tinytl_demo",
            "url": "",
            "hf_hub_id": None,
            "input_size": self.input_size,
            "mean": self.mean,
            "std": self.std,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
        }

    def build(self, num_classes: int) -> nn.Module:
        """The architecture, randomly initialised, with a ``num_classes`` head and this backbone's inputs.

        Built on the current default device, so ``with torch.device("meta"):`` gives a shape-only model.
        """
        return timm.create_model(
            self.architecture,
            pretrained=False,
            num_classes=num_classes,
            pretrained_cfg_overlay=self.pretrained_cfg_overlay(),
        )


DEMO_BACKBONE = "demo_mobilenetv2_050"
"""The offline default: a width-0.5 MobileNetV2 (ReLU6) pretrained here on a synthetic source task."""


def default_backbone() -> str:
    """The backbone every entry point uses when none is chosen (CLI ``adapt`` / ``memory`` / ``modes``,
    :class:`~tinytl_core.adapt.AdaptConfig`, the app's sidebar): always :data:`DEMO_BACKBONE`. It ships
    with its pretrained weights, so the default works offline and gives the same answer online and off;
    its default resolution is its own (64 px), as for every model (``data_config(name).resolution``)."""
    return DEMO_BACKBONE


LOCAL_BACKBONES: dict[str, LocalBackbone] = {
    DEMO_BACKBONE: LocalBackbone(
        name=DEMO_BACKBONE,
        architecture="mobilenetv2_050",
        weights_file="demo_mbv2.safetensors",
        card_file="demo_mbv2.json",
        description="demo backbone, pretrained here on synthetic data (64 px, no network needed); "
        "see tinytl_core/weights/demo_mbv2.json",
        input_size=(3, 64, 64),
    ),
}
"""Backbones shipped with the project, by name (listed before every timm architecture)."""


def load_local_backbone(name: str, num_classes: int | None = None) -> nn.Module:
    """Build shipped backbone ``name`` with its pretrained weights (no network).

    ``num_classes=None`` keeps the source-task classifier stored in the checkpoint; a number replaces it
    by a fresh classifier for that many classes. Raises FileNotFoundError when the checkpoint is missing
    and ValueError when it does not fit the architecture.
    """
    if name not in LOCAL_BACKBONES:
        raise ValueError(f"{name!r} is not a shipped backbone; choose one of {', '.join(LOCAL_BACKBONES)}")
    spec = LOCAL_BACKBONES[name]
    if not spec.weights_path.is_file():
        raise FileNotFoundError(
            f"checkpoint {spec.weights_path} is missing; recreate it with tools/pretrain_demo_backbone.py"
        )
    # Lazy: safetensors is only needed when a shipped checkpoint is actually loaded. Tensors only:
    # loading cannot run code.
    from safetensors.torch import load_file

    state = load_file(str(spec.weights_path))
    head = f"{spec.classifier}.weight"
    if head not in state:
        raise ValueError(f"checkpoint {spec.weights_path.name} has no {head!r}: not a {spec.architecture}")
    model = spec.build(int(state[head].shape[0]))  # the source task's classifier size
    try:
        model.load_state_dict(state)  # strict; copy_ casts the stored fp16 tensors to the model's fp32
    except RuntimeError as exc:
        raise ValueError(
            f"checkpoint {spec.weights_path.name} does not fit {spec.architecture}: {exc}"
        ) from None
    if num_classes is not None:
        model.reset_classifier(num_classes)
    return model
