"""Drop-in engine versions of the layers timm CNNs are built from.

Each engine class subclasses the stock class (``isinstance`` checks, ``state_dict`` keys, parameters and
hooks are unchanged) and only overrides ``forward``. :func:`tinytl_core.engine.convert` swaps a module's
``__class__`` to its engine class, so the very same ``Parameter`` objects keep training.

The choice between the stock path and a memory-saving function is made at every forward from the
module's *current* state (which parameters require grad, whether a norm uses batch statistics), so a
converted model stays exact when a mode is applied or changed afterwards. When a layer's stock autograd
already stores only what its gradients need (e.g. a conv whose weight trains needs its input), the stock
path runs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.padding import pad_same
from torch.nn.modules.utils import _pair

from tinytl_core.engine.bitmask import bits_for
from tinytl_core.engine.functions import (
    MASKED_KINDS,
    AvgPool2dFn,
    BitDropoutFn,
    EdgePad2dFn,
    FrozenConv2dFn,
    FrozenNormActFn,
    FrozenNormFn,
    MaskedActivationFn,
    MaxPool2dFn,
)
from tinytl_core.layer_kinds import ACTIVATIONS, SIGN_MASKED, engine_activation, is_frozen, uses_sign_mask

__all__ = [
    "ENGINE_CLASSES",
    "EngineAvgPool2d",
    "EngineBatchNorm2d",
    "EngineBatchNormAct2d",
    "EngineConv2d",
    "EngineConv2dSame",
    "EngineDropout",
    "EngineGELU",
    "EngineHardsigmoid",
    "EngineHardswish",
    "EngineHardtanh",
    "EngineLeakyReLU",
    "EngineModule",
    "FrozenNorm",
    "MaskedActivation",
    "EngineMaxPool2d",
    "EngineReLU",
    "EngineReLU6",
    "EngineSiLU",
    "activation_kind",
    "fused_activation",
    "stock_class",
]

# Largest pooling window whose arg-max offset fits in one byte.
_MAX_WINDOW = 256


def _recording(x: torch.Tensor) -> bool:
    """Whether autograd records this call at all (otherwise the stock forward is just as good)."""
    return torch.is_grad_enabled() and x.requires_grad


def _trains(param: torch.Tensor | None) -> bool:
    return param is not None and param.requires_grad


class EngineModule:
    """Mixin marking engine layers. ``_stock_class`` is the class :func:`revert` restores and
    ``engine_rule()`` says, for the module's current state, what its backward keeps."""

    _stock_class: type[nn.Module]

    def engine_rule(self) -> str:  # pragma: no cover - every engine class overrides it
        raise NotImplementedError


def stock_class(module: nn.Module) -> type[nn.Module]:
    """The stock class of ``module``: its own class, less the engine layer and the frozen-statistics
    wrapper of :func:`tinytl_core.norms.freeze_statistics`."""
    cls = type(module)
    if is_frozen(module):
        cls = cls.__bases__[-1]  # freeze_statistics derives (frozen-statistics mixin, original class)
    return getattr(cls, "_stock_class", cls)


# ----------------------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------------------
def activation_kind(module: nn.Module) -> tuple[str, float] | None:
    """``(kind, param)`` naming ``module``'s element-wise activation in
    :data:`tinytl_core.layer_kinds.ACTIVATIONS`, or ``None`` if the engine cannot run it itself.

    Matches exact (stock) classes only: a subclass may compute something else.
    """
    found = engine_activation(module, stock_class(module))
    return None if found is None else (found[0].name, found[1])


class MaskedActivation(EngineModule):
    """Base of the engine activations whose gradient is a 1-bit mask (ReLU, ReLU6, Hardtanh(0, max),
    LeakyReLU, Hardsigmoid), and of the smooth ones (Hardswish, SiLU, GELU) that run stock unless marked
    for MobileTL's approximate sign-mask backward (:func:`tinytl_core.layer_kinds.set_sign_mask`)."""

    # Set by convert(model, input_size=...) when every call's output is stored in full by a later layer.
    keep_output = False
    # Set by convert(model, input_size=...) when every call's output is read by one convolution only.
    own_grad = False

    def _spec(self) -> tuple[str, float, bool] | None:
        """``(kind, param, approx)`` when this layer stores a 1-bit mask, else None (stock)."""
        spec = activation_kind(self)
        if spec is None:
            return None
        if spec[0] in SIGN_MASKED:
            return (*spec, True) if uses_sign_mask(self) else None
        return (*spec, False) if spec[0] in MASKED_KINDS else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self._spec()
        if spec is None or not _recording(x):
            return super().forward(x)  # type: ignore[misc]
        inplace = bool(getattr(self, "inplace", False))
        kind, param, approx = spec
        return MaskedActivationFn.apply(x, kind, param, inplace, self.keep_output, self.own_grad, approx)

    def engine_rule(self) -> str:
        spec = self._spec()
        if spec is None:
            kind = activation_kind(self)
            if kind is not None and kind[0] in SIGN_MASKED:
                return "input (stock; its exact gradient needs it)"
            return "stock (unsupported bounds)"
        if spec[2]:
            return "1-bit sign mask (MobileTL: approximate gradient)"
        if self.keep_output and ACTIVATIONS[spec[0]].mask_from_output:
            return "output, shared with a later layer that stores it in full (0 extra)"
        return "1-bit mask"


class EngineReLU(MaskedActivation, nn.ReLU):
    """ReLU storing a 1-bit mask (``x > 0``) instead of its float output."""

    _stock_class = nn.ReLU


class EngineReLU6(MaskedActivation, nn.ReLU6):
    """ReLU6 storing a 1-bit mask (``0 < x < 6``) instead of its float input."""

    _stock_class = nn.ReLU6


class EngineHardtanh(MaskedActivation, nn.Hardtanh):
    """Hardtanh(0, max) storing a 1-bit mask (``0 < x < max``); other bounds run stock."""

    _stock_class = nn.Hardtanh


class EngineLeakyReLU(MaskedActivation, nn.LeakyReLU):
    """LeakyReLU storing a 1-bit mask (``x > 0``) instead of its float input."""

    _stock_class = nn.LeakyReLU


class EngineHardsigmoid(MaskedActivation, nn.Hardsigmoid):
    """Hardsigmoid storing a 1-bit mask (``-3 < x < 3``): its gradient is ``grad / 6`` there, else 0."""

    _stock_class = nn.Hardsigmoid


class EngineHardswish(MaskedActivation, nn.Hardswish):
    """Hardswish: stock (exact, stores its input), or with MobileTL's mark a 1-bit sign mask (``x > 0``)
    and the approximate gradient ``grad * (x > 0)``."""

    _stock_class = nn.Hardswish


class EngineSiLU(MaskedActivation, nn.SiLU):
    """SiLU / Swish: stock, or with MobileTL's mark a 1-bit sign mask (an extension of the paper)."""

    _stock_class = nn.SiLU


class EngineGELU(MaskedActivation, nn.GELU):
    """GELU (exact or tanh): stock, or with MobileTL's mark a 1-bit sign mask (an extension)."""

    _stock_class = nn.GELU


# ----------------------------------------------------------------------------------------------------
# Convolutions
# ----------------------------------------------------------------------------------------------------
class EngineConv2d(EngineModule, nn.Conv2d):
    """Conv2d that stores no input when its weight is frozen (stock autograd stores it regardless)."""

    _stock_class = nn.Conv2d

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Apply any padding the conv kernel itself cannot take (non-zero modes, 'same'), storing nothing
        for backward."""
        if self.padding_mode in ("reflect", "replicate") and x.dim() == 4:
            return EdgePad2dFn.apply(x, self._reversed_padding_repeated_twice, self.padding_mode), (0, 0)
        if self.padding_mode != "zeros":  # circular: slices and a concatenation, which store nothing
            return F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode), (0, 0)
        if isinstance(self.padding, str):
            return (F.pad(x, self._reversed_padding_repeated_twice) if self.padding == "same" else x), (0, 0)
        return x, self.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.requires_grad or not torch.is_grad_enabled():
            return super().forward(x)
        x, padding = self._pad(x)
        return FrozenConv2dFn.apply(
            x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups
        )

    def engine_rule(self) -> str:
        return "input (trainable weight: stock)" if self.weight.requires_grad else "nothing (frozen weight)"


class EngineConv2dSame(EngineConv2d, Conv2dSame):
    """timm's TensorFlow-'SAME' Conv2d with the frozen-weight rule of :class:`EngineConv2d`."""

    _stock_class = Conv2dSame

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        return pad_same(x, self.weight.shape[-2:], self.stride, self.dilation), (0, 0)


# ----------------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------------
def _uses_batch_statistics(norm: nn.modules.batchnorm._BatchNorm) -> bool:
    """The decision ``_BatchNorm.forward`` makes: batch statistics in training mode or without buffers."""
    return norm.training or (norm.running_mean is None and norm.running_var is None)


def _norm_rule(norm: nn.modules.batchnorm._BatchNorm) -> str:
    if _uses_batch_statistics(norm):
        return "input (batch statistics: stock)"
    if _trains(norm.weight):
        return "input (frozen statistics, trainable scale: its gradient needs x-hat)"
    return "nothing (frozen statistics" + ("; in place over its input)" if norm.inplace_input else ")")


INPLACE_PRODUCERS = "inplace_producers"
"""The attribute where ``convert`` keeps, for a norm found to work in place, the modules that return its
input (their forward hooks are handed that tensor)."""


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


class FrozenNorm(EngineModule):
    """Base of the engine norms. ``inplace_input`` is set by ``convert(model, input_size=...)`` when no one
    reads a call's input after it (and it is not the model's input): with frozen statistics and a frozen
    scale the norm then writes its output over its input."""

    inplace_input = False
    own_grad = False  # the output's one reader hands back a gradient no one else holds

    def writes_in_place(self) -> bool:
        """Whether this call writes over its input: as ``convert`` found, unless a forward hook may hold
        that input -- one of this norm, of a module that returned the input (e.g. a feature extractor's
        hook on the conv before), or a global one -- which must keep what it was handed."""
        if not self.inplace_input:
            return False
        if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
            return False
        producers = self.__dict__.get(INPLACE_PRODUCERS, ())
        return not (_hooked(self) or any(_hooked(m) for m in producers))


class EngineBatchNorm2d(FrozenNorm, nn.BatchNorm2d):
    """BatchNorm2d that, with frozen statistics, is a per-channel scale and shift storing nothing (or its
    input when the scale trains). With batch statistics it runs stock."""

    _stock_class = nn.BatchNorm2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _uses_batch_statistics(self) or not torch.is_grad_enabled():
            return super().forward(x)
        self._check_input_dim(x)
        return FrozenNormFn.apply(
            x,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            self.eps,
            self.writes_in_place(),
            self.own_grad,
        )

    def engine_rule(self) -> str:
        return _norm_rule(self)


def fused_activation(module: nn.Module) -> tuple[str, float] | None:
    """``(kind, param)`` of the activation a timm ``BatchNormAct2d`` (stock or engine) runs fused with its
    norm on the engine -- with frozen statistics, when its scale trains and nothing (dropout, a sign mask)
    sits between them -- else None. The memory model reads it too."""
    if not isinstance(module, BatchNormAct2d) or not _trains(module.weight):
        return None
    if not isinstance(module.drop, nn.Identity) or uses_sign_mask(module.act):
        return None  # (a sign-marked activation keeps its own approximate backward)
    return activation_kind(module.act)


class EngineBatchNormAct2d(FrozenNorm, BatchNormAct2d):
    """timm's BatchNorm + drop + activation with the rules of :class:`EngineBatchNorm2d`; its ``act`` is
    converted on its own (e.g. ReLU6 -> 1-bit mask).

    With frozen statistics and a trainable scale, norm and activation run fused: the norm input is stored
    for the scale gradient anyway and the activation's derivative is recomputed from it, so the
    activation stores nothing of its own.
    """

    _stock_class = BatchNormAct2d

    def _fused_kind(self) -> tuple[str, float] | None:
        return fused_activation(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _uses_batch_statistics(self) or not torch.is_grad_enabled():
            return super().forward(x)
        stats = (self.running_mean, self.running_var, self.eps)
        fused = self._fused_kind()
        if fused is not None:
            return FrozenNormActFn.apply(x, self.weight, self.bias, *stats, *fused)
        x = FrozenNormFn.apply(x, self.weight, self.bias, *stats, self.writes_in_place(), self.own_grad)
        return self.act(self.drop(x))

    def engine_rule(self) -> str:
        if not _uses_batch_statistics(self) and self._fused_kind() is not None:
            return "input (frozen statistics, trainable scale; activation recomputed from it)"
        return _norm_rule(self) + "; act: see its own row"


# ----------------------------------------------------------------------------------------------------
# Dropout and pooling
# ----------------------------------------------------------------------------------------------------
class EngineDropout(EngineModule, nn.Dropout):
    """Dropout storing its keep mask as 1 bit per element (stock CPU dropout stores float noise)."""

    _stock_class = nn.Dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0.0 < self.p < 1.0 or not _recording(x):
            return super().forward(x)
        return BitDropoutFn.apply(x, self.p)

    def engine_rule(self) -> str:
        return "1-bit mask (training)" if self.training and self.p > 0 else "nothing (inactive)"


class EngineMaxPool2d(EngineModule, nn.MaxPool2d):
    """MaxPool2d storing the arg-max offset in its window, bit-packed (4 bits per output for 3x3; stock:
    the input plus int64 indices)."""

    _stock_class = nn.MaxPool2d

    def _supported(self) -> bool:
        kh, kw = _pair(self.kernel_size)
        return not self.return_indices and kh * kw <= _MAX_WINDOW

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._supported() or not _recording(x):
            return super().forward(x)
        stride = _pair(self.stride if self.stride else self.kernel_size)
        return MaxPool2dFn.apply(
            x,
            _pair(self.kernel_size),
            stride,
            _pair(self.padding),
            _pair(self.dilation),
            bool(self.ceil_mode),
        )

    def engine_rule(self) -> str:
        if not self._supported():
            return "input + int64 indices (stock)"
        kh, kw = _pair(self.kernel_size)
        return f"window arg-max, {bits_for(kh * kw)} bits per output"


class EngineAvgPool2d(EngineModule, nn.AvgPool2d):
    """AvgPool2d storing nothing (stock autograd stores its input, although backward needs only its
    shape)."""

    _stock_class = nn.AvgPool2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _recording(x):
            return super().forward(x)
        stride = _pair(self.stride if self.stride else self.kernel_size)
        return AvgPool2dFn.apply(
            x,
            _pair(self.kernel_size),
            stride,
            _pair(self.padding),
            bool(self.ceil_mode),
            bool(self.count_include_pad),
            self.divisor_override,
        )

    def engine_rule(self) -> str:
        return "nothing"


ENGINE_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    cls._stock_class: cls
    for cls in (
        EngineReLU,
        EngineReLU6,
        EngineHardtanh,
        EngineLeakyReLU,
        EngineHardsigmoid,
        EngineHardswish,
        EngineSiLU,
        EngineGELU,
        EngineConv2d,
        EngineConv2dSame,
        EngineBatchNorm2d,
        EngineBatchNormAct2d,
        EngineDropout,
        EngineMaxPool2d,
        EngineAvgPool2d,
    )
}
"""Stock class -> engine class. Only exact classes convert: a subclass may compute something else."""

# Engine layers keep the stock class name (as frozen-statistics norms do), so printed models, per-layer
# tables and name-based layer rules read the same; ``isinstance(m, EngineModule)`` tells them apart.
for _cls in ENGINE_CLASSES.values():
    _cls.__name__ = _cls._stock_class.__name__
