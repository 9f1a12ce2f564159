"""TinyTL's lite residual modules (Cai et al., NeurIPS 2020, Sec. 3.2) and where to attach them.

A lite residual branch is added to a block's main branch: ``out = main(x) + upsample(LR(x))``, the
block's identity shortcut left as it is. ``LR`` is small and works at reduced resolution, so the
activations it must store for backward are cheap:

    avg-pool 2x2 -> k x k conv (block stride, groups=2, in -> mid) -> norm -> ReLU -> 1x1 conv (mid -> out)
    -> norm (scale initialised to zero) -> bilinear upsample to the main branch's output size

The zero scale makes the model's outputs at step 0 equal the backbone's. Every block but the first gets
one. Blocks are found per family (timm's EfficientNet/MobileNetV3 family, ResNet/ResNeXt, RegNet,
ConvNeXt) and, as a fallback, among the children of ``nn.Sequential`` containers that map a 4D feature
map to a 4D feature map.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import make_divisible
from torch import nn

from tinytl_core.norms import group_count


@dataclass(frozen=True)
class LiteResidualConfig:
    """Hyper-parameters of the lite residual branches (defaults follow the paper's public code)."""

    downsample: int = 2
    expand: float = 1.0
    kernel_size: int = 5
    groups: int = 2
    group_norm: bool = False

    def __post_init__(self) -> None:
        if self.downsample < 1:
            raise ValueError(f"downsample must be >= 1, got {self.downsample}")
        if self.expand <= 0:
            raise ValueError(f"expand must be > 0, got {self.expand}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {self.kernel_size}")


class LiteResidual(nn.Module):
    """The lite residual branch ``LR``; ``forward(x, size)`` returns it upsampled to ``size``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        kernel_size: int = 5,
        downsample: int = 2,
        expand: float = 1.0,
        groups: int = 2,
        group_norm: bool = False,
        global_pool: bool = False,
    ) -> None:
        super().__init__()
        mid = make_divisible(in_channels * expand, 8)
        if in_channels % groups or mid % groups:
            groups = 1
        self.in_channels, self.out_channels, self.mid_channels = in_channels, out_channels, mid
        if global_pool:
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(1)
            kernel_size, stride = 1, 1
        elif downsample > 1:
            self.pool = nn.AvgPool2d(downsample, ceil_mode=True)
        else:
            self.pool = nn.Identity()
        self.conv1 = nn.Conv2d(
            in_channels, mid, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        )
        self.norm1 = _norm(mid, group_norm)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.norm2 = _norm(out_channels, group_norm)
        nn.init.zeros_(self.norm2.weight)  # branch outputs zero at init: model starts as the backbone

    def forward(self, x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act(self.norm1(self.conv1(self.pool(x))))))
        if tuple(y.shape[-2:]) == tuple(size):
            return y
        return F.interpolate(y, size=tuple(size), mode="bilinear", align_corners=False)


def _norm(channels: int, group_norm: bool) -> nn.Module:
    return nn.GroupNorm(group_count(channels), channels) if group_norm else nn.BatchNorm2d(channels)


class _AddBeforeActivation(nn.Module):
    """Replaces a block's post-addition activation: ``act(y + LR(x))`` with ``x`` set by the wrapper."""

    def __init__(self, act: nn.Module, branch: LiteResidual) -> None:
        super().__init__()
        self.act = act
        # Plain attribute, not a submodule: the branch is registered once, on the LiteResidualBlock.
        object.__setattr__(self, "_branch", branch)
        object.__setattr__(self, "block_input", None)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.block_input is None:
            raise RuntimeError("lite residual: the block's input was not set by its LiteResidualBlock")
        return self.act(y + self._branch(self.block_input, y.shape[-2:]))


class LiteResidualBlock(nn.Module):
    """A backbone block with a lite residual branch added to its main branch.

    For blocks whose output is ``main(x) + shortcut(x)`` the branch is added to the output (addition
    commutes). For blocks with an activation after the addition (ResNet, RegNet), that activation is
    wrapped so the branch is added before it: ``act(main(x) + shortcut(x) + LR(x))``.
    """

    def __init__(self, block: nn.Module, branch: LiteResidual, post_activation: str | None = None) -> None:
        super().__init__()
        self.block = block
        self.lite_residual = branch
        self.post_activation = post_activation
        if post_activation is not None:
            setattr(block, post_activation, _AddBeforeActivation(getattr(block, post_activation), branch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_activation is None:
            out = self.block(x)
            return out + self.lite_residual(x, out.shape[-2:])
        hook = getattr(self.block, self.post_activation)
        object.__setattr__(hook, "block_input", x)
        try:
            return self.block(x)
        finally:
            object.__setattr__(hook, "block_input", None)


@dataclass(frozen=True)
class AttachReport:
    """Which blocks got a lite residual branch and what it costs."""

    blocks: tuple[str, ...]
    params_added: int
    params_backbone: int
    skipped: str = ""


@dataclass(frozen=True)
class _Candidate:
    name: str
    module: nn.Module
    post_activation: str | None


def _family_blocks(model: nn.Module) -> list[_Candidate] | None:
    """Blocks of the main timm CNN families, in execution order; None for other architectures."""
    from timm.models.convnext import ConvNeXt
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.regnet import RegNet
    from timm.models.resnet import Bottleneck, ResNet

    if isinstance(model, (EfficientNet, MobileNetV3)):
        return [
            _Candidate(f"blocks.{i}.{j}", b, None)
            for i, s in enumerate(model.blocks)
            for j, b in enumerate(s)
        ]
    if isinstance(model, ResNet):
        return [
            _Candidate(f"{layer}.{j}", b, "act3" if isinstance(b, Bottleneck) else "act2")
            for layer in ("layer1", "layer2", "layer3", "layer4")
            for j, b in enumerate(getattr(model, layer))
        ]
    if isinstance(model, RegNet):
        return [
            _Candidate(f"{stage}.{name}", b, "act3")
            for stage in ("s1", "s2", "s3", "s4")
            for name, b in getattr(model, stage).named_children()
        ]
    if isinstance(model, ConvNeXt):
        return [
            _Candidate(f"stages.{i}.blocks.{j}", b, None)
            for i, s in enumerate(model.stages)
            for j, b in enumerate(s.blocks)
        ]
    return None


def _generic_blocks(model: nn.Module) -> list[_Candidate]:
    """Fallback: parameterised, non-leaf children of (nested) Sequentials; shapes are checked later."""
    found: list[_Candidate] = []

    def visit(container: nn.Module, prefix: str) -> None:
        for name, child in container.named_children():
            full = f"{prefix}{name}"
            if isinstance(child, (nn.Sequential, nn.ModuleList)):
                visit(child, f"{full}.")
            elif list(child.children()) and any(True for _ in child.parameters()):
                found.append(_Candidate(full, child, None))

    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            visit(child, f"{name}.")
    return found


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's blocks in execution order, ``(qualified name, module)``: the blocks of the main timm
    CNN families, else the parameterised children of its (nested) Sequentials (transformer blocks too)."""
    family = _family_blocks(model)
    return [(c.name, c.module) for c in (family if family is not None else _generic_blocks(model))]


def _trace_shapes(model: nn.Module, candidates: list[_Candidate], input_size: tuple[int, int, int]) -> dict:
    """Input/output shapes of each candidate block for one sample (eval mode, no grad, model's device)."""
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    hooks = []
    for cand in candidates:

        def hook(_m, args, out, name=cand.name):
            if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                shapes.setdefault(name, (args[0].shape, out.shape))

        hooks.append(cand.module.register_forward_hook(hook))
    param = next(model.parameters())
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_size), device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return shapes


def attach_lite_residuals(
    model: nn.Module,
    input_size: tuple[int, int, int],
    config: LiteResidualConfig | None = None,
) -> AttachReport:
    """Wrap every block but the first in a :class:`LiteResidualBlock`, in place.

    ``input_size`` (C, H, W) sets each branch's kernel: ``config.kernel_size`` while the pooled feature map
    is at least that large, then 3, then 1 with global pooling. Idempotent: blocks already wrapped are
    kept. Returns an :class:`AttachReport`; ``report.blocks`` is empty (with ``skipped`` saying why) when
    the architecture has no block mapping a 4D feature map to a 4D feature map (e.g. a ViT).
    """
    config = config or LiteResidualConfig()
    existing = [n for n, m in model.named_modules() if isinstance(m, LiteResidualBlock)]
    backbone_params = sum(p.numel() for n, p in model.named_parameters() if ".lite_residual." not in f".{n}")
    if existing:
        added = sum(p.numel() for m in model.modules() if isinstance(m, LiteResidual) for p in m.parameters())
        return AttachReport(tuple(existing), added, backbone_params)
    family = _family_blocks(model)
    candidates = family if family is not None else _generic_blocks(model)
    try:
        shapes = _trace_shapes(model, candidates, input_size) if candidates else {}
    except Exception as exc:  # the architecture rejects this input size: report, don't crash
        return AttachReport((), 0, backbone_params, skipped=f"the model cannot run at {input_size}: {exc}")
    blocks = [
        c
        for c in candidates
        if c.name in shapes and len(shapes[c.name][0]) == 4 and len(shapes[c.name][1]) == 4
    ]
    if len(blocks) < 2:
        reason = (
            "no blocks that map a 4D feature map to a 4D feature map (lite residual branches need "
            "convolutional feature maps; transformers and MLPs have token sequences)"
        )
        return AttachReport((), 0, backbone_params, skipped=reason)
    device = next(model.parameters()).device
    added = 0
    names = []
    for cand in blocks[1:]:  # every block but the first
        (_, c_in, h_in, _), (_, c_out, h_out, _) = shapes[cand.name]
        stride = max(1, round(h_in / max(1, h_out)))
        pooled = h_in // config.downsample
        if pooled >= config.kernel_size:
            kernel, global_pool = config.kernel_size, False
        elif pooled >= 3:
            kernel, global_pool = 3, False
        else:
            kernel, global_pool = 1, True
        # built where the model lives when that is ``meta`` (no weights to initialise: shape-only
        # models); elsewhere on the CPU and moved, so a seeded branch is the same on every device
        with torch.device("meta") if device.type == "meta" else contextlib.nullcontext():
            branch = LiteResidual(
                c_in,
                c_out,
                stride=stride,
                kernel_size=kernel,
                downsample=config.downsample,
                expand=config.expand,
                groups=config.groups,
                group_norm=config.group_norm,
                global_pool=global_pool,
            ).to(device)
        wrapper = LiteResidualBlock(cand.module, branch, cand.post_activation)
        model.set_submodule(cand.name, wrapper)
        added += sum(p.numel() for p in branch.parameters())
        names.append(cand.name)
    return AttachReport(tuple(names), added, backbone_params)
