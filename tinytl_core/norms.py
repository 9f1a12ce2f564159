"""Normalisation layers: frozen statistics and the BatchNorm -> GroupNorm switch.

TinyTL keeps a frozen backbone's normalisation layers on their running statistics: with batch statistics
their backward needs the full input even when scale and shift are frozen, and tiny batches give noisy
statistics. :func:`freeze_statistics` makes a BatchNorm stay in eval mode even after ``model.train()``
(its affine parameters may still train). For batch-size-1 training the paper uses GroupNorm instead:
:func:`batchnorm_to_groupnorm`. GroupNorm and LayerNorm always normalise with statistics of their own
input, so their backward always needs that input.

With GroupNorm the public TinyTL code also standardises the weights of the convolutions that feed a norm
(bias-free ones): :class:`WSConv2d`, ``W <- (W - mean) / (std + eps)`` per output channel (weight
standardisation, Qiao et al. 2019), made by :func:`standardize_convolutions`. A frozen weight's standardised
value is a constant: :func:`sync_standardization` computes it once and keeps it *in place of* the weight
(folded), so a frozen standardised conv stores and costs nothing extra; a trainable one standardises on
every forward, with the gradient through the standardisation.
"""

from __future__ import annotations

import functools

import torch
from timm.layers import BatchNormAct2d, GroupNormAct
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tinytl_core.layer_kinds import is_frozen

# The paper's GroupNorm uses 8 channels per group.
CHANNELS_PER_GROUP = 8
WS_EPS = 1e-5
"""Weight standardisation's epsilon in the public TinyTL code (``ws_eps``), added to the std."""


class _FrozenStatistics:
    """Mixin: the layer ignores ``train(True)`` and keeps normalising with its running statistics."""

    frozen_statistics = True  # what tinytl_core.layer_kinds.is_frozen reads

    def train(self, mode: bool = True):  # noqa: D401 - nn.Module API
        return super().train(False)  # type: ignore[misc]


@functools.cache
def _frozen_class(cls: type[nn.Module]) -> type[nn.Module]:
    # Same name as the original so tables and reprs stay familiar; the flag tells them apart.
    return type(cls.__name__, (_FrozenStatistics, cls), {"__module__": cls.__module__})


def freeze_statistics(module: nn.Module) -> bool:
    """Make a BatchNorm-type layer use its running statistics from now on, even in training mode.

    Returns True if ``module`` was changed (False for layers without running statistics or already
    frozen). Parameters, buffers and the state_dict are untouched.
    """
    if not isinstance(module, _BatchNorm) or not module.track_running_stats or is_frozen(module):
        return False
    module.__class__ = _frozen_class(type(module))
    module.eval()
    return True


def unfreeze_statistics(module: nn.Module) -> bool:
    """Undo :func:`freeze_statistics`; returns True if ``module`` was frozen."""
    if not is_frozen(module):
        return False
    base = next(c for c in type(module).__mro__[1:] if c is not _FrozenStatistics)
    module.__class__ = base
    return True


def group_count(channels: int, channels_per_group: int = CHANNELS_PER_GROUP) -> int:
    """Number of groups for ``channels``: ``channels / channels_per_group`` or the nearest divisor below."""
    groups = max(1, channels // channels_per_group)
    while channels % groups:
        groups -= 1
    return groups


def batchnorm_to_groupnorm(model: nn.Module, channels_per_group: int = CHANNELS_PER_GROUP) -> int:
    """Replace every BatchNorm2d (incl. timm's BatchNormAct2d) by GroupNorm, in place.

    Scale and shift are copied; running statistics have no GroupNorm counterpart, so a pretrained
    backbone's features change (the paper pretrains with GroupNorm). Returns how many layers changed.
    """
    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, nn.BatchNorm2d):
                continue
            channels = child.num_features
            factory = {"device": _device_of(child)}
            groups = group_count(channels, channels_per_group)
            if isinstance(child, BatchNormAct2d):
                new = GroupNormAct(
                    channels, groups, eps=child.eps, affine=child.affine, apply_act=False, **factory
                )
                new.act, new.drop = child.act, child.drop
            else:
                new = nn.GroupNorm(groups, channels, eps=child.eps, affine=child.affine, **factory)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            new.train(child.training)
            setattr(parent, child_name, new)
            replaced += 1
    return replaced


def _device_of(module: nn.Module):
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return None


# ----------------------------------------------------------------------------------------------------
# Weight standardisation (GroupNorm + WS: the public code's recipe for batch size 1)
# ----------------------------------------------------------------------------------------------------
def standardize_weight(weight: torch.Tensor, eps: float = WS_EPS) -> torch.Tensor:
    """``(W - mean) / (std + eps)`` over each output channel's fan-in, as the public code's ``MyConv2d``:
    the unbiased standard deviation (``torch.std``) plus ``eps``. Differentiable; contiguous result."""
    flat = weight.reshape(weight.shape[0], -1)
    centered = flat - flat.mean(1, keepdim=True)
    return (centered / (centered.std(1, keepdim=True) + eps)).view(weight.shape)


class WSConv2d(nn.Conv2d):
    """A Conv2d convolving with its standardised weight (:func:`standardize_weight`).

    Same parameters and ``state_dict`` keys as the Conv2d it was made from (:func:`standardize_convolutions`
    swaps the class). While the weight trains, every forward standardises it (gradients flow through the
    standardisation). A frozen weight is *folded* by :func:`sync_standardization`: the parameter then holds
    the standardised value, computed once, and the conv uses it as is (``ws_folded``). Standardising is
    idempotent up to ``eps`` (a standardised weight has mean 0 and std 1), so a folded weight that trains
    again simply standardises again: the same function to within ``eps / std`` of the original weight
    (relative), exact gradients.
    """

    ws_eps: float = WS_EPS
    ws_folded: bool = False
    weight_quantizable = True  # folded, the weight is the constant it convolves with: 8-bit codes fit it

    def standardized_weight(self) -> torch.Tensor:
        """The weight this conv convolves with (the parameter itself when folded and frozen)."""
        if self.ws_folded and not self.weight.requires_grad:
            return self.weight
        return standardize_weight(self.weight, self.ws_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ws_eps={self.ws_eps:g}" + (", folded" if self.ws_folded else "")


def standardizable(module: nn.Module) -> bool:
    """Whether :func:`standardize_convolutions` makes ``module`` a :class:`WSConv2d`."""
    # The public code standardises the bias-free convs (those a norm follows); a fan-in of 1 has no std.
    return type(module) is nn.Conv2d and module.bias is None and module.weight[0].numel() > 1


def standardize_convolutions(model: nn.Module, eps: float = WS_EPS) -> int:
    """Make every bias-free ``nn.Conv2d`` of ``model`` a :class:`WSConv2d`, in place (class swap: same
    parameters); returns how many. Then :func:`sync_standardization` folds the frozen ones."""
    changed = 0
    for module in model.modules():
        if standardizable(module):
            module.__class__ = WSConv2d
            module.ws_eps = eps
            changed += 1
    return changed


def sync_standardization(model: nn.Module) -> int:
    """Fold the standardised weight of every frozen :class:`WSConv2d` into its parameter (computed once: no
    weight-sized copy is kept, or made again at each forward, and nothing else is stored), and mark those
    whose weight trains as standardising at each forward again; returns how many layers changed. Call it
    after setting which weights train (``Mode.apply`` does)."""
    changed = 0
    for module in model.modules():
        if not isinstance(module, WSConv2d):
            continue
        frozen = not module.weight.requires_grad
        if frozen and not module.ws_folded:
            if module.weight.device.type != "meta":  # meta holds no values: nothing to fold (shapes only)
                with torch.no_grad():
                    module.weight.copy_(standardize_weight(module.weight, module.ws_eps))
        elif frozen == module.ws_folded:
            continue
        module.ws_folded = frozen
        changed += 1
    return changed


def is_standardized(module: nn.Module) -> bool:
    """Whether ``module`` convolves with a standardised weight (a :class:`WSConv2d`, engine or not)."""
    return isinstance(module, WSConv2d)
