"""Sparse-update schemes (Lin et al., "On-Device Training Under 256KB Memory", NeurIPS 2022).

A scheme trains, besides the classifier, the biases of the last ``bias_blocks`` blocks (and of every
layer after them) and the weights of chosen layers, each on a ratio of its output channels from
:data:`RATIOS` (1/8, 1/4, 1/2 or all). A weight updated on part of its channels trains its first rows
only (:func:`tinytl_core.engine.split_weight`): only those rows have a gradient and optimizer state, and
the layer stores its input once. Schemes are plain data, read from and written to JSON::

    {"bias_blocks": 8, "weights": {"blocks.5.2.conv_pwl": "1/4", "conv_head": "1"}}

Everything a user gives is checked against the model (:meth:`SparseScheme.check`): unknown layers (with
close matches), layers without a weight, ratios outside :data:`RATIOS`, more bias blocks than the model
has. Nothing in a scheme is ever executed.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from torch import nn

from tinytl_core.backbones import classifier_heads
from tinytl_core.engine import (
    PartialConv2d,
    PartialLinear,
    PartialUpdateError,
    partial_rows,
    split_problem,
    split_weight,
)
from tinytl_core.layer_kinds import LayerKind, kind_of
from tinytl_core.lite_residual import find_blocks
from tinytl_core.norms import standardizable

__all__ = [
    "RATIOS",
    "SchemeError",
    "SparseScheme",
    "WeightUpdate",
    "apply_scheme",
    "default_scheme",
    "format_ratio_text",
    "parse_ratio",
    "pointwise_layers",
    "read_scheme",
    "weight_layers",
]

RATIOS: tuple[Fraction, ...] = (Fraction(1, 8), Fraction(1, 4), Fraction(1, 2), Fraction(1))
"""Update ratios of a weight's output channels (the paper's search space; 0 = leave the layer out)."""
MAX_SCHEME_CHARS = 200_000
"""Longest scheme text read (a scheme of every layer of a large model is a few KB)."""


class SchemeError(ValueError):
    """A sparse-update scheme is malformed or does not fit the model; the message says what to fix."""


def parse_ratio(value: Any) -> Fraction:
    """``"1/4"``, ``0.25``, ``"0.25"`` or ``1`` -> a ratio of :data:`RATIOS`; else :class:`SchemeError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Fraction)):
        raise SchemeError(f"ratio must be one of {_ratio_choices()}, got {value!r}")
    try:
        ratio = Fraction(value.strip() if isinstance(value, str) else value).limit_denominator(64)
    except (ValueError, ZeroDivisionError, OverflowError):
        raise SchemeError(f"ratio must be one of {_ratio_choices()}, got {value!r}") from None
    if ratio not in RATIOS:
        raise SchemeError(f"ratio must be one of {_ratio_choices()}, got {value!r}")
    return ratio


def format_ratio_text(ratio: Fraction) -> str:
    """``Fraction(1, 4)`` -> ``"1/4"``, ``Fraction(1)`` -> ``"1"``."""
    return str(ratio)


def _ratio_choices() -> str:
    return ", ".join(format_ratio_text(r) for r in RATIOS)


@dataclass(frozen=True)
class WeightUpdate:
    """One layer's weight trained on ``ratio`` of its output channels (the first ones)."""

    layer: str
    ratio: Fraction


@dataclass(frozen=True)
class SparseScheme:
    """What a sparse update trains besides the classifier: biases of the last ``bias_blocks`` blocks
    (and of the layers after them) and the weights of ``weights``."""

    bias_blocks: int = 0
    weights: tuple[WeightUpdate, ...] = ()

    def __post_init__(self) -> None:
        if (
            isinstance(self.bias_blocks, bool)
            or not isinstance(self.bias_blocks, int)
            or self.bias_blocks < 0
        ):
            raise SchemeError(f"bias_blocks must be a whole number >= 0, got {self.bias_blocks!r}")
        seen: set[str] = set()
        for update in self.weights:
            if update.layer in seen:
                raise SchemeError(f"layer {update.layer!r} is listed twice")
            seen.add(update.layer)
            parse_ratio(update.ratio)

    # ------------------------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"bias_blocks": k, "weights": {layer: "1/4", ...}}``."""
        return {
            "bias_blocks": self.bias_blocks,
            "weights": {u.layer: format_ratio_text(u.ratio) for u in self.weights},
        }

    def to_json(self) -> str:
        """The scheme as indented JSON text (:meth:`from_json` reads it back)."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, values: Any) -> SparseScheme:
        """Read a scheme from a decoded JSON object; :class:`SchemeError` says what is wrong."""
        if not isinstance(values, Mapping):
            raise SchemeError('a scheme is a JSON object: {"bias_blocks": 8, "weights": {"layer": "1/4"}}')
        unknown = sorted(set(values) - {"bias_blocks", "weights"})
        if unknown:
            raise SchemeError(
                f"unknown key(s) {', '.join(map(repr, unknown))}; a scheme has bias_blocks, weights"
            )
        weights = values.get("weights", {})
        if not isinstance(weights, Mapping):
            raise SchemeError('"weights" must be an object mapping layer names to ratios')
        updates = []
        for layer, ratio in weights.items():
            if not isinstance(layer, str) or not layer.strip():
                raise SchemeError(f"layer names must be non-empty text, got {layer!r}")
            try:
                updates.append(WeightUpdate(layer, parse_ratio(ratio)))
            except SchemeError as exc:
                raise SchemeError(f"layer {layer!r}: {exc}") from None
        return cls(values.get("bias_blocks", 0), tuple(updates))

    @classmethod
    def from_json(cls, text: str | bytes) -> SparseScheme:
        """Parse JSON text (a file's content, a pasted scheme); :class:`SchemeError` for anything wrong."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise SchemeError("the scheme is not UTF-8 text") from None
        if len(text) > MAX_SCHEME_CHARS:
            raise SchemeError(
                f"the scheme is too long ({len(text):,} characters; at most {MAX_SCHEME_CHARS:,})"
            )
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SchemeError(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
        except RecursionError:  # "[[[[..." thousands deep: JSON's parser recurses per level
            raise SchemeError("not a scheme: the JSON is nested too deeply") from None
        return cls.from_dict(values)

    # ------------------------------------------------------------------------------------ the model
    def check(self, model: nn.Module) -> None:
        """Raise :class:`SchemeError` if the scheme does not fit ``model`` (layers, ratios, blocks)."""
        blocks = find_blocks(model)
        if self.bias_blocks > len(blocks):
            raise SchemeError(f"bias_blocks is {self.bias_blocks}, but the model has {len(blocks)} blocks")
        if not self.weights and not self.bias_blocks:
            raise SchemeError("the scheme trains nothing besides the classifier (use mode 'last' for that)")
        layers = dict(model.named_modules())
        candidates = weight_layers(model)
        head = _classifier_names(model)
        for update in self.weights:
            module = layers.get(update.layer)
            if module is None or update.layer == "":
                close = difflib.get_close_matches(update.layer, candidates, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise SchemeError(f"unknown layer {update.layer!r}{hint}")
            if update.layer in head:
                raise SchemeError(f"{update.layer!r} is the classifier, which always trains in full")
            if update.layer not in candidates:
                raise SchemeError(f"layer {update.layer!r} ({type(module).__name__}) has no weight to update")
            if update.ratio < 1 and not isinstance(module, (nn.Conv2d, nn.Linear)):
                raise SchemeError(
                    f"layer {update.layer!r} ({type(module).__name__}) can only be updated in full (ratio 1)"
                )

    def describe(self, model: nn.Module | None = None) -> str:
        """One line: ``biases of the last 8 of 17 blocks; weights: conv_head (1/4), ...``."""
        of = f" of {len(find_blocks(model))}" if model is not None else ""
        parts = [f"biases of the last {self.bias_blocks}{of} blocks" if self.bias_blocks else "no biases"]
        if self.weights:
            listed = ", ".join(f"{u.layer} ({format_ratio_text(u.ratio)})" for u in self.weights)
            parts.append(f"weights: {listed}")
        return "; ".join(parts)


def read_scheme(path: str | os.PathLike[str]) -> SparseScheme:
    """Read a scheme from a JSON file (:class:`SchemeError` for bad content, ``OSError`` for the file)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size > 4 * MAX_SCHEME_CHARS:
        raise SchemeError(f"{path.name} is too large for a scheme")
    try:
        return SparseScheme.from_json(path.read_bytes())
    except SchemeError as exc:
        raise SchemeError(f"{path.name}: {exc}") from None


def _classifier_names(model: nn.Module) -> set[str]:
    ids = {id(m) for head in classifier_heads(model) for m in head.modules()}
    return {n for n, m in model.named_modules() if id(m) in ids}


def weight_layers(model: nn.Module) -> list[str]:
    """Layers a scheme can update, in model order: convolutions and linear layers with a weight, less the
    classifier (which always trains)."""
    head = _classifier_names(model)
    return [
        name
        for name, module in model.named_modules()
        if name
        and name not in head
        and kind_of(module) is LayerKind.LINEAR
        and (
            isinstance(module, (PartialConv2d, PartialLinear))
            or isinstance(getattr(module, "weight", None), nn.Parameter)
        )
    ]


def _pointwise(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 and tuple(module.kernel_size) == (1, 1)


def pointwise_layers(model: nn.Module) -> list[str]:
    """The :func:`weight_layers` that are 1x1 convolutions or linear layers, in model order (the layers
    the 256KB paper's schemes update; a depthwise conv's few weights rarely pay for its stored input)."""
    layers = dict(model.named_modules())
    return [name for name in weight_layers(model) if _pointwise(layers[name])]


DEFAULT_RATIOS = (Fraction(1, 4), Fraction(1, 2), Fraction(1), Fraction(1))
"""The default scheme's ratios for its last pointwise layers, in model order (the last ones in full)."""


def default_scheme(model: nn.Module) -> SparseScheme:
    """A sensible scheme for any backbone: biases of the last half of the blocks and the weights of the
    last four pointwise layers inside them at 1/4, 1/2, 1, 1 of their output channels.

    :class:`SchemeError` when the model has neither blocks nor weight layers."""
    blocks = find_blocks(model)
    candidates = set(weight_layers(model))
    inside = {n for name, b in blocks for n, _ in b.named_modules(prefix=name)}
    layers = dict(model.named_modules())
    pointwise = [n for n in layers if n in candidates and n in inside and _pointwise(layers[n])]
    if not pointwise:  # no blocks found: the last weight layers of the model
        pointwise = [n for n in layers if n in candidates and _pointwise(layers[n])]
    chosen = pointwise[-len(DEFAULT_RATIOS) :]
    ratios = DEFAULT_RATIOS[-len(chosen) :] if chosen else ()
    scheme = SparseScheme(
        math.ceil(len(blocks) / 2), tuple(WeightUpdate(n, r) for n, r in zip(chosen, ratios))
    )
    if not scheme.weights and not scheme.bias_blocks:
        raise SchemeError("the model has no blocks and no weight layers a sparse update could train")
    return scheme


def _tail_modules(model: nn.Module, bias_blocks: int) -> list[nn.Module]:
    """Modules from the first of the last ``bias_blocks`` blocks on, in model order (0: none)."""
    if bias_blocks <= 0:
        return []
    blocks = find_blocks(model)
    first = blocks[len(blocks) - bias_blocks][1]
    modules = list(model.modules())
    start = next(i for i, m in enumerate(modules) if m is first)
    return modules[start:]


def _split_plan(model: nn.Module, scheme: SparseScheme, *, standardized: bool = False) -> list:
    """``(module, rows to train)`` of each weight ``scheme`` updates; :class:`PartialUpdateError` naming
    the layer when one cannot be split so (``standardized``: as it will be once GroupNorm + weight
    standardisation made its bias-free convolutions :class:`~tinytl_core.norms.WSConv2d`)."""
    plan = []
    for update in scheme.weights:
        module = model.get_submodule(update.layer)
        out = module.weight.shape[0]
        rows = partial_rows(module, float(update.ratio)) if update.ratio < 1 else out
        if rows < out:
            problem = split_problem(module, rows)
            if problem is None and standardized and standardizable(module):
                problem = "a partial update needs a plain Conv2d or Linear layer, not WSConv2d"
            if problem is not None:
                raise PartialUpdateError(f"{update.layer}: {problem}")
        plan.append((module, rows))
    return plan


def check_scheme(model: nn.Module, scheme: SparseScheme, *, group_norm: bool = False) -> None:
    """Raise what :func:`apply_scheme` would raise on ``model`` (after GroupNorm + weight standardisation
    when ``group_norm``), changing nothing: a mode checks before it converts any layer."""
    scheme.check(model)
    _split_plan(model, scheme, standardized=group_norm)


def apply_scheme(model: nn.Module, scheme: SparseScheme) -> set[int]:
    """Check ``scheme`` against ``model``, split the weights it updates in part (in place) and return the
    ids of the parameters it trains (the classifier is the mode's business). Does not set
    ``requires_grad``."""
    scheme.check(model)
    trained: set[int] = set()
    for module in _tail_modules(model, scheme.bias_blocks):
        bias = module._parameters.get("bias")
        if bias is not None:
            trained.add(id(bias))
    plan = _split_plan(model, scheme)  # every layer checked before any is split
    for module, rows in plan:
        if rows < module.weight.shape[0]:
            split_weight(module, rows)
            trained.add(id(module.weight_train))
        else:
            trained.add(id(module.weight))
    return trained
