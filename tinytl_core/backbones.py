"""timm backbone catalog and creation.

- :func:`list_backbones` searches every timm architecture (name, family, pretrained weights, kind).
- :func:`create_backbone` builds a model for N classes; a pretrained-weights request that cannot be met
  (offline, nothing cached, time-out) falls back to random init and says so in :class:`BackboneStatus`.
- :func:`data_config` resolves the model's own input size, mean and std from timm's pretrained config.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urlparse

import timm
import torch
from torch import nn

# Mobile CNNs first (the paper's setting), then two ResNets for contrast and two modern small CNNs.
CURATED_BACKBONES: tuple[str, ...] = (
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
    """List timm architectures, curated mobile CNNs first, then the rest alphabetically.

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
    names = timm.list_models(f"*{search.lower()}*" if search and "*" not in search else (search or ""))
    rows = [backbone_info(n) for n in names]
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
    """Raise ValueError with close matches when ``name`` is not a timm architecture."""
    if timm.is_model(name):
        return
    import difflib

    close = difflib.get_close_matches(name, timm.list_models(), n=5)
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
    elif name not in _pretrained_archs():
        status = BackboneStatus(name, True, False, f"timm has no pretrained weights for {name}: random init")
    else:
        reason = ""
        try:
            cached = _cached_weights(name)
            if cached is not None:
                model = timm.create_model(
                    name, pretrained=True, pretrained_cfg_overlay={"file": cached}, **kwargs
                )
            elif _offline():
                reason = "offline mode is on (TINYTL_OFFLINE / HF_HUB_OFFLINE) and the weights are not cached"
            elif not _reachable(_download_host(name)):
                reason = f"cannot reach {_download_host(name)} (no network?) and the weights are not cached"
            else:
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
