"""Pretrained weights from the network: offline mode, reachability, the cache and a bounded download.

- :func:`offline_mode` -- ``TINYTL_OFFLINE`` / ``HF_HUB_OFFLINE`` is set.
- :func:`host_reachable` -- a bounded TCP connection attempt to a download host.
- :func:`cached_weights` -- where already-downloaded weights are in the Hugging Face cache, if anywhere.
- :func:`download_host` -- where an architecture's weights would come from.
- :func:`create_with_timeout` -- ``timm.create_model`` that gives up after a time-out.
- :func:`weights_availability` -- all of the above, without downloading: can weights be had now?

:func:`weights_availability` calls :func:`offline_mode`, :func:`host_reachable` and :func:`cached_weights`
through this module's namespace, so patching those public names (as the tests do) changes its answer.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import timm
from torch import nn

from tinytl_core.backbones.catalog import backbone_info
from tinytl_core.backbones.local import LOCAL_BACKBONES

# Bounded waits for pretrained weights: the connectivity probe and the whole download.
PROBE_TIMEOUT_S = 3.0
DEFAULT_DOWNLOAD_TIMEOUT_S = 120.0
_HF_HOST = "huggingface.co"
_OFFLINE_VARIABLES = ("TINYTL_OFFLINE", "HF_HUB_OFFLINE")


def offline_mode() -> bool:
    """True when ``TINYTL_OFFLINE`` or ``HF_HUB_OFFLINE`` is ``1`` / ``true`` / ``yes``: never download."""
    return any(os.environ.get(v, "").lower() in {"1", "true", "yes"} for v in _OFFLINE_VARIABLES)


def host_reachable(host: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to ``host`` port 443 opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def cached_weights(name: str) -> str | None:
    """Path of already-downloaded pretrained weights for ``name`` in the Hugging Face cache, if any."""
    # Lazy: huggingface_hub is only needed for a timm architecture with Hugging Face weights.
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


def download_host(name: str) -> str:
    """The host ``name``'s pretrained weights download from (Hugging Face unless timm names a URL)."""
    cfg = timm.models.get_pretrained_cfg(name)
    url = getattr(cfg, "url", None) if cfg is not None else None
    if cfg is not None and getattr(cfg, "hf_hub_id", None):
        return _HF_HOST
    return urlparse(url).hostname if url else _HF_HOST


def create_with_timeout(name: str, timeout: float, **kwargs: Any) -> nn.Module:
    """Run ``timm.create_model(name, **kwargs)`` in a daemon thread so a stalled download cannot hang the
    caller: TimeoutError after ``timeout`` seconds (the thread is abandoned); its own error re-raised."""
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

    The order is the one :func:`~tinytl_core.backbones.builder.create_backbone` follows: shipped local
    checkpoint, Hugging Face cache, offline mode, then (with ``probe``) a bounded connection attempt to
    the download host. ValueError for an unknown name.
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
    info = backbone_info(name)
    if not info.has_pretrained:
        # A catalog note says why (e.g. ProxylessNAS-Mobile: no weights ship for it); else timm has none.
        why = (
            f"no pretrained weights ship for {name}"
            if info.description
            else f"timm has no pretrained weights for {name}"
        )
        return WeightsAvailability(name, "none", f"{why}: training starts from random initialisation")
    cached = cached_weights(name)
    if cached is not None:
        return WeightsAvailability(name, "cached", "pretrained weights are cached on this machine", cached)
    if offline_mode():
        return WeightsAvailability(
            name,
            "unavailable",
            "offline mode is on (TINYTL_OFFLINE / HF_HUB_OFFLINE) and the weights are not cached: "
            "training falls back to random initialisation",
        )
    host = download_host(name)
    if probe and not host_reachable(host):
        return WeightsAvailability(
            name,
            "unavailable",
            f"cannot reach {host} (no network?) and the weights are not cached: "
            "training falls back to random initialisation",
        )
    return WeightsAvailability(name, "download", f"weights will be downloaded from {host} when a run starts")
