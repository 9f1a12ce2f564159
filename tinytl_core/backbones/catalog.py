"""The backbone catalog: which architectures exist, their family, kind and whether weights exist.

Built on timm's registry (``timm.list_models`` / ``timm.list_modules`` / ``timm.list_models(pretrained=
True)``) plus the backbones shipped in :mod:`tinytl_core.backbones.local`, which are listed first.

- :func:`list_backbones` / :func:`backbone_info` / :func:`families` / :func:`check_backbone_name`.
- :func:`pretrained_architectures` -- the architectures timm lists pretrained weights for (the seam tests
  patch to pretend none exist).
- :func:`family_kind` -- ``cnn`` / ``transformer`` / ``hybrid`` / ``mlp`` for a timm family. timm records no
  such property, so the split is kept here by family (the timm module an architecture is defined in).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
from dataclasses import dataclass

import timm
from timm.models import split_model_name_tag

from tinytl_core.backbones.local import LOCAL_BACKBONES
from tinytl_core.backbones.proxyless import PROXYLESS_MOBILE, PROXYLESS_MOBILE_NOTE

# The shipped demo first (works offline), the paper's own backbone, then mobile CNNs (the paper's
# setting), two ResNets for contrast and two modern small CNNs.
CURATED_BACKBONES: tuple[str, ...] = (
    *LOCAL_BACKBONES,
    PROXYLESS_MOBILE,
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

KINDS: tuple[str, ...] = ("cnn", "transformer", "hybrid", "mlp")

NOTES: dict[str, str] = {PROXYLESS_MOBILE: PROXYLESS_MOBILE_NOTE}
"""Catalog notes on timm architectures registered by this project (shipped backbones have their own)."""

# timm module -> kind. Everything not listed is a CNN; the split follows how each family computes.
# timm has no metadata for this, hence the lists (a name timm does not have is harmless: it never matches).
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


@dataclass(frozen=True)
class BackboneInfo:
    """One row of the catalog."""

    name: str
    family: str
    kind: str
    has_pretrained: bool
    curated: bool
    description: str = ""


@functools.cache
def _module_of() -> dict[str, str]:
    return {m: mod for mod in timm.list_modules() for m in timm.list_models(module=mod)}


@functools.cache
def pretrained_architectures() -> frozenset[str]:
    """The timm architectures (names without a weight tag) that timm lists pretrained weights for."""
    return frozenset(n.split(".")[0] for n in timm.list_models(pretrained=True))


def family_kind(family: str) -> str:
    """The kind (one of :data:`KINDS`) of every architecture in timm family (module) ``family``."""
    if family in _TRANSFORMER_MODULES:
        return "transformer"
    if family in _HYBRID_MODULES:
        return "hybrid"
    if family in _MLP_MODULES:
        return "mlp"
    return "cnn"


def check_backbone_name(name: str) -> None:
    """Raise ValueError with close matches when ``name`` is neither a shipped backbone nor a timm one."""
    if not isinstance(name, str):
        raise ValueError(f"a backbone is named by a string such as 'resnet18', got {name!r}")
    if name in LOCAL_BACKBONES or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, [*LOCAL_BACKBONES, *timm.list_models()], n=5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown backbone {name!r}.{hint}")


def backbone_info(name: str) -> BackboneInfo:
    """Return the catalog entry of one architecture; ValueError if timm does not know it."""
    check_backbone_name(name)
    if name in LOCAL_BACKBONES:
        spec = LOCAL_BACKBONES[name]
        module = _module_of().get(spec.architecture, "unknown")
        return BackboneInfo(
            name=name,
            family=module,
            kind=family_kind(module),
            has_pretrained=spec.weights_path.is_file(),
            curated=True,
            description=spec.description,
        )
    # "vit_tiny_patch16_224.augreg_in21k": the architecture's entry, with that tag's weights
    architecture, tag = split_model_name_tag(name)
    module = _module_of().get(architecture, "unknown")
    return BackboneInfo(
        name=name,
        family=module,
        kind=family_kind(module),
        has_pretrained=(name in timm.list_pretrained()) if tag else name in pretrained_architectures(),
        curated=name in CURATED_BACKBONES,
        description=NOTES.get(architecture, ""),
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
