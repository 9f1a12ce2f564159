"""Building backbones: :func:`create_backbone` (weights, fallback, device) and :func:`meta_backbone`.

One path builds every randomly initialised model (:func:`_fresh_model`: a shipped backbone's
architecture or a timm one), whether on the meta device for shape-only analysis or as the fallback
when pretrained weights cannot be had. Pretrained weights come from the shipped checkpoint
(:mod:`~tinytl_core.backbones.local`) or from the cache / a bounded download
(:mod:`~tinytl_core.backbones.hub`).

Whether an architecture takes ``img_size`` is read from timm's own code (:func:`accepts_img_size`):
the model classes its registered entrypoint builds, and their ``__init__`` signatures.
"""

from __future__ import annotations

import copy
import functools
import inspect
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import nn

from tinytl_core.backbones import hub
from tinytl_core.backbones.catalog import backbone_info, check_backbone_name
from tinytl_core.backbones.local import LOCAL_BACKBONES, LocalBackbone, load_local_backbone

_META_MESSAGE = "shape-only model on the meta device (no weights)"
_NOT_REQUESTED_MESSAGE = "random initialisation (pretrained weights not requested)"


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


def classifier_heads(model: nn.Module) -> tuple[nn.Module, ...]:
    """The model's classifier head(s), from timm's ``get_classifier()``: one module for most models, two
    for distilled ones (DeiT-distilled, LeViT, EfficientFormer: the class and the distillation head, a
    tuple); none when the model has no ``get_classifier`` or it returns something else."""
    getter = getattr(model, "get_classifier", None)
    head = getter() if callable(getter) else None
    heads = head if isinstance(head, (tuple, list)) else (head,)
    return tuple(h for h in heads if isinstance(h, nn.Module))


def _model_classes(fn: Callable[..., Any], depth: int, seen: set[Callable[..., Any]]) -> Iterator[type]:
    """The ``nn.Module`` classes of ``timm.models`` that ``fn`` (and the timm.models helper functions it
    calls, ``depth`` levels deep) refers to by name. timm's private plumbing (``timm.models._builder``
    and friends) and its layers (``timm.layers``) are skipped: they are not model classes."""
    names: set[str] = set()
    codes = [fn.__code__]
    while codes:  # the function's own names and those of the functions / comprehensions nested in it
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    for name in sorted(names):
        obj = fn.__globals__.get(name)
        module = getattr(obj, "__module__", None) or ""
        if not module.startswith("timm.models.") or module.startswith("timm.models._"):
            continue
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            yield obj
        elif inspect.isfunction(obj) and depth > 0 and obj not in seen:
            seen.add(obj)
            yield from _model_classes(obj, depth - 1, seen)


@functools.cache
def accepts_img_size(name: str) -> bool:
    """True when timm architecture ``name`` is built by a model class whose ``__init__`` takes ``img_size``.

    Read from timm's registry and signatures, without building anything: the entrypoint timm registered
    for ``name`` (``timm.models.model_entrypoint``), the model classes it and its ``_create_*`` helper
    refer to, and ``inspect.signature`` of their ``__init__``.
    """
    entrypoint = timm.models.model_entrypoint(name)
    return any(
        "img_size" in inspect.signature(cls.__init__).parameters
        for cls in _model_classes(entrypoint, depth=3, seen={entrypoint})
    )


def _timm_kwargs(name: str, num_classes: int, resolution: int | None) -> dict[str, Any]:
    """``timm.create_model`` arguments: the head size, and ``img_size`` for fixed-size non-CNNs."""
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if resolution is not None and backbone_info(name).kind != "cnn" and accepts_img_size(name):
        kwargs["img_size"] = resolution
    return kwargs


def _fresh_model(name: str, num_classes: int, resolution: int | None) -> nn.Module:
    """Backbone ``name`` randomly initialised, on the current default device (the one path for both)."""
    spec = LOCAL_BACKBONES.get(name)
    if spec is not None:
        return spec.build(num_classes)
    return timm.create_model(name, pretrained=False, **_timm_kwargs(name, num_classes, resolution))


def _pretrained_local(spec: LocalBackbone, num_classes: int) -> tuple[nn.Module, BackboneStatus]:
    """A shipped backbone with its checkpoint: local weights, never the network."""
    try:
        model = load_local_backbone(spec.name, num_classes)
    except (OSError, ValueError) as exc:
        message = f"pretrained weights unavailable, using random init: {exc}"
        return spec.build(num_classes), BackboneStatus(spec.name, True, False, message)
    message = f"pretrained weights loaded from {spec.weights_file} (shipped, no network needed)"
    return model, BackboneStatus(spec.name, True, True, message)


def _pretrained_timm(
    name: str, num_classes: int, resolution: int | None, timeout: float
) -> tuple[nn.Module, BackboneStatus]:
    """A timm architecture with its pretrained weights from the cache or a bounded download, or
    randomly initialised with the reason when they cannot be had."""
    kwargs = _timm_kwargs(name, num_classes, resolution)
    available = hub.weights_availability(name)
    reason = available.message
    model: nn.Module | None = None
    try:
        if available.state == "cached" and available.path is not None:
            model = timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay={"file": available.path}, **kwargs
            )
        elif available.state == "download":
            model = hub.create_with_timeout(name, timeout, pretrained=True, **kwargs)
    except Exception as exc:  # any weights failure falls back; the message tells which
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        model = None
    if model is not None:
        return model, BackboneStatus(name, True, True, "pretrained weights loaded")
    message = f"pretrained weights unavailable, using random init: {reason}"
    return timm.create_model(name, pretrained=False, **kwargs), BackboneStatus(name, True, False, message)


META_MODELS_KEPT = 16
"""Shape-only models kept as templates (:func:`_meta_model`); they hold no tensor data."""
_meta_templates: OrderedDict[tuple, nn.Module] = OrderedDict()
_meta_lock = threading.Lock()


def _meta_model(name: str, num_classes: int, resolution: int | None) -> nn.Module:
    """A fresh shape-only model of ``name``: a copy of the one built last time for the same arguments.

    Building a timm model runs its Python constructors and initialisers (30-200 ms even on ``meta``), a
    copy of a meta model takes 20-40 ms; the planner and the pages build the same backbone once per mode.
    Callers get their own copy, free to change (:func:`copy_module`).
    """
    kwargs = {} if name in LOCAL_BACKBONES else _timm_kwargs(name, num_classes, resolution)
    key = (name, num_classes, tuple(sorted(kwargs.items())))
    with _meta_lock:
        template = _meta_templates.get(key)
        if template is not None:
            _meta_templates.move_to_end(key)
    if template is None:
        with torch.device("meta"):
            template = _fresh_model(name, num_classes, resolution)
        with _meta_lock:
            _meta_templates[key] = template
            while len(_meta_templates) > META_MODELS_KEPT:
                _meta_templates.popitem(last=False)
    return copy_module(template)


_SHARED_TYPES = frozenset({
    int, float, bool, complex, str, bytes, type(None), torch.dtype, torch.device, torch.layout,
    torch.memory_format, type, types.FunctionType, types.BuiltinFunctionType,
})  # fmt: skip
"""Types of the attribute values ``copy.deepcopy`` returns as they are."""


def _shared(value: object) -> bool:
    """True when ``copy.deepcopy(value)`` may return ``value`` itself: immutable, all the way down."""
    kind = type(value)
    if kind in _SHARED_TYPES or isinstance(value, (types.FunctionType, type)):
        return True
    return kind in (tuple, frozenset) and all(_shared(v) for v in value)


def _plain_module(kind: type) -> bool:
    """True when ``copy.deepcopy`` copies a module of class ``kind`` the default way: ``__new__``, then
    ``__setstate__`` with a deep copy of the dict its ``__getstate__`` returns."""
    return (
        kind.__new__ is object.__new__
        and kind.__reduce_ex__ is object.__reduce_ex__
        and kind.__reduce__ is object.__reduce__
        and getattr(kind, "__deepcopy__", None) is None
        and not issubclass(kind, (list, dict))
    )


def copy_module(module: nn.Module, memo: dict[int, Any] | None = None) -> nn.Module:
    """``copy.deepcopy(module)``, 2-3x faster for the plain modules timm builds.

    ``deepcopy`` walks every value of every module through its generic protocol, most of them immutable
    (numbers, strings, classes) or empty hook dictionaries. This walks the module tree itself: immutable
    values are shared (as ``deepcopy`` shares them), empty dictionaries made anew, parameters, buffers and
    every other value go through ``copy.deepcopy`` with the same ``memo`` (tied weights stay tied, a module
    referenced twice is copied once), and any module whose class copies itself otherwise is handed to
    ``copy.deepcopy`` whole.
    """
    memo = {} if memo is None else memo
    found = memo.get(id(module))
    if found is not None:
        return found
    kind = type(module)
    if not _plain_module(kind):
        return copy.deepcopy(module, memo)
    new = kind.__new__(kind)
    memo[id(module)] = new
    memo.setdefault(id(memo), []).append(module)  # as deepcopy keeps it: no id in the memo is reused
    state = module.__getstate__()
    if type(state) is not dict:
        del memo[id(module)]
        return copy.deepcopy(module, memo)
    for name, value in state.items():
        if name == "_modules":
            state[name] = type(value)(
                (k, None if child is None else copy_module(child, memo)) for k, child in value.items()
            )
        elif name in ("_parameters", "_buffers"):
            state[name] = type(value)((k, copy.deepcopy(t, memo)) for k, t in value.items())
        elif type(value) in _SHARED_TYPES or _shared(value):  # the type test first: most values pass it
            continue
        elif type(value) in (dict, OrderedDict) and not value:
            state[name] = type(value)()
        elif type(value) is set and all(_shared(v) for v in value):
            state[name] = set(value)
        else:
            state[name] = copy.deepcopy(value, memo)
    new.__setstate__(state)
    return new


def create_backbone(
    name: str,
    num_classes: int = 10,
    pretrained: bool = False,
    *,
    timeout: float = hub.DEFAULT_DOWNLOAD_TIMEOUT_S,
    device: str | torch.device | None = None,
    resolution: int | None = None,
) -> tuple[nn.Module, BackboneStatus]:
    """Create a shipped or timm backbone with a fresh ``num_classes`` classifier.

    With ``pretrained=True`` the weights come from the shipped checkpoint or the local cache when
    present; otherwise they are downloaded within ``timeout`` seconds. When that is impossible (offline,
    no cache, time-out, the architecture has no weights) the model is randomly initialised and
    ``status.message`` says why. ``device="meta"`` builds a shape-only model (no weights, no memory).
    ``resolution`` is passed as ``img_size`` to architectures built for a fixed input size (ViTs and
    other transformers); CNNs take any size as they are.
    Never raises for a weights problem; raises ValueError for an unknown name or a bad ``num_classes``.
    """
    check_backbone_name(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if device is not None and torch.device(device).type == "meta":
        status = BackboneStatus(name, pretrained, False, _META_MESSAGE)
        return _meta_model(name, num_classes, resolution), status
    if not pretrained:
        model = _fresh_model(name, num_classes, resolution)
        status = BackboneStatus(name, False, False, _NOT_REQUESTED_MESSAGE)
    elif name in LOCAL_BACKBONES:
        model, status = _pretrained_local(LOCAL_BACKBONES[name], num_classes)
    else:
        model, status = _pretrained_timm(name, num_classes, resolution, timeout)
    return (model.to(device) if device is not None else model), status


def meta_backbone(name: str, num_classes: int = 10) -> nn.Module:
    """Build ``name`` on the ``meta`` device: shapes only, no memory, for fast analysis."""
    return create_backbone(name, num_classes, pretrained=False, device="meta")[0]
