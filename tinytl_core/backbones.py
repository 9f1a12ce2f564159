"""timm backbone catalog and creation.

- :func:`list_backbones` searches every timm architecture (name, family, pretrained weights, kind).
- :func:`create_backbone` builds a model for N classes; a pretrained-weights request that cannot be met
  (offline, nothing cached, time-out) falls back to random init and says so in :class:`BackboneStatus`.
- :func:`data_config` resolves the model's own input size, mean and std from timm's pretrained config.
- :data:`LOCAL_BACKBONES` are backbones pretrained by this project and shipped in ``tinytl_core/weights``
  (the demo backbone, listed first): they load with no network, so offline transfer is real.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
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
        return WEIGHTS_DIR / self.weights_file

    @property
    def card_path(self) -> Path:
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


DEMO_BACKBONE = "demo_mobilenetv2_050"
"""The offline default: a width-0.5 MobileNetV2 (ReLU6) pretrained here on a synthetic source task."""

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

# The shipped demo first (works offline), then mobile CNNs (the paper's setting), two ResNets for
# contrast and two modern small CNNs.
CURATED_BACKBONES: tuple[str, ...] = (
    *LOCAL_BACKBONES,
    "mobilenetv2_100",
    "mobilenetv3_large_100",
    "efficientnet_b0",
    "mnasnet_100",
    "spnasnet_100",
    "fbnetc_100",
    "mobilenetv2_050",
    "resnet18",
    "resnet50",
    "regnetx_002",
    "convnext_atto",
)

# timm module -> kind. Everything not listed is a CNN; the split follows how each family computes.
_TRANSFORMER_MODULES = frozenset(
    {
        "beit",
        "cait",
        "crossvit",
        "deit",
        "eva",
        "hiera",
        "vision_transformer",
        "vision_transformer_relpos",
        "vision_transformer_sam",
        "vision_transformer_hybrid",
        "swin_transformer",
        "swin_transformer_v2",
        "swin_transformer_v2_cr",
        "twins",
        "tnt",
        "xcit",
        "pvt_v2",
        "mvitv2",
        "gcvit",
        "maxxvit",
        "focalnet",
        "davit",
        "nest",
        "pit",
        "sequencer",
        "vitamin",
        "volo",
        "tiny_vit",
        "naflexvit",
        "aimv2",
        "vision_transformer_flexi",
    }
)
_HYBRID_MODULES = frozenset(
    {
        "coat",
        "convit",
        "levit",
        "mobilevit",
        "efficientformer",
        "efficientformer_v2",
        "fastvit",
        "edgenext",
        "efficientvit_mit",
        "efficientvit_msra",
        "nextvit",
        "repvit",
        "rdnet",
        "mobilenetv5",
        "cvt",
        "starnet",
        "swiftformer",
        "shvit",
        "csatv2",
    }
)
_MLP_MODULES = frozenset({"mlp_mixer"})

KINDS: tuple[str, ...] = ("cnn", "transformer", "hybrid", "mlp")

# Bounded waits for pretrained weights: the connectivity probe and the whole download.
PROBE_TIMEOUT_S = 3.0
DEFAULT_DOWNLOAD_TIMEOUT_S = 120.0
_HF_HOST = "huggingface.co"


@dataclass(frozen=True)
class BackboneInfo:
    """One row of the catalog."""

    name: str
    family: str
    kind: str
    has_pretrained: bool
    curated: bool
    description: str = ""


@dataclass(frozen=True)
class BackboneStatus:
    """What :func:`create_backbone` did about weights; ``message`` is meant to be shown to the user."""

    name: str
    pretrained_requested: bool
    pretrained_loaded: bool
    message: str

    @property
    def fell_back(self) -> bool:
        """True when pretrained weights were asked for but the model is randomly initialised."""
        return self.pretrained_requested and not self.pretrained_loaded


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


@functools.cache
def _module_of() -> dict[str, str]:
    return {m: mod for mod in timm.list_modules() for m in timm.list_models(module=mod)}


@functools.cache
def _pretrained_archs() -> frozenset[str]:
    return frozenset(n.split(".")[0] for n in timm.list_models(pretrained=True))


def _kind(module: str) -> str:
    if module in _TRANSFORMER_MODULES:
        return "transformer"
    if module in _HYBRID_MODULES:
        return "hybrid"
    if module in _MLP_MODULES:
        return "mlp"
    return "cnn"


def backbone_info(name: str) -> BackboneInfo:
    """Return the catalog entry of one architecture; ValueError if timm does not know it."""
    check_backbone_name(name)
    if name in LOCAL_BACKBONES:
        spec = LOCAL_BACKBONES[name]
        module = _module_of().get(spec.architecture, "unknown")
        return BackboneInfo(
            name=name,
            family=module,
            kind=_kind(module),
            has_pretrained=spec.weights_path.is_file(),
            curated=True,
            description=spec.description,
        )
    module = _module_of().get(name, "unknown")
    return BackboneInfo(
        name=name,
        family=module,
        kind=_kind(module),
        has_pretrained=name in _pretrained_archs(),
        curated=name in CURATED_BACKBONES,
    )


def families() -> list[str]:
    """All timm families (the timm module each architecture is defined in), sorted."""
    return sorted(set(_module_of().values()))


def list_backbones(
    search: str | None = None,
    family: str | None = None,
    pretrained_only: bool = False,
    kind: str | None = None,
) -> list[BackboneInfo]:
    """List the shipped backbones and timm architectures: curated ones first (the shipped demo backbone,
    then mobile CNNs), then the rest alphabetically.

    Args:
        search: case-insensitive substring of the name; ``*`` wildcards as in ``timm.list_models``.
        family: the timm module name (e.g. ``"efficientnet"``, ``"resnet"``); see :func:`families`.
        pretrained_only: keep architectures for which timm lists pretrained weights.
        kind: one of :data:`KINDS` (``cnn``, ``transformer``, ``hybrid``, ``mlp``).
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if family is not None and family not in set(_module_of().values()):
        raise ValueError(f"unknown family {family!r}; see `python -m tinytl_core backbones --families`")
    pattern = f"*{search.lower()}*" if search and "*" not in search else (search or "")
    local = [n for n in LOCAL_BACKBONES if not pattern or fnmatch.fnmatch(n, pattern)]
    rows = [backbone_info(n) for n in [*local, *timm.list_models(pattern)]]
    rows = [
        r
        for r in rows
        if (family is None or r.family == family)
        and (kind is None or r.kind == kind)
        and (not pretrained_only or r.has_pretrained)
    ]
    order = {n: i for i, n in enumerate(CURATED_BACKBONES)}
    return sorted(rows, key=lambda r: (order.get(r.name, len(order)), r.name))


def check_backbone_name(name: str) -> None:
    """Raise ValueError with close matches when ``name`` is neither a shipped backbone nor a timm one."""
    if name in LOCAL_BACKBONES or timm.is_model(name):
        return
    import difflib

    close = difflib.get_close_matches(name, [*LOCAL_BACKBONES, *timm.list_models()], n=5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown backbone {name!r}.{hint}")


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in {"1", "true", "yes"} for v in ("TINYTL_OFFLINE", "HF_HUB_OFFLINE")
    )


def _reachable(host: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_weights(name: str) -> str | None:
    """Path of already-downloaded pretrained weights for ``name`` in the Hugging Face cache, if any."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not getattr(cfg, "hf_hub_id", None):
        return None
    repo = cfg.hf_hub_id.split("@")[0]
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(repo, filename)
        if isinstance(path, str):
            return path
    return None


def _download_host(name: str) -> str:
    cfg = timm.models.get_pretrained_cfg(name)
    url = getattr(cfg, "url", None) if cfg is not None else None
    if cfg is not None and getattr(cfg, "hf_hub_id", None):
        return _HF_HOST
    return urlparse(url).hostname if url else _HF_HOST


def _create_with_timeout(name: str, timeout: float, **kwargs) -> nn.Module:
    """Run ``timm.create_model`` in a daemon thread so a stalled download cannot hang the caller."""
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["model"] = timm.create_model(name, **kwargs)
        except BaseException as exc:  # reported to the caller below
            result["error"] = exc

    thread = threading.Thread(target=work, name=f"tinytl-download-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"downloading pretrained weights took longer than {timeout:.0f} s")
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["model"]  # type: ignore[return-value]


@dataclass(frozen=True)
class WeightsAvailability:
    """Whether pretrained weights can be had for a backbone right now.

    ``state``: ``cached`` (on disk; ``path`` says where, None for a shipped local backbone), ``download``
    (will be downloaded when a model is built), ``unavailable`` (offline / unreachable / checkpoint
    missing: random init) or ``none`` (timm has no weights for it).
    """

    backbone: str
    state: str
    message: str
    path: str | None = None

    @property
    def usable(self) -> bool:
        """True when building the model with ``pretrained=True`` will get the weights."""
        return self.state in ("cached", "download")


def weights_availability(name: str, *, probe: bool = True) -> WeightsAvailability:
    """Tell, without downloading anything, whether ``name``'s pretrained weights can be had.

    The order is the one :func:`create_backbone` follows: shipped local checkpoint, Hugging Face cache,
    offline mode, then (with ``probe``) a bounded connection attempt to the download host.
    """
    local = LOCAL_BACKBONES.get(name)
    if local is not None:
        if local.weights_path.is_file():
            return WeightsAvailability(
                name,
                "cached",
                f"pretrained weights shipped with TinyTL Lab ({local.weights_file}): no network needed",
            )
        return WeightsAvailability(
            name,
            "unavailable",
            f"the shipped checkpoint {local.weights_file} is missing: "
            "training falls back to random initialisation",
        )
    if not backbone_info(name).has_pretrained:
        return WeightsAvailability(
            name,
            "none",
            f"timm has no pretrained weights for {name}: training starts from random initialisation",
        )
    cached = _cached_weights(name)
    if cached is not None:
        return WeightsAvailability(name, "cached", "pretrained weights are cached on this machine", cached)
    if _offline():
        return WeightsAvailability(
            name,
            "unavailable",
            "offline mode is on (TINYTL_OFFLINE / HF_HUB_OFFLINE) and the weights are not cached: "
            "training falls back to random initialisation",
        )
    host = _download_host(name)
    if probe and not _reachable(host):
        return WeightsAvailability(
            name,
            "unavailable",
            f"cannot reach {host} (no network?) and the weights are not cached: "
            "training falls back to random initialisation",
        )
    return WeightsAvailability(name, "download", f"weights will be downloaded from {host} when a run starts")


def create_backbone(
    name: str,
    num_classes: int = 10,
    pretrained: bool = False,
    *,
    timeout: float = DEFAULT_DOWNLOAD_TIMEOUT_S,
    device: str | torch.device | None = None,
    resolution: int | None = None,
) -> tuple[nn.Module, BackboneStatus]:
    """Create a timm model with a fresh ``num_classes`` classifier.

    With ``pretrained=True`` the weights come from the local cache when present; otherwise they are
    downloaded within ``timeout`` seconds. When that is impossible (offline, no cache, time-out, the
    architecture has no weights) the model is randomly initialised and ``status.message`` says why.
    ``resolution`` is passed as ``img_size`` to architectures built for a fixed input size (ViTs and
    other transformers); CNNs take any size as they are.
    Never raises for a weights problem; raises ValueError for an unknown name or a bad ``num_classes``.
    """
    check_backbone_name(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if name in LOCAL_BACKBONES:
        return _create_local(LOCAL_BACKBONES[name], num_classes, pretrained, device)
    kwargs: dict = {"num_classes": num_classes}
    if resolution is not None and backbone_info(name).kind != "cnn" and _accepts_img_size(name):
        kwargs["img_size"] = resolution
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **kwargs)
        return model, BackboneStatus(
            name, pretrained, False, "shape-only model on the meta device (no weights)"
        )

    model: nn.Module | None = None
    if not pretrained:
        status = BackboneStatus(
            name, False, False, "random initialisation (pretrained weights not requested)"
        )
    else:
        available = weights_availability(name)
        reason = available.message
        try:
            if available.state == "cached" and available.path is not None:
                model = timm.create_model(
                    name, pretrained=True, pretrained_cfg_overlay={"file": available.path}, **kwargs
                )
            elif available.state == "download":
                model = _create_with_timeout(name, timeout, pretrained=True, **kwargs)
        except Exception as exc:  # any weights failure falls back; the message tells which
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            model = None
        if model is not None:
            status = BackboneStatus(name, True, True, "pretrained weights loaded")
        else:
            status = BackboneStatus(
                name, True, False, f"pretrained weights unavailable, using random init: {reason}"
            )
    if model is None:
        model = timm.create_model(name, pretrained=False, **kwargs)
    if device is not None:
        model = model.to(device)
    return model, status


def _local_model(spec: LocalBackbone, num_classes: int) -> nn.Module:
    return timm.create_model(
        spec.architecture,
        pretrained=False,
        num_classes=num_classes,
        pretrained_cfg_overlay=spec.pretrained_cfg_overlay(),
    )


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
    from safetensors.torch import load_file  # tensors only: loading cannot run code

    state = load_file(str(spec.weights_path))
    head = f"{spec.classifier}.weight"
    if head not in state:
        raise ValueError(f"checkpoint {spec.weights_path.name} has no {head!r}: not a {spec.architecture}")
    model = _local_model(spec, int(state[head].shape[0]))  # the source task's classifier size
    try:
        model.load_state_dict(state)  # strict; copy_ casts the stored fp16 tensors to the model's fp32
    except RuntimeError as exc:
        raise ValueError(
            f"checkpoint {spec.weights_path.name} does not fit {spec.architecture}: {exc}"
        ) from None
    if num_classes is not None:
        model.reset_classifier(num_classes)
    return model


def _create_local(
    spec: LocalBackbone, num_classes: int, pretrained: bool, device: str | torch.device | None
) -> tuple[nn.Module, BackboneStatus]:
    """:func:`create_backbone` for a shipped backbone: local weights, never the network."""
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            model = _local_model(spec, num_classes)
        message = "shape-only model on the meta device (no weights)"
        return model, BackboneStatus(spec.name, pretrained, False, message)
    if not pretrained:
        model = _local_model(spec, num_classes)
        message = "random initialisation (pretrained weights not requested)"
        status = BackboneStatus(spec.name, False, False, message)
    else:
        try:
            model = load_local_backbone(spec.name, num_classes)
            message = f"pretrained weights loaded from {spec.weights_file} (shipped, no network needed)"
            status = BackboneStatus(spec.name, True, True, message)
        except (OSError, ValueError) as exc:
            model = _local_model(spec, num_classes)
            message = f"pretrained weights unavailable, using random init: {exc}"
            status = BackboneStatus(spec.name, True, False, message)
    return (model.to(device) if device is not None else model), status


@functools.cache
def _accepts_img_size(name: str) -> bool:
    try:
        with torch.device("meta"):
            timm.create_model(name, pretrained=False, img_size=224)
        return True
    except TypeError:
        return False


def meta_backbone(name: str, num_classes: int = 10) -> nn.Module:
    """Build ``name`` on the ``meta`` device: shapes only, no memory, for fast analysis."""
    return create_backbone(name, num_classes, pretrained=False, device="meta")[0]


def data_config(model_or_name: nn.Module | str) -> DataConfig:
    """Resolve input size, mean, std, crop and interpolation from timm's pretrained config."""
    model = meta_backbone(model_or_name) if isinstance(model_or_name, str) else model_or_name
    cfg = timm.data.resolve_model_data_config(model)
    return DataConfig(
        input_size=tuple(int(v) for v in cfg["input_size"]),  # type: ignore[arg-type]
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(cfg.get("interpolation", "bilinear")),
    )
