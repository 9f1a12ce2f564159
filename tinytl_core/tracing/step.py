"""The "one step" helpers shared by the tracer, the measurement and the engine: input checks, the model's
device and dtype, a loss for any output, the optimizers a step may use, and restoring a model's state.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_leaves

# Optimizer state tensors per trainable parameter (each the parameter's size), besides its gradient.
OPTIMIZER_STATES: dict[str, int] = {"none": 0, "sgd": 1, "adam": 2, "adamw": 2}
OPTIMIZER_HELP = "none = plain SGD (gradients only), sgd = SGD with momentum, adam / adamw = two moments"


def optimizer_states(optimizer: str) -> int:
    """Number of parameter-sized state tensors ``optimizer`` keeps; ValueError for unknown names."""
    if not isinstance(optimizer, str):
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZER_STATES)}, got {optimizer!r}")
    key = optimizer.lower()
    if key not in OPTIMIZER_STATES:
        raise ValueError(
            f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZER_STATES)} ({OPTIMIZER_HELP})"
        )
    return OPTIMIZER_STATES[key]


def make_optimizer(name: str, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer ``name`` (see :data:`OPTIMIZER_STATES`) with learning rate 0 (weights do not move)."""
    key = name.lower()
    optimizer_states(key)
    if key == "none":
        return torch.optim.SGD(params, lr=0.0)
    if key == "sgd":
        return torch.optim.SGD(params, lr=0.0, momentum=0.9)
    if key == "adamw":
        return torch.optim.AdamW(params, lr=0.0)
    return torch.optim.Adam(params, lr=0.0)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a new allocation on ``device`` (None when unknown)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        # plus what PyTorch's caching allocator holds unused (an earlier run's blocks in a worker that
        # trains job after job): the driver counts it as taken, a new tensor reuses it
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, cached))
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def default_loss(output: Any) -> torch.Tensor:
    """A training loss for any model output: cross-entropy for ``(B, classes)`` logits, else mean square."""
    tensors = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not tensors:
        raise ValueError("the model returned no floating-point tensor to train on")
    out = tensors[0]
    if out.ndim == 2:
        target = torch.zeros(out.shape[0], dtype=torch.long, device=out.device)
        return F.cross_entropy(out.float(), target)
    return out.float().square().mean()


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore training flags, buffers (e.g. BatchNorm running statistics) and ``.grad`` afterwards.
    Buffers on the ``meta`` device hold no values: nothing to restore there."""
    flags = {m: m.training for m in model.modules()}
    buffers = {
        name: b.detach().clone()
        for name, b in model.named_buffers()
        if b is not None and b.device.type != "meta"
    }
    grads = {p: p.grad for p in model.parameters()}
    try:
        yield
    finally:
        for m, training in flags.items():
            m.training = training
        live = dict(model.named_buffers()) if buffers else {}
        with torch.no_grad():
            for name, value in buffers.items():
                if name in live and live[name].shape == value.shape and live[name].device == value.device:
                    live[name].copy_(value)
        for p, g in grads.items():
            p.grad = g


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a model without tensors)."""
    for t in itertools.chain(model.parameters(), model.buffers()):  # the first one: no full walk
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """Floating dtype of the model's first floating parameter (float32 without one)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def check_input(input_size: tuple[int, ...], batch_size: int) -> tuple[tuple[int, int, int], int]:
    """Validate ``input_size`` (C, H, W) and ``batch_size``; ValueError with a hint otherwise."""
    size = tuple(input_size) if isinstance(input_size, (tuple, list)) else None
    if size is None or len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"input_size must be (channels, height, width) of positive ints, not {input_size!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return size, batch_size  # type: ignore[return-value]
