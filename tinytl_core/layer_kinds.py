"""One table says what a layer is: its kind, and what that kind needs for backward.

The memory model's rules (:mod:`tinytl_core.memory.rules`), the training engine's conversion
(:mod:`tinytl_core.engine`) and the About page all read this module, so they cannot drift apart:

- :func:`kind_of` maps any module to a :class:`LayerKind` (conv / linear, norm, ReLU family, smooth
  activation, pooling, ...); :data:`KIND_NEEDS` says, per kind, what its backward needs.
- :data:`ACTIVATIONS` is the table of element-wise activations: the classes and class names that are one,
  their family, what their gradient needs (a 1-bit mask, their input, or their output), and -- where the
  engine may run them itself -- their stock forward and backward kernels, their mask rule and, for smooth
  ones, MobileTL's approximate 1-bit sign-mask rule (:attr:`Activation.sign_mask`).

Adding an activation is one :class:`Activation` entry in :data:`ACTIVATIONS`; ``tests/test_layer_kinds.py``
checks that the model and the engine agree about every entry.

Normalisation state (batch vs running statistics, frozen by :func:`tinytl_core.norms.freeze_statistics`) is
decided here too (:func:`uses_batch_statistics`), from the module alone.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.conv import _ConvNd

_aten = torch.ops.aten


class LayerKind(str, enum.Enum):
    """The rule family of a layer (the values are the names shown in per-layer tables)."""

    LINEAR = "linear"  # Linear, Conv, ConvTranspose
    NORM = "norm"  # BatchNorm, GroupNorm, LayerNorm, InstanceNorm, RMSNorm, ...
    PRELU = "prelu"  # PReLU: a mask activation whose slope may train
    RELU = "relu"  # ReLU family: 1-bit mask
    STEP = "step"  # piecewise-linear Hardsigmoid: 1-bit mask, not derivable from its output
    SMOOTH = "smooth"  # SiLU, GELU, Hardswish, Sigmoid, Tanh, ...: input (or output) at full precision
    SOFTMAX = "softmax"
    MAXPOOL = "maxpool"
    DROPOUT = "dropout"
    SCALE = "scale"  # timm's LayerScale
    FREE = "free"  # linear or shape-only: average pooling, upsampling, padding, flatten, identity
    OTHER = "other"  # anything else: counted as stock autograd saves it

    def __str__(self) -> str:
        return self.value


KIND_NEEDS: dict[LayerKind, str] = {
    LayerKind.LINEAR: "its input when its weight trains; nothing when the weight is frozen",
    LayerKind.NORM: "its input whenever it normalises with statistics of its input; with frozen "
    "statistics, its input only when its scale trains",
    LayerKind.PRELU: "its input when its slope trains, else a 1-bit mask",
    LayerKind.RELU: "a 1-bit mask (free when its output is stored in full anyway)",
    LayerKind.STEP: "a 1-bit mask",
    LayerKind.SMOOTH: "its input at its own precision (Sigmoid, Tanh: their output)",
    LayerKind.SOFTMAX: "its output",
    LayerKind.MAXPOOL: "the argmax position in its window: ceil(log2(window)) bits per output",
    LayerKind.DROPOUT: "a 1-bit keep mask (when active)",
    LayerKind.SCALE: "its input when its scale trains",
    LayerKind.FREE: "nothing",
    LayerKind.OTHER: "what stock autograd saves for it",
}
"""What each kind's backward needs, in words (the About page shows this table)."""


class Needs(str, enum.Enum):
    """What an activation's gradient is computed from."""

    MASK = "mask"  # one bit per element
    INPUT = "input"  # its input, at its own precision
    OUTPUT = "output"  # its output, at its own precision
    NOTHING = "nothing"  # identity


@dataclass(frozen=True)
class MaskRule:
    """A gradient that is ``grad * on`` where ``bit(x, param)`` holds and ``grad * off`` elsewhere;
    ``forward_`` is the stock in-place forward (``inplace=True`` modules)."""

    bit: Callable[[torch.Tensor, float], torch.Tensor]
    forward_: Callable[[torch.Tensor, float], torch.Tensor]
    on: float = 1.0
    off_is_param: bool = False  # LeakyReLU: off = its negative slope; otherwise off = 0


@dataclass(frozen=True)
class Activation:
    """One element-wise activation.

    Args:
        name: the engine's kind name (also the key of :data:`ACTIVATIONS`).
        kind: :attr:`LayerKind.RELU`, :attr:`LayerKind.STEP` or :attr:`LayerKind.SMOOTH`.
        needs: what its gradient needs (mask, input or output).
        classes: exact PyTorch classes that compute it (the engine converts exact classes only: a subclass
            may compute something else).
        names: lower-case class names the memory model recognises it by (timm's memory-efficient
            variants, subclasses).
        param: the kind's parameter read off a module (hardtanh's upper bound, leaky_relu's slope), or
            None when this module's settings are not this activation (e.g. Hardtanh with a lower bound).
        forward / backward: the stock kernels, ``forward(x, param)`` and ``backward(grad, x, param)`` fed
            with the *input* (so the engine can recompute the activation from a stored norm input); None
            where the engine never runs it itself.
        backward_into: ``backward`` written over ``x`` (the same kernel; element-wise, so reading and
            writing one buffer is safe): the engine's fused norm + activation backward then holds no
            buffer besides the one it recomputed ``x`` into.
        mask: the engine's 1-bit mask rule (``needs`` is MASK).
        mask_from_output: the mask can be read off the output exactly (``y > 0`` iff ``x > 0``).
        sign_mask: MobileTL's approximate backward (Chiang et al., AAAI 2023), for smooth activations the
            engine runs: the derivative is replaced by a step on the sign of the input, ``1`` where
            ``x > 0`` and ``0`` elsewhere, so one bit per element is stored instead of the 32-bit input.
            Used only on modules marked by :func:`set_sign_mask` (the ``mobiletl`` mode); the gradient then
            differs from the exact one by design.
    """

    name: str
    kind: LayerKind
    needs: Needs
    classes: tuple[type[nn.Module], ...] = ()
    names: frozenset[str] = frozenset()
    param: Callable[[nn.Module], float | None] = lambda m: 0.0
    forward: Callable[[torch.Tensor, float], torch.Tensor] | None = None
    backward: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None
    backward_into: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None
    mask: MaskRule | None = None
    mask_from_output: bool = False
    sign_mask: MaskRule | None = None


def _between(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    bits = x > low
    return bits.logical_and_(x < high)


def _hardtanh_bound(m: nn.Module) -> float | None:
    return float(m.max_val) if m.min_val == 0.0 and m.max_val > 0.0 else None


def _names(*names: str) -> frozenset[str]:
    return frozenset(names)


def _sign_rule(forward_: Callable[[torch.Tensor, float], torch.Tensor]) -> MaskRule:
    """MobileTL's rule: derivative 1 where the input is positive, 0 elsewhere (``forward_``: in place)."""
    return MaskRule(lambda x, p: x > 0, forward_)


_ENTRIES: tuple[Activation, ...] = (
    Activation(
        "identity",
        LayerKind.FREE,
        Needs.NOTHING,
        (nn.Identity,),
        _names("identity"),
        forward=lambda x, p: x,
        backward=lambda g, x, p: g,
        backward_into=lambda g, x, p: x.copy_(g),
    ),
    Activation(
        "relu",
        LayerKind.RELU,
        Needs.MASK,
        (nn.ReLU,),
        _names("relu", "threshold"),
        forward=lambda x, p: torch.relu(x),
        backward=lambda g, x, p: _aten.threshold_backward(g, x, 0.0),
        backward_into=lambda g, x, p: _aten.threshold_backward.grad_input(g, x, 0.0, grad_input=x),
        mask=MaskRule(lambda x, p: x > 0, lambda x, p: torch.relu_(x)),
        mask_from_output=True,
    ),
    Activation(
        "hardtanh",
        LayerKind.RELU,
        Needs.MASK,
        (nn.ReLU6, nn.Hardtanh),
        _names("relu6", "hardtanh"),
        param=_hardtanh_bound,
        forward=lambda x, p: F.hardtanh(x, 0.0, p),
        backward=lambda g, x, p: _aten.hardtanh_backward(g, x, 0.0, p),
        backward_into=lambda g, x, p: _aten.hardtanh_backward.grad_input(g, x, 0.0, p, grad_input=x),
        mask=MaskRule(lambda x, p: _between(x, 0.0, p), lambda x, p: F.hardtanh(x, 0.0, p, inplace=True)),
        mask_from_output=True,
    ),
    Activation(
        "leaky_relu",
        LayerKind.RELU,
        Needs.MASK,
        (nn.LeakyReLU,),
        _names("leakyrelu"),
        param=lambda m: float(m.negative_slope),
        forward=lambda x, p: F.leaky_relu(x, p),
        backward=lambda g, x, p: _aten.leaky_relu_backward(g, x, p, False),
        backward_into=lambda g, x, p: _aten.leaky_relu_backward.grad_input(g, x, p, False, grad_input=x),
        mask=MaskRule(lambda x, p: x > 0, lambda x, p: F.leaky_relu(x, p, inplace=True), off_is_param=True),
        mask_from_output=True,  # with a positive slope (see mask_from_output())
    ),
    Activation(
        "hardsigmoid",
        LayerKind.STEP,
        Needs.MASK,
        (nn.Hardsigmoid,),
        _names("hardsigmoid", "hardsigmoidme"),
        forward=lambda x, p: F.hardsigmoid(x),
        backward=lambda g, x, p: _aten.hardsigmoid_backward(g, x),
        backward_into=lambda g, x, p: _aten.hardsigmoid_backward.grad_input(g, x, grad_input=x),
        # its output rounds to 0 or 1 just inside (-3, 3): the mask is not derivable from it
        mask=MaskRule(
            lambda x, p: _between(x, -3.0, 3.0), lambda x, p: F.hardsigmoid(x, inplace=True), on=1.0 / 6.0
        ),
    ),
    Activation(
        "silu",
        LayerKind.SMOOTH,
        Needs.INPUT,
        (nn.SiLU,),
        _names("silu", "swish", "swishme"),
        forward=lambda x, p: F.silu(x),
        backward=lambda g, x, p: _aten.silu_backward(g, x),
        backward_into=lambda g, x, p: _aten.silu_backward.grad_input(g, x, grad_input=x),
        sign_mask=_sign_rule(lambda x, p: F.silu(x, inplace=True)),  # an extension: the paper has no SiLU
    ),
    Activation(
        "hardswish",
        LayerKind.SMOOTH,
        Needs.INPUT,
        (nn.Hardswish,),
        _names("hardswish", "hardswishme"),
        forward=lambda x, p: F.hardswish(x),
        backward=lambda g, x, p: _aten.hardswish_backward(g, x),
        backward_into=lambda g, x, p: _aten.hardswish_backward.out(g, x, out=x),
        sign_mask=_sign_rule(lambda x, p: F.hardswish(x, inplace=True)),  # the paper's own case
    ),
    Activation(
        "gelu",
        LayerKind.SMOOTH,
        Needs.INPUT,
        (nn.GELU,),
        _names("gelu", "quickgelu"),
        param=lambda m: None if getattr(m, "approximate", "none") == "tanh" else 0.0,
        forward=lambda x, p: F.gelu(x),
        backward=lambda g, x, p: _aten.gelu_backward(g, x),
        backward_into=lambda g, x, p: _aten.gelu_backward.grad_input(g, x, grad_input=x),
        sign_mask=_sign_rule(lambda x, p: x.copy_(F.gelu(x))),  # an extension (nn.GELU is never in place)
    ),
    Activation(
        "gelu_tanh",
        LayerKind.SMOOTH,
        Needs.INPUT,
        (nn.GELU,),
        _names("gelutanh"),
        param=lambda m: 0.0 if getattr(m, "approximate", "none") == "tanh" else None,
        forward=lambda x, p: F.gelu(x, approximate="tanh"),
        backward=lambda g, x, p: _aten.gelu_backward(g, x, approximate="tanh"),
        backward_into=lambda g, x, p: _aten.gelu_backward.grad_input(g, x, approximate="tanh", grad_input=x),
        sign_mask=_sign_rule(lambda x, p: x.copy_(F.gelu(x, approximate="tanh"))),  # an extension
    ),
    Activation(
        "sigmoid",
        LayerKind.SMOOTH,
        Needs.OUTPUT,
        (nn.Sigmoid,),
        _names("sigmoid"),
        forward=lambda x, p: torch.sigmoid(x),
        backward=lambda g, x, p: _aten.sigmoid_backward(g, torch.sigmoid(x)),
        backward_into=lambda g, x, p: _aten.sigmoid_backward.grad_input(g, x.sigmoid_(), grad_input=x),
    ),
    Activation(
        "tanh",
        LayerKind.SMOOTH,
        Needs.OUTPUT,
        (nn.Tanh,),
        _names("tanh"),
        forward=lambda x, p: torch.tanh(x),
        backward=lambda g, x, p: _aten.tanh_backward(g, torch.tanh(x)),
        backward_into=lambda g, x, p: _aten.tanh_backward.grad_input(g, x.tanh_(), grad_input=x),
    ),
    # timm's memory-efficient SigmoidMe recomputes from its input, which it keeps
    Activation("sigmoid_me", LayerKind.SMOOTH, Needs.INPUT, (), _names("sigmoidme")),
    Activation("mish", LayerKind.SMOOTH, Needs.INPUT, (nn.Mish,), _names("mish", "mishme")),
    Activation("hardmish", LayerKind.SMOOTH, Needs.INPUT, (), _names("hardmish", "hardmishme")),
    Activation("softplus", LayerKind.SMOOTH, Needs.INPUT, (nn.Softplus,), _names("softplus")),
    Activation(
        "elu", LayerKind.SMOOTH, Needs.INPUT, (nn.ELU, nn.SELU, nn.CELU), _names("elu", "selu", "celu")
    ),
    Activation("logsigmoid", LayerKind.SMOOTH, Needs.INPUT, (nn.LogSigmoid,), _names("logsigmoid")),
    Activation("softsign", LayerKind.SMOOTH, Needs.INPUT, (nn.Softsign,), _names("softsign")),
    Activation("tanhshrink", LayerKind.SMOOTH, Needs.INPUT, (nn.Tanhshrink,), _names("tanhshrink")),
    Activation("glu", LayerKind.SMOOTH, Needs.INPUT, (nn.GLU,), _names("glu")),
    Activation("rrelu", LayerKind.SMOOTH, Needs.INPUT, (nn.RReLU,), _names("rrelu")),
    Activation(
        "shrink",
        LayerKind.SMOOTH,
        Needs.INPUT,
        (nn.Softshrink, nn.Hardshrink),
        _names("softshrink", "hardshrink"),
    ),
)

ACTIVATIONS: dict[str, Activation] = {a.name: a for a in _ENTRIES}
"""Every element-wise activation the library knows, by name."""

MASKED: frozenset[str] = frozenset(a.name for a in _ENTRIES if a.mask is not None)
"""Activations the engine stores as a 1-bit mask."""

SIGN_MASKED: frozenset[str] = frozenset(a.name for a in _ENTRIES if a.sign_mask is not None)
"""Smooth activations the engine can run through MobileTL's 1-bit sign mask (approximate gradient)."""

SIGN_MASK_FLAG = "sign_mask_backward"
"""Instance attribute marking an activation module for MobileTL's approximate backward."""

_BY_NAME: dict[str, Activation] = {n: a for a in _ENTRIES for n in a.names}
# Exact class -> the entries the engine can run for it (GELU has two: exact and tanh): read every forward.
_ENGINE_BY_CLASS: dict[type[nn.Module], tuple[Activation, ...]] = {}
for _entry in _ENTRIES:
    if _entry.forward is not None:
        for _cls in _entry.classes:
            _ENGINE_BY_CLASS[_cls] = (*_ENGINE_BY_CLASS.get(_cls, ()), _entry)

# Non-activation kinds: exact-or-subclass types, and lower-case names of timm / other layers.
_FREE_TYPES = (
    nn.Flatten,
    nn.Unflatten,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.ZeroPad2d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
    nn.ChannelShuffle,
)
_FREE_NAMES = _names("flatten", "fastadaptiveavgpool", "avgpool2dsame", "blurpool2d", "format")
_MAXPOOL_TYPES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_MAXPOOL_NAMES = _names("maxpool2dsame", "adaptiveavgmaxpool2d", "adaptivecatavgmaxpool2d")
_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_DROPOUT_NAMES = _names("droppath", "dropblock2d")
_SOFTMAX_NAMES = _names("softmax", "logsoftmax", "softmax2d", "softmin")
_SCALE_NAMES = _names("layerscale", "layerscale2d")

NORM_TYPES: tuple[type[nn.Module], ...] = (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
# Norms that normalise each sample by its own statistics, and frozen BatchNorms, known by class name.
_PER_SAMPLE_NORM_PREFIXES = ("rmsnorm", "simplenorm", "filterresponsenorm")
_FROZEN_NORM_PREFIXES = ("frozenbatchnorm",)


def _type_name(module: nn.Module) -> str:
    return type(module).__name__.lower()


def is_norm(module: nn.Module) -> bool:
    """True for normalisation layers (BatchNorm, GroupNorm, LayerNorm, InstanceNorm and timm subclasses)."""
    return isinstance(module, NORM_TYPES)


def is_batch_norm(module: nn.Module | None) -> bool:
    """True for BatchNorm layers (any dimension, timm's BatchNormAct too)."""
    return isinstance(module, _BatchNorm)


def is_frozen(module: nn.Module) -> bool:
    """True when ``module`` keeps its running statistics in training mode
    (:func:`tinytl_core.norms.freeze_statistics` marks its class)."""
    return bool(getattr(type(module), "frozen_statistics", False))


def uses_batch_statistics(module: nn.Module) -> bool:
    """True when a normalisation layer normalises with statistics of its current input.

    That is BatchNorm in training mode (unless frozen), and GroupNorm / LayerNorm / InstanceNorm always.
    Such a layer's backward needs its input even when its scale and shift are frozen.
    """
    if isinstance(module, _BatchNorm):
        return (module.training and not is_frozen(module)) or not module.track_running_stats
    return isinstance(module, NORM_TYPES)


def stats_from_input(module: nn.Module | None, batch_statistics: bool) -> bool:
    """Whether a norm's backward needs statistics of its input: batch statistics as traced, or a norm
    known by name to normalise each sample (RMSNorm, ...); never a frozen BatchNorm."""
    name = _type_name(module) if module is not None else ""
    if name.startswith(_FROZEN_NORM_PREFIXES):
        return False
    return batch_statistics or name.startswith(_PER_SAMPLE_NORM_PREFIXES)


def activation_of(module: nn.Module | None) -> Activation | None:
    """The :data:`ACTIVATIONS` entry ``module`` is known as by its class name (memory model), or None."""
    if module is None:
        return None
    return _BY_NAME.get(_type_name(module))


def engine_activation(
    module: nn.Module, cls: type[nn.Module] | None = None
) -> tuple[Activation, float] | None:
    """``(entry, param)`` for a module whose *exact* class ``cls`` (default: its own) is an activation the
    engine can run itself (stock kernels known), or None (unknown class, subclass, unsupported settings)."""
    for entry in _ENGINE_BY_CLASS.get(cls or type(module), ()):
        param = entry.param(module)
        if param is not None:
            return entry, param
    return None


def sign_mask_entry(module: nn.Module, cls: type[nn.Module] | None = None) -> Activation | None:
    """The :data:`ACTIVATIONS` entry of a module whose exact class ``cls`` (default: its own) the engine
    can run through MobileTL's sign mask (Hardswish, SiLU, GELU), or None."""
    found = engine_activation(module, cls)
    return found[0] if found is not None and found[0].sign_mask is not None else None


def set_sign_mask(module: nn.Module, on: bool, cls: type[nn.Module] | None = None) -> bool:
    """Mark (``on``) or unmark one activation module for MobileTL's approximate backward; returns whether
    it is marked now (only activations with a :attr:`Activation.sign_mask` rule can be). The mark is a
    plain instance attribute: it survives conversions to and from the engine, and stock layers ignore it
    (they compute the exact gradient)."""
    if on and sign_mask_entry(module, cls) is not None:
        setattr(module, SIGN_MASK_FLAG, True)
        return True
    module.__dict__.pop(SIGN_MASK_FLAG, None)
    return False


def uses_sign_mask(module: nn.Module | None) -> bool:
    """Whether ``module`` is marked for MobileTL's 1-bit sign-mask backward (:func:`set_sign_mask`)."""
    return module is not None and bool(module.__dict__.get(SIGN_MASK_FLAG, False))


def kind_of(module: nn.Module | None) -> LayerKind:
    """The :class:`LayerKind` of a layer (``None``: functional code, the loss -> OTHER)."""
    if module is None:
        return LayerKind.OTHER
    name = _type_name(module)
    if isinstance(module, (nn.Linear, _ConvNd)):
        return LayerKind.LINEAR
    if (
        is_norm(module)
        or isinstance(module, _NormBase)
        or name.startswith(_PER_SAMPLE_NORM_PREFIXES + _FROZEN_NORM_PREFIXES)
    ):
        return LayerKind.NORM
    if isinstance(module, nn.PReLU):
        return LayerKind.PRELU
    entry = _BY_NAME.get(name)
    if entry is not None:
        return entry.kind
    if name in _SOFTMAX_NAMES:
        return LayerKind.SOFTMAX
    if isinstance(module, _MAXPOOL_TYPES) or name in _MAXPOOL_NAMES:
        return LayerKind.MAXPOOL
    if isinstance(module, _DROPOUT_TYPES) or name in _DROPOUT_NAMES:
        return LayerKind.DROPOUT
    if name in _SCALE_NAMES:
        return LayerKind.SCALE
    if isinstance(module, (nn.Identity, *_FREE_TYPES)) or name in _FREE_NAMES:
        return LayerKind.FREE
    return LayerKind.OTHER


def quantizable_weight(module: nn.Module | None) -> bool:
    """Whether ``module``'s weight, when frozen, can be stored as 8-bit codes by the training engine
    (:func:`tinytl_core.engine.quantized.quantize_frozen_weights`): a Conv2d or Linear, its engine layer or a
    class that declares ``weight_quantizable`` (the weight-standardised conv); not other subclasses, which
    may compute something else (timm's Conv2dSame). The memory model's 8-bit option reads it too."""
    if module is None:
        return False
    cls = type(module)
    cls = getattr(cls, "_stock_class", cls)
    return cls in (nn.Conv2d, nn.Linear) or bool(getattr(cls, "weight_quantizable", False))


# Blocks that always add their input (or a projection of it) to their output: ResNet's and RegNet's
# BasicBlock / Bottleneck (timm, torchvision), ConvNeXt's block. Lower-case class names.
_RESIDUAL_BLOCKS = frozenset({"basicblock", "bottleneck", "convnextblock"})


def adds_block_input(module: nn.Module | None) -> bool:
    """Whether ``module`` is a residual block: it adds its input (or a projection of it) to its output, so
    its input stays alive while its layers run. timm's EfficientNet / MobileNet blocks say so themselves
    (``has_skip``), as does torchvision's InvertedResidual (``use_res_connect``); ResNet, RegNet and ConvNeXt
    blocks always are. A lite residual wrapper is not one (its branch reads the input, nothing adds it back):
    the paper accounting, like the paper's profiler, counts only these blocks' inputs as residuals."""
    if module is None:
        return False
    for attr in ("has_skip", "use_res_connect"):
        flag = getattr(module, attr, None)
        if isinstance(flag, bool):
            return flag
    return _type_name(module) in _RESIDUAL_BLOCKS


def mask_from_output(module: nn.Module | None) -> bool:
    """Whether a mask activation's gradient region can be read off its output exactly (``y > 0`` iff
    ``x > 0``): ReLU, ReLU6 / Hardtanh(0, max), LeakyReLU with a positive slope; not PReLU, Threshold or
    Hardsigmoid."""
    if module is None or isinstance(module, (nn.PReLU, nn.Threshold)):
        return False
    entry = activation_of(module)
    if entry is None or not entry.mask_from_output:
        return False
    return not isinstance(module, nn.LeakyReLU) or module.negative_slope > 0


def stock_rule(module: nn.Module) -> str:
    """What stock autograd keeps for a layer the engine leaves alone (it already keeps what is needed)."""
    entry = engine_activation(module)
    if entry is not None:
        needs = entry[0].needs
        if needs is Needs.NOTHING:
            return "nothing"
        return f"{'output' if needs is Needs.OUTPUT else 'input'} (stock; its gradient needs it)"
    if isinstance(module, nn.Linear):
        trains = module.weight.requires_grad
        return "input (trainable weight: stock)" if trains else "nothing (frozen weight; stock keeps only W)"
    if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
        return "input (per-sample statistics: stock; needed)"
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.Upsample, nn.Flatten)):
        return "nothing"
    return "stock (not analysed)"
