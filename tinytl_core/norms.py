"""Normalisation layers: frozen statistics and the BatchNorm -> GroupNorm switch.

TinyTL keeps a frozen backbone's normalisation layers on their running statistics: with batch statistics
their backward needs the full input even when scale and shift are frozen, and tiny batches give noisy
statistics. :func:`freeze_statistics` makes a BatchNorm stay in eval mode even after ``model.train()``
(its affine parameters may still train). For batch-size-1 training the paper uses GroupNorm instead:
:func:`batchnorm_to_groupnorm`. GroupNorm and LayerNorm always normalise with statistics of their own
input, so their backward always needs that input.
"""

from __future__ import annotations

import functools

from timm.layers import BatchNormAct2d, GroupNormAct
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tinytl_core.layer_kinds import is_frozen

# The paper's GroupNorm uses 8 channels per group.
CHANNELS_PER_GROUP = 8


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
